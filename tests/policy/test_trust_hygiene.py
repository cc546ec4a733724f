"""Trust-root hygiene: a forged root costs no decode, a first root must be vouched for by its own admins."""

from __future__ import annotations

import msgpack
import pytest

from grapevine.gossip.item import SignedItem, Version
from grapevine.policy import trust
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import Refusal, TrustRoot, check_first_root, verify_succession
from grapevine.policy.trust_files import add_signature, build_root, init_root, rotate

NOW = 1_800_000_000_000
ALICE, BOB, CAROL, MALLORY = (SigningKey(bytes([i]) * 32) for i in (31, 32, 33, 34))


def root_of(admins, serial=1, now=NOW, publishers=()):
    return build_root(serial=serial, now_ms=now, expires_days=30, admins=[k.public for k in admins], threshold=1,
                      publishers=[(k.public, p) for k, p in publishers])


def signed_by(root_or_payload, signers, version):
    payload = root_or_payload if isinstance(root_or_payload, bytes) else root_or_payload.encode()
    item = SignedItem(key="trust/root", version=version, payload=payload)
    for k in signers:
        item = item.with_signature(k.key_id, k.sign(item.signing_bytes()))
    return item


@pytest.fixture
def decodes(monkeypatch):
    """Counts full root decodes (the real decoder still runs)."""
    calls = []
    real = TrustRoot.decode.__func__

    def counting(cls, data):
        calls.append(len(data))
        return real(cls, data)

    monkeypatch.setattr(TrustRoot, "decode", classmethod(counting))
    return calls


def test_a_root_forged_by_a_stranger_is_refused_before_its_payload_is_decoded(decodes):
    first = init_root(root_of([ALICE]), [ALICE], NOW)
    current = check_first_root(first)
    decodes.clear()
    # a big, valid-looking root that names mallory admin, signed only by her
    big = build_root(serial=2, now_ms=NOW + 1, expires_days=30, admins=[MALLORY.public], threshold=1,
                     publishers=[(SigningKey(bytes([i % 250 + 1, i // 250 + 1]) * 16).public, f"team{i}/") for i in range(900)])
    forged = signed_by(big, [MALLORY], Version(NOW + 1, 0, MALLORY.key_id))
    assert len(forged.payload) > 64 * 1024
    with pytest.raises(Refusal) as info:
        verify_succession(current, forged, NOW + 2, first)
    assert info.value.reason == "UnknownKey"
    assert decodes == []
    # junk bytes signed by a stranger: refused for the signer, never parsed as a root
    junk = signed_by(msgpack.packb({"serial": 2, "x": "y" * 1000}), [MALLORY], Version(NOW + 1, 0, MALLORY.key_id))
    with pytest.raises(Refusal) as info:
        verify_succession(current, junk, NOW + 2, first)
    assert info.value.reason == "UnknownKey" and decodes == []


def test_a_forged_signature_by_a_current_admin_is_refused_before_the_decode(decodes):
    first = init_root(root_of([ALICE]), [ALICE], NOW)
    current = check_first_root(first)
    decodes.clear()
    item = SignedItem(key="trust/root", version=Version(NOW + 1, 0, ALICE.key_id), payload=root_of([ALICE], serial=2).encode())
    item = item.with_signature(ALICE.key_id, MALLORY.sign(item.signing_bytes()))
    with pytest.raises(Refusal) as info:
        verify_succession(current, item, NOW + 2, first)
    assert info.value.reason == "BadSignature" and decodes == []


def test_catching_up_through_the_proof_still_works_with_the_cheap_gate():
    item = init_root(root_of([ALICE]), [ALICE], NOW)
    items = [item]
    for serial, admin in ((2, BOB), (3, CAROL)):  # every rotation hands the root to a new admin
        prev_signer = ALICE if serial == 2 else BOB
        item = rotate(item, root_of([admin], serial=serial, now=NOW + serial), [prev_signer], NOW + serial)
        items.append(item)
    # a node still on serial 1 sees serial 3, signed by carol, whom it has never heard of
    assert verify_succession(check_first_root(items[0]), items[2], NOW + 10, items[0]).serial == 3
    # the current root's own (public) link does not count as a step forward
    fake = root_of([MALLORY], serial=3, now=NOW + 3).with_proof(trust.decode_root_item(items[1]).proof)
    with pytest.raises(Refusal):
        verify_succession(check_first_root(items[0]), signed_by(fake, [MALLORY], Version(NOW + 3, 0, MALLORY.key_id)),
                          NOW + 10, items[0])


def test_a_first_root_with_no_valid_admin_signature_is_refused():
    root = root_of([ALICE], publishers=[(CAROL, "web/")])
    v = Version(NOW, 0, ALICE.key_id)
    for signers in ([MALLORY], [CAROL]):  # a key it does not list; a key it lists, but not as admin
        item = signed_by(root, signers, v)
        with pytest.raises(Refusal) as info:
            check_first_root(item)
        assert info.value.reason == "BadSignature" and "no valid signature by any of its admins" in str(info.value)
    assert check_first_root(init_root(root, [ALICE], NOW)) == root


def test_a_first_root_whose_admins_all_changed_is_vouched_for_by_its_proof():
    """alice hands the root to bob: the new file carries only alice's signatures and
    still loads as a first root, because its proof shows alice was its predecessor's admin."""
    first = init_root(root_of([ALICE]), [ALICE], NOW)
    second = rotate(first, root_of([BOB], serial=2, now=NOW + 1), [ALICE], NOW + 1)
    assert check_first_root(second).admins == (BOB.key_id,)
    # the same root without the predecessor's admin signature has nothing to vouch for it
    bare = SignedItem(key=second.key, version=second.version, payload=second.payload)
    bare = add_signature(bare, MALLORY)
    with pytest.raises(Refusal):
        check_first_root(bare)
