"""Admission: the validator the gossip core consults, one named reason per refusal."""

from __future__ import annotations

import logging

import pytest

from grapevine.gossip.item import SignedItem, Version
from grapevine.policy.admission import Admission, Limits
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import DAY_MS, REASONS, Refusal
from grapevine.policy.trust_files import add_signature, build_root, init_root, rotate

NOW = 1_800_000_000_000
ADMIN, WEB, DB, STRANGER, BOTH = (SigningKey(bytes([i]) * 32) for i in (11, 12, 13, 14, 15))
NGINX = Bundle(name="web/nginx", target="role=web", resources=({"package": "nginx"},))


def make_root(serial=1, now=NOW, days=30, publishers=((WEB, "web/"), (DB, "db/"), (BOTH, "*")), admins=(ADMIN,), threshold=1):
    return build_root(
        serial=serial,
        now_ms=now,
        expires_days=days,
        admins=[k.public for k in admins],
        threshold=threshold,
        publishers=[(k.public, p) for k, p in publishers],
    )


@pytest.fixture
def admission():
    return Admission(init_root(make_root(), [ADMIN], NOW), node="n1")


def resigned(item, signer, **changes):
    """``item`` with fields changed and a fresh, valid signature by ``signer``."""
    fields = dict(key=item.key, version=item.version, payload=item.payload)
    fields.update(changes)
    new = SignedItem(**fields)
    return new.with_signature(signer.key_id, signer.sign(new.signing_bytes()))


def bundle_case(name):
    good = pack(NGINX, WEB, NOW)
    return {
        "good": lambda: (good, None),
        "author with prefix *": lambda: (pack(NGINX, BOTH, NOW), None),
        "key not in the root": lambda: (pack(NGINX, STRANGER, NOW), "UnknownKey"),
        "publisher outside its prefix": lambda: (pack(NGINX, DB, NOW), "OutOfScope"),
        "admin is not a publisher": lambda: (pack(NGINX, ADMIN, NOW), "OutOfScope"),
        "signature by another key": lambda: (
            SignedItem(key=good.key, version=good.version, payload=good.payload).with_signature(
                WEB.key_id, DB.sign(good.signing_bytes())),
            "BadSignature",
        ),
        "signed by someone but authored by web": lambda: (
            SignedItem(key=good.key, version=good.version, payload=good.payload).with_signature(
                DB.key_id, DB.sign(good.signing_bytes())),
            "BadSignature",
        ),
        "no signature": lambda: (SignedItem(key=good.key, version=good.version, payload=good.payload), "BadSignature"),
        "payload changed after signing": lambda: (
            SignedItem(key=good.key, version=good.version, payload=good.payload + b"\0", signatures=good.signatures),
            "BadSignature",
        ),
        "version changed after signing": lambda: (
            SignedItem(key=good.key, version=Version(NOW + 1, 0, WEB.key_id), payload=good.payload,
                       signatures=good.signatures),
            "BadSignature",
        ),
        "payload is not a bundle": lambda: (resigned(good, WEB, payload=b"\x93\x01\x02\x03"), "Malformed"),
        "key and bundle name differ": lambda: (resigned(good, WEB, key="bundle/web/apache"), "Malformed"),
        "stamp beyond the clock skew": lambda: (pack(NGINX, WEB, NOW + 61_000), "FromTheFuture"),
        "stamp within the clock skew": lambda: (pack(NGINX, WEB, NOW + 59_000), None),
        "unknown namespace": lambda: (resigned(good, WEB, key="secret/x"), "OutOfScope"),
    }[name]()


BUNDLE_CASES = [
    "good",
    "author with prefix *",
    "key not in the root",
    "publisher outside its prefix",
    "admin is not a publisher",
    "signature by another key",
    "signed by someone but authored by web",
    "no signature",
    "payload changed after signing",
    "version changed after signing",
    "payload is not a bundle",
    "key and bundle name differ",
    "stamp beyond the clock skew",
    "stamp within the clock skew",
    "unknown namespace",
]


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_bundle_admission_table(admission, case):
    item, expected = bundle_case(case)
    assert admission(item, None, NOW) == expected
    if expected is None:
        assert admission.verify_bundle_item(item, NOW) == NGINX
    else:
        with pytest.raises(Refusal) as info:
            admission.verify_bundle_item(item, NOW)
        # the command line only verifies bundle files: anything else is not one
        assert info.value.reason == ("Malformed" if case == "unknown namespace" else expected)


def test_of_two_items_with_one_version_the_greater_digest_is_admitted_like_the_store_keeps_it(admission):
    """Two injections by one author in the same millisecond: every node must keep the same one."""
    a = pack(NGINX, WEB, NOW)
    b = pack(Bundle(name=NGINX.name, files={"other": b"x"}), WEB, NOW)
    assert a.version == b.version and a.digest() != b.digest()
    low, high = sorted((a, b), key=lambda i: i.digest())
    assert admission(high, low, NOW) is None
    assert admission(low, high, NOW) == "Stale"


def test_older_or_equal_version_is_stale(admission):
    stored = pack(NGINX, WEB, NOW)
    assert admission(pack(NGINX, WEB, NOW - 1), stored, NOW) == "Stale"
    assert admission(stored, stored, NOW) == "Stale"
    assert admission(pack(NGINX, WEB, NOW, counter=1), stored, NOW) is None


def test_bundle_over_the_size_limit_is_too_large_before_any_signature_work():
    adm = Admission(init_root(make_root(), [ADMIN], NOW), limits=Limits(max_bundle_bytes=64))
    big = pack(Bundle(name="web/big", files={"f": b"x" * 100}), WEB, NOW)
    forged = SignedItem(key=big.key, version=big.version, payload=big.payload, signatures=((WEB.key_id, b"\0" * 64),))
    assert adm(forged, None, NOW) == "TooLarge"


def test_bundles_are_refused_once_the_root_expired():
    adm = Admission(init_root(make_root(days=1), [ADMIN], NOW))
    item = pack(NGINX, WEB, NOW)
    assert adm(item, None, NOW + DAY_MS - 1) is None
    assert adm(item, None, NOW + 2 * DAY_MS) == "Expired"


def test_refusals_are_counted_and_logged_with_their_reason(admission, caplog):
    caplog.set_level(logging.INFO, logger="grapevine.policy")
    admission(pack(NGINX, STRANGER, NOW), None, NOW)
    admission(pack(NGINX, DB, NOW), None, NOW)
    admission(pack(NGINX, DB, NOW), None, NOW)
    admission(pack(NGINX, WEB, NOW), None, NOW)
    assert admission.refusals == {"UnknownKey": 1, "OutOfScope": 2}
    assert admission.last_refusal.reason == "OutOfScope" and "db/" in admission.last_refusal.detail
    lines = [r.getMessage() for r in caplog.records if r.name == "grapevine.policy"]
    assert len(lines) == 3
    assert "UnknownKey" in lines[0] and "bundle/web/nginx" in lines[0] and "[n1]" in lines[0]
    assert set(admission.refusals) <= set(REASONS)


def test_accepted_rotation_revokes_a_publisher_for_later_bundles(admission):
    root_item = admission.root_item
    new_root = make_root(serial=2, now=NOW + 1, publishers=((DB, "db/"),))
    rotated = rotate(root_item, new_root, [ADMIN], NOW + 1)
    assert admission(rotated, None, NOW + 2) is None
    admission.on_accepted(rotated)
    assert admission.root == new_root and admission.root_item == rotated
    web_bundle = pack(NGINX, WEB, NOW + 3)
    assert admission(web_bundle, None, NOW + 4) == "UnknownKey"
    # bundles stored before the rotation are re-checked against the new root
    assert admission.still_valid(pack(NGINX, WEB, NOW), NOW + 4) == "UnknownKey"
    assert admission.still_valid(pack(Bundle(name="db/pg"), DB, NOW), NOW + 4) is None


def test_threshold_rotation_through_the_validator(admission):
    second = make_root(serial=2, now=NOW + 1, admins=(ADMIN, BOTH), threshold=2)
    item2 = rotate(admission.root_item, second, [ADMIN], NOW + 1)
    assert admission(item2, None, NOW + 1) is None
    admission.on_accepted(item2)
    third = make_root(serial=3, now=NOW + 2, admins=(ADMIN, BOTH), threshold=2)
    v = Version(NOW + 2, 0, ADMIN.key_id)
    one = add_signature(SignedItem(key="trust/root", version=v, payload=third.encode()), ADMIN)
    assert admission(one, item2, NOW + 2) == "OutOfScope"
    two = add_signature(one, BOTH)
    assert admission(two, item2, NOW + 2) is None


def test_the_installed_root_itself_is_admitted_and_an_older_one_is_not(admission):
    first = admission.root_item
    assert admission(first, None, NOW) is None
    item2 = rotate(first, make_root(serial=2, now=NOW + 1), [ADMIN], NOW + 1)
    admission.on_accepted(item2)
    assert admission(first, None, NOW + 2) == "Stale"
    admission.on_accepted(first)  # an out-of-order callback never rolls the root back
    assert admission.root.serial == 2


def test_oversized_root_is_too_large(admission):
    adm = Admission(admission.root_item, limits=Limits(max_root_bytes=16))
    item2 = SignedItem(key="trust/root", version=Version(NOW + 1, 0, ADMIN.key_id), payload=b"x" * 17)
    assert adm(item2, None, NOW + 1) == "TooLarge"


def test_a_node_with_only_a_pinned_fingerprint_accepts_just_that_root():
    from grapevine.policy.trust import fingerprint

    real = init_root(make_root(), [ADMIN], NOW)
    other = init_root(make_root(now=NOW + 5), [ADMIN], NOW + 5)
    adm = Admission.from_fingerprint(fingerprint(real), node="fresh")
    assert adm.root is None
    assert adm(pack(NGINX, WEB, NOW), None, NOW) == "UnknownKey"  # nothing is trusted before the root
    assert adm(other, None, NOW + 10) == "BadSignature"
    assert adm(real, None, NOW + 10) is None
    adm.on_accepted(real)
    assert adm.root == make_root() and adm.root_item == real
    assert adm(pack(NGINX, WEB, NOW), None, NOW) is None
