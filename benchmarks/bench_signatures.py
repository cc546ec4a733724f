"""Ed25519 signing/verification rate and the cost of a full admission check.

Run: .venv/bin/python benchmarks/bench_signatures.py [--runs 7] [--out benchmarks/RESULTS-trust.md]

Each figure is the median over several runs; each run times a batch of
operations with time.perf_counter. The admission check is what a node does
for every bundle it receives: size and version checks, root expiry, key
lookup, Ed25519 verification over the item's signing bytes, scope check and
a canonical decode of the bundle.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import nacl

from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import MAX_PROOF, check_first_root, verify_succession
from grapevine.policy.trust_files import build_root, init_root, rotate

NOW = 1_800_000_000_000


BEST: dict[float, float] = {}  # median -> fastest run of the same measurement


def timed(fn, n: int, runs: int) -> float:
    """Median seconds per call over ``runs`` batches of ``n`` calls (the fastest is kept in BEST)."""
    per_call = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t0) / n)
    median = statistics.median(per_call)
    BEST[median] = min(per_call)
    return median


def make_bundle(resources: int, file_bytes: int) -> Bundle:
    return Bundle(
        name="web/nginx",
        target="role=web and env!=prod",
        resources=tuple(
            {"file": f"/etc/app/{i}.conf", "source": "tpl.j2", "mode": "0644", "require": ["package:nginx"]}
            for i in range(resources)
        ),
        files={"tpl.j2": os.urandom(file_bytes // 2).hex().encode()},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS-trust.md")))
    args = ap.parse_args(argv)

    admin, publisher = SigningKey.generate(), SigningKey.generate()
    others = [SigningKey.generate() for _ in range(200)]  # a root with a realistic number of keys
    root = build_root(
        serial=1, now_ms=NOW, expires_days=30, admins=[admin.public], threshold=1,
        publishers=[(publisher.public, "web/")] + [(k.public, f"team{i}/") for i, k in enumerate(others)],
    )
    admission = Admission(init_root(root, [admin], NOW))

    rows = []
    small = pack(make_bundle(3, 256), publisher, NOW)
    data = small.signing_bytes()
    sig = small.signatures[0][1]
    verify_s = timed(lambda: publisher.public.verify(data, sig), 2000, args.runs)
    sign_s = timed(lambda: publisher.sign(data), 2000, args.runs)
    rows.append(("Ed25519 verify, %d-byte message" % len(data), verify_s, 1 / verify_s))
    rows.append(("Ed25519 sign, %d-byte message" % len(data), sign_s, 1 / sign_s))

    for label, nres, fbytes, n in (
        ("small", 3, 256, 2000),
        ("typical", 20, 8 * 1024, 1000),
        ("large", 200, 256 * 1024, 100),
        ("near-limit", 100, 1000 * 1024, 20),
    ):
        item = pack(make_bundle(nres, fbytes), publisher, NOW)
        assert admission(item, None, NOW) is None
        s = timed(lambda item=item: admission(item, None, NOW), n, args.runs)
        rows.append((f"admission of a {label} bundle ({len(item.payload)} B payload, {nres} resources)", s, 1 / s))

    stale = pack(make_bundle(20, 8 * 1024), publisher, NOW - 1)
    current = pack(make_bundle(20, 8 * 1024), publisher, NOW)
    s = timed(lambda: admission(stale, current, NOW), 5000, args.runs)
    rows.append(("refusal of a stale bundle (no signature work)", s, 1 / s))

    # trust root succession: one step, and a node catching up over the whole proof
    chain_admins = [SigningKey.generate() for _ in range(MAX_PROOF + 2)]
    items = [init_root(build_root(serial=1, now_ms=NOW, expires_days=30, admins=[chain_admins[0].public], threshold=1), [chain_admins[0]], NOW)]
    for n in range(2, MAX_PROOF + 2):
        r = build_root(serial=n, now_ms=NOW + n, expires_days=30, admins=[chain_admins[n - 1].public], threshold=1,
                       publishers=[(k.public, f"team{i}/") for i, k in enumerate(others[:50])])
        items.append(rotate(items[-1], r, [chain_admins[n - 2]], NOW + n))
    prev, newest = items[-2], items[-1]
    prev_root, first_root = check_first_root(prev), check_first_root(items[0])
    s = timed(lambda: verify_succession(prev_root, newest, NOW + 100, prev), 200, args.runs)
    rows.append((f"trust root succession, one step ({len(newest.payload)} B root with {MAX_PROOF}-link proof)", s, 1 / s))
    s = timed(lambda: verify_succession(first_root, newest, NOW + 100, items[0]), 100, args.runs)
    rows.append((f"trust root catch-up over {MAX_PROOF} missed rotations", s, 1 / s))

    env = (
        f"Python {platform.python_version()}, PyNaCl {nacl.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"load average {os.getloadavg()[0]:.1f} when the run ended"
    )
    lines = [
        "# Trust benchmarks",
        "",
        f"`benchmarks/bench_signatures.py --runs {args.runs}`: median of {args.runs} runs, one core. {env}.",
        "",
        "| operation | median time | per second (median) | fastest run |",
        "|---|---:|---:|---:|",
    ]
    for name, secs, rate in rows:
        lines.append(f"| {name} | {secs * 1e6:.1f} µs | {rate:,.0f} | {BEST[secs] * 1e6:.1f} µs |")
    lines += [
        "",
        "The trust root in the admission runs holds 202 keys. Admission time grows with the",
        "payload size because the signature covers the whole payload and the bundle is",
        "decoded and re-encoded to check its canonical form.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
