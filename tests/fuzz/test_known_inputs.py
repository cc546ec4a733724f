"""Hand-made hostile inputs for each decoder, and every input the fuzzer ever
found: each must succeed or be refused with the typed error, within a bound."""

from __future__ import annotations

import signal
import time

import pytest

from tests.fuzz import fuzz_targets as F

PER_INPUT_S = 5.0  # one input of a few hundred bytes; the slowest legal ones take milliseconds


def _laughs(levels: int) -> bytes:
    """YAML aliases that expand 9x per level: a few hundred bytes naming 9**levels values."""
    lines = ["bundle: x", "resources:", "  - file: /a", "    l0: &l0 [1,1,1,1,1,1,1,1,1]"]
    for i in range(1, levels):
        lines.append(f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


def _laughs_across_resources(n: int) -> bytes:
    """One big anchored list referenced from many resources."""
    head = "bundle: x\nresources:\n  - file: /a\n    big: &big [" + ",".join(["1"] * 1000) + "]\n"
    return (head + "".join(f"  - file: /b{i}\n    big: *big\n" for i in range(n))).encode()


CASES = [
    # (name, target, input)
    ("config with bytes that are not UTF-8", "config.toml", b'name = "\xff"\n'),
    ("config with arrays nested 5000 deep", "config.toml", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("config with inline tables nested 3000 deep", "config.toml", b"a = " + b"{x=" * 3000 + b"1" + b"}" * 3000),
    ("TOML policy with arrays nested 5000 deep", "policy.toml", b"bundle = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    ("TOML policy with bytes that are not UTF-8", "policy.toml", b'bundle = "\xff"\n'),
    ("YAML policy whose aliases expand to 9**9 values", "policy.yaml", _laughs(9)),
    ("YAML policy reusing a 1000-value alias in 3000 resources", "policy.yaml", _laughs_across_resources(3000)),
    ("YAML policy with a recursive alias", "policy.yaml", b"bundle: x\nresources: &r [{file: /a, content: *r}]\n"),
    ("YAML policy nested 5000 deep", "policy.yaml", b"[" * 5000 + b"]" * 5000),
    ("YAML policy with a set, a date and a NaN", "policy.yaml",
     b"bundle: x\nresources: [{file: /a, s: !!set {a, b}, d: 2001-12-14, n: .nan}]\n"),
    ("YAML policy with a non-string map key", "policy.yaml", b"bundle: x\nresources: [{? [a]: 2, file: /a}]\n"),
    ("YAML policy with a 30-digit integer", "policy.yaml",
     b"{bundle: x, resources: [{file: /a, mode: 999999999999999999999999999999}]}"),
    ("YAML policy with a python object tag", "policy.yaml", b"!!python/object/apply:os.system ['true']\n"),
    ("selector of 5000 nots", "selectors.parse", b"not " * 5000 + b"a=b"),
    ("selector of 5000 parentheses", "selectors.parse", b"(" * 5000 + b"a=b" + b")" * 5000),
    ("selector value holding both quote kinds", "selectors.parse", b"a in (\"x'\", 'y\"')"),
    ("msgpack nested 100000 deep", "codec.decode", b"\x91" * 100_000),
    ("bundle nested 100000 deep", "bundle.decode", b"\x91" * 100_000),
    ("item whose array header claims 2**32-1 entries", "item.decode", b"\xdd\xff\xff\xff\xff"),
    ("trust root map claiming 2**32-1 entries", "trust.root", b"\xdf\xff\xff\xff\xff"),
    ("run order with a 4 GiB string header", "runorder.order", b"\xdb\xff\xff\xff\xff"),
    ("sealed frame with a key id of zeros", "frame.open", b"G\x01" + bytes(80)),
    ("envelope that is a map", "frame.plaintext", b"\x81\xa1a\x01"),
    ("network key text of 10000 lines", "netkey.file", b"grapevine-netkey-v1:\n" * 10_000),
]


class _Overtime(Exception):
    pass


def _alarm(signum, frame):
    raise _Overtime()


@pytest.mark.parametrize("name,target,data", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_or_accepted_within_bound(name, target, data):
    t = F.TARGETS[target]
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_INPUT_S)
    t0 = time.monotonic()
    try:
        F.check_one(t, data)
    except _Overtime:
        pytest.fail(f"{target}: {name} still running after {PER_INPUT_S:g} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < PER_INPUT_S


def test_every_target_has_seeds_that_decode():
    """Seeds are valid encodings: each target accepts at least one of its own seeds outright."""
    for name, t in F.TARGETS.items():
        ok = 0
        for s in t.seeds():
            try:
                t.fn(s)
                ok += 1
            except t.refusals:
                pass
        assert ok, f"{name}: no seed is accepted, so the fuzzer starts from nothing valid"
