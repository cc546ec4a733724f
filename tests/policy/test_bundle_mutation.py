"""Every single-byte change to a packed bundle file is refused."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import REASONS, Refusal
from grapevine.policy.trust_files import build_root, init_root, item_from_file_bytes

NOW = 1_800_000_000_000
ADMIN, PUBLISHER = SigningKey(b"\x21" * 32), SigningKey(b"\x22" * 32)
ROOT = build_root(serial=1, now_ms=NOW, expires_days=30, admins=[ADMIN.public], threshold=1,
                  publishers=[(PUBLISHER.public, "web/")])
ADMISSION = Admission(init_root(ROOT, [ADMIN], NOW))
SMALL = Bundle(name="web/a", target="role=web", resources=({"package": "nginx"},), files={"f": b"hi"})


def verdict(data: bytes) -> str | None:
    """What `bundle verify` decides about these file bytes: None (accepted) or the reason."""
    try:
        ADMISSION.verify_bundle_item(item_from_file_bytes(data), NOW)
    except Refusal as exc:
        return exc.reason
    return None


def test_the_unmodified_file_is_accepted():
    assert verdict(pack(SMALL, PUBLISHER, NOW).encode()) is None


@pytest.mark.parametrize("change", [lambda b: b ^ 0x01, lambda b: b ^ 0x80, lambda b: b ^ 0xFF, lambda b: (b + 1) % 256])
def test_every_byte_position_changed_is_refused(change):
    data = pack(SMALL, PUBLISHER, NOW).encode()
    accepted = []
    reasons = set()
    for pos in range(len(data)):
        mutated = bytearray(data)
        mutated[pos] = change(data[pos])
        reason = verdict(bytes(mutated))
        if reason is None:
            accepted.append(pos)
        reasons.add(reason)
    assert accepted == [], f"mutations at {accepted} of {len(data)} bytes were accepted"
    assert reasons <= set(REASONS)


names = st.from_regex(r"web/[a-z0-9]{1,12}", fullmatch=True)
small_values = st.one_of(st.text(max_size=12), st.integers(-1000, 10**12), st.booleans(), st.none())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=names,
    resources=st.lists(st.dictionaries(st.sampled_from(["file", "package", "mode", "content"]), small_values,
                                       min_size=1), max_size=3),
    files=st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda s: "\0" not in s), st.binary(max_size=40),
                          max_size=2),
    data=st.data(),
)
def test_any_single_byte_mutation_of_any_bundle_is_refused(name, resources, files, data):
    packed = pack(Bundle(name=name, resources=tuple(resources), files=files), PUBLISHER, NOW).encode()
    assert verdict(packed) is None
    pos = data.draw(st.integers(0, len(packed) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != packed[pos]), label="new byte")
    mutated = bytearray(packed)
    mutated[pos] = value
    assert verdict(bytes(mutated)) in REASONS
