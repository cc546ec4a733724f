"""Trust root: encoding, succession by admin threshold, first roots from files."""

from __future__ import annotations

import msgpack
import pytest

from grapevine.gossip.errors import TrustError
from grapevine.gossip.item import SignedItem, Version
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import (
    DAY_MS,
    OperatorScope,
    Refusal,
    TrustRoot,
    check_first_root,
    fingerprint,
    verify_succession,
)
from grapevine.policy.trust_files import add_signature, build_root, init_root, load_root_file, rotate, write_item_file

NOW = 1_800_000_000_000
ALICE, BOB, CAROL, MALLORY = (SigningKey(bytes([i]) * 32) for i in (1, 2, 3, 4))


def root_of(admins, threshold=1, serial=1, now=NOW, days=30, publishers=(), operators=()):
    return build_root(
        serial=serial,
        now_ms=now,
        expires_days=days,
        admins=[k.public for k in admins],
        threshold=threshold,
        publishers=[(k.public, p) for k, p in publishers],
        operators=[(k.public, s) for k, s in operators],
    )


@pytest.fixture
def first():
    root = root_of([ALICE, BOB], threshold=1, publishers=[(CAROL, "web/")])
    return init_root(root, [ALICE], NOW), root


def test_root_roundtrips_through_canonical_bytes():
    root = root_of(
        [ALICE, BOB],
        threshold=2,
        publishers=[(CAROL, "web/"), (CAROL, "db/")],
        operators=[(MALLORY, OperatorScope(selector="role=web", actions=("run",)))],
    )
    again = TrustRoot.decode(root.encode())
    assert again == root and again.encode() == root.encode()
    assert root.publishers[CAROL.key_id] == ("db/", "web/")
    assert root.operator_selectors(MALLORY.key_id, "run") == ["role=web"]
    assert root.operator_selectors(MALLORY.key_id, "converge") == []


def test_root_bytes_do_not_depend_on_the_order_roles_were_given():
    a = root_of([ALICE, BOB], publishers=[(CAROL, "web/"), (CAROL, "db/")])
    b = root_of([BOB, ALICE], publishers=[(CAROL, "db/"), (CAROL, "web/")])
    assert a.encode() == b.encode()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(admins=[], threshold=1), "needs 1.."),
        (dict(admins=[ALICE], threshold=2), "threshold 2"),
        (dict(admins=[ALICE], threshold=0), "threshold 0"),
        (dict(admins=[ALICE], days=-1), "positive number of days"),
        (dict(admins=[ALICE], serial=0), "serial starts at 1"),
    ],
)
def test_inconsistent_roots_are_refused(kwargs, message):
    with pytest.raises(TrustError, match=message):
        root_of(**kwargs)


def test_unknown_operator_action_is_refused():
    with pytest.raises(TrustError, match="actions"):
        OperatorScope(selector=None, actions=("reboot",))


def test_init_must_be_signed_by_an_admin_of_the_new_root():
    with pytest.raises(TrustError, match="not one of its admins"):
        init_root(root_of([ALICE]), [MALLORY], NOW)


def test_rotation_signed_by_a_current_admin_is_accepted(first):
    item, root = first
    new = root_of([ALICE, BOB], threshold=2, serial=2, now=NOW + 1)
    item2 = rotate(item, new, [BOB], NOW + 1)
    assert verify_succession(root, item2, NOW + 2, item) == new


def test_threshold_two_needs_two_admin_signatures(first):
    item, _ = first
    root2 = root_of([ALICE, BOB], threshold=2, serial=2, now=NOW + 1)
    item2 = rotate(item, root2, [ALICE], NOW + 1)
    root3 = root_of([ALICE, BOB], threshold=2, serial=3, now=NOW + 2)
    with pytest.raises(Refusal) as info:
        rotate(item2, root3, [ALICE], NOW + 2)
    assert info.value.reason == "OutOfScope"
    assert "1 of the 2" in info.value.detail
    item3 = rotate(item2, root3, [ALICE, BOB], NOW + 2)
    assert verify_succession(root2, item3, NOW + 3, item2) == root3


def _signed(root, signers, version):
    item = SignedItem(key="trust/root", version=version, payload=root.encode())
    for k in signers:
        item = add_signature(item, k)
    return item


def _validly_signed(item):
    return item.with_signature(ALICE.key_id, ALICE.sign(item.signing_bytes()))


@pytest.mark.parametrize(
    "case,reason",
    [
        ("unknown signer", "UnknownKey"),
        ("publisher signs", "OutOfScope"),
        ("admin plus stranger", "UnknownKey"),
        ("same serial", "Stale"),
        ("older version", "Stale"),
        ("already expired", "Expired"),
        ("forged signature", "BadSignature"),
        ("no signature", "BadSignature"),
        ("duplicate signer", "Malformed"),
        ("not a root", "Malformed"),
    ],
)
def test_succession_refusals_name_their_reason(first, case, reason):
    item, root = first
    new = root_of([ALICE], serial=2, now=NOW + 1)
    v = Version(NOW + 1, 0, ALICE.key_id)
    candidate = {
        "unknown signer": lambda: _signed(new, [MALLORY], v),
        "publisher signs": lambda: _signed(new, [CAROL], v),
        "admin plus stranger": lambda: _signed(new, [ALICE, MALLORY], v),
        "same serial": lambda: _signed(root_of([ALICE], serial=1, now=NOW + 1), [ALICE], v),
        "older version": lambda: _signed(new, [ALICE], Version(NOW - 5, 0, ALICE.key_id)),
        "already expired": lambda: _signed(root_of([ALICE], serial=2, now=NOW - 10 * DAY_MS, days=1), [ALICE], v),
        "forged signature": lambda: _signed(new, [], v).with_signature(ALICE.key_id, MALLORY.sign(b"x")),
        "no signature": lambda: _signed(new, [], v),
        "duplicate signer": lambda: SignedItem(
            key="trust/root", version=v, payload=new.encode(),
            signatures=_signed(new, [ALICE], v).signatures * 2,
        ),
        "not a root": lambda: _validly_signed(SignedItem(key="trust/root", version=v, payload=msgpack.packb({"serial": 2}))),
    }[case]()
    with pytest.raises(Refusal) as info:
        verify_succession(root, candidate, NOW + 2, item)
    assert info.value.reason == reason


def test_an_expired_root_can_still_be_replaced_by_its_admins():
    old = root_of([ALICE], now=NOW, days=1)
    item = init_root(old, [ALICE], NOW)
    later = NOW + 5 * DAY_MS
    assert old.expired(later)
    new = root_of([ALICE], serial=2, now=later)
    assert verify_succession(old, rotate(item, new, [ALICE], later), later, item) == new


def test_rotation_in_the_same_millisecond_still_gets_a_newer_version(first):
    item, _ = first
    item2 = rotate(item, root_of([ALICE], serial=2, now=NOW), [ALICE], NOW)
    assert item2.version > item.version


def test_first_root_file_is_checked_against_a_pinned_fingerprint(tmp_path, first):
    item, root = first
    path = tmp_path / "root.gv"
    write_item_file(path, item)
    loaded_item, loaded = load_root_file(path, fingerprint(item))
    assert loaded == root and loaded_item == item
    with pytest.raises(Refusal) as info:
        load_root_file(path, "00" * 32)
    assert info.value.reason == "BadSignature"
    assert str(path) in str(info.value)


def test_first_root_with_a_damaged_signature_is_refused(first):
    item, _ = first
    for n, (kid, sig) in enumerate(item.signatures):  # the item signature, then the link signature
        sigs = list(item.signatures)
        sigs[n] = (kid, sig[:-1] + bytes([sig[-1] ^ 1]))
        damaged = SignedItem(key=item.key, version=item.version, payload=item.payload, signatures=tuple(sigs))
        with pytest.raises(Refusal) as info:
            check_first_root(damaged)
        assert info.value.reason == "BadSignature"


def test_non_canonical_root_file_is_malformed(tmp_path, first):
    item, _ = first
    path = tmp_path / "root.gv"
    # same fields, but the wall clock packed as int64 instead of uint64
    path.write_bytes(item.encode().replace(b"\xcf", b"\xd3", 1))
    with pytest.raises(Refusal) as info:
        load_root_file(path)
    assert info.value.reason == "Malformed"


def test_decoding_arbitrary_root_maps_either_works_or_raises_a_grapevine_error():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from grapevine.gossip.errors import GrapevineError

    value = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-5, 2**64 - 1), st.text(max_size=6), st.binary(max_size=40)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=8,
    )
    good = root_of([ALICE], publishers=[(CAROL, "web/")]).to_plain()

    @settings(max_examples=300, deadline=None)
    @given(field=st.sampled_from(sorted(good)), replacement=value)
    def check(field, replacement):
        data = msgpack.packb({**good, field: replacement}, use_bin_type=True)
        try:
            TrustRoot.decode(data)
        except GrapevineError:
            pass

    check()


@pytest.mark.parametrize("field,value", [("publishers", "web/"), ("admins", "abc"), ("operators", [])])
def test_roots_with_fields_of_the_wrong_shape_are_refused(field, value):
    from grapevine.gossip.errors import GrapevineError

    plain = root_of([ALICE], publishers=[(CAROL, "web/")]).to_plain()
    if field == "publishers":
        plain["publishers"] = {CAROL.key_id: value}
    elif field == "operators":
        plain["operators"] = {CAROL.key_id: [{"selector": None, "actions": "run"}]}
    else:
        plain[field] = value
    with pytest.raises(GrapevineError):
        TrustRoot.decode(msgpack.packb(plain, use_bin_type=True))


ADMINS = [SigningKey(bytes([50 + i]) * 32) for i in range(12)]


def chain(length):
    """Roots 1..length; root n has the single admin ADMINS[n-1], so every rotation changes the admin."""
    items = [init_root(root_of([ADMINS[0]]), [ADMINS[0]], NOW)]
    for n in range(2, length + 1):
        new = root_of([ADMINS[n - 1]], serial=n, now=NOW + n)
        items.append(rotate(items[-1], new, [ADMINS[n - 2]], NOW + n))
    return items


def test_a_node_that_slept_through_rotations_catches_up_through_the_proof():
    items = chain(5)
    first = check_first_root(items[0])
    latest = verify_succession(first, items[-1], NOW + 10, items[0])
    assert latest.serial == 5 and latest.admins == (ADMINS[4].key_id,)
    assert [TrustRoot.decode(link.fields).serial for link in latest.proof] == [1, 2, 3, 4]
    # every intermediate start works as well
    for start in items[1:-1]:
        assert verify_succession(check_first_root(start), items[-1], NOW + 10, start).serial == 5


def test_catch_up_ends_where_the_proof_ends():
    from grapevine.policy.trust import MAX_PROOF
    from grapevine.policy.trust import decode_root_item as decode_root

    items = chain(MAX_PROOF + 3)
    newest = items[-1]
    first_link = len(items) - MAX_PROOF  # serial of the oldest predecessor still carried
    assert newest.payload and decode_root(newest).proof[0].root().serial == first_link
    ok_from = items[first_link - 2]  # serial first_link - 1: its admins signed the first link
    assert verify_succession(check_first_root(ok_from), newest, NOW + 100, ok_from).serial == len(items)
    too_old = items[first_link - 3]
    with pytest.raises(Refusal) as info:
        verify_succession(check_first_root(too_old), newest, NOW + 100, too_old)
    assert info.value.reason == "UnknownKey"


def test_a_forged_proof_does_not_reach_back_to_an_old_root():
    from grapevine.policy.trust import Link

    first = init_root(root_of([ALICE]), [ALICE], NOW)
    # mallory invents a serial-2 root naming herself admin, with a link signature of her own
    fake2 = root_of([MALLORY], serial=2, now=NOW + 1)
    v2 = Version(NOW + 1, 0, MALLORY.key_id)
    from grapevine.policy.trust import link_bytes

    link = Link(fields=fake2.encode(), version=v2,
                signatures=((MALLORY.key_id, MALLORY.sign(link_bytes(v2, fake2.encode()))),))
    fake3 = root_of([MALLORY], serial=3, now=NOW + 2).with_proof((link,))
    item3 = _signed(fake3, [MALLORY], Version(NOW + 2, 0, MALLORY.key_id))
    with pytest.raises(Refusal) as info:
        verify_succession(check_first_root(first), item3, NOW + 3, first)
    assert info.value.reason == "UnknownKey"
    # the same with alice's name on the link but not her signature
    forged = Link(fields=fake2.encode(), version=v2, signatures=((ALICE.key_id, MALLORY.sign(link_bytes(v2, fake2.encode()))),))
    item3 = _signed(root_of([MALLORY], serial=3, now=NOW + 2).with_proof((forged,)), [MALLORY], Version(NOW + 2, 0, MALLORY.key_id))
    with pytest.raises(Refusal) as info:
        verify_succession(check_first_root(first), item3, NOW + 3, first)
    assert info.value.reason == "BadSignature"


def test_a_root_without_link_signatures_is_refused_as_a_successor(first):
    item, root = first
    new = root_of([ALICE, BOB], serial=2, now=NOW + 1)
    bare = SignedItem(key="trust/root", version=Version(NOW + 1, 0, ALICE.key_id), payload=new.encode())
    bare = bare.with_signature(ALICE.key_id, ALICE.sign(bare.signing_bytes()))
    with pytest.raises(Refusal) as info:
        verify_succession(root, bare, NOW + 2, item)
    assert info.value.reason == "OutOfScope" and "link" in info.value.detail


def test_every_single_byte_change_to_a_root_file_is_refused(first):
    from grapevine.policy.trust_files import item_from_file_bytes

    item, root = first
    item2 = rotate(item, root_of([ALICE, BOB], serial=2, now=NOW + 1), [ALICE], NOW + 1)
    data = item2.encode()
    accepted = []
    for pos in range(len(data)):
        for flip in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[pos] ^= flip
            try:
                verify_succession(root, item_from_file_bytes(bytes(mutated)), NOW + 2, item)
            except Refusal:
                continue
            accepted.append((pos, flip))
    assert accepted == []
