"""Rollout records and plans at admission: signed by a publisher of the bundle, never moving backwards."""

from __future__ import annotations

import pytest

from grapevine.gossip.item import Version
from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.grants import Grant
from grapevine.policy.keys import SigningKey
from grapevine.policy.rollout import ALL, RolloutPlan, RolloutRecord, sign_record
from grapevine.policy.refusal import Refusal
from grapevine.policy.trust_files import build_root, init_root

NOW = 1_800_000_000_000
ADMIN, WEB, DB = (SigningKey(bytes([i]) * 32) for i in (71, 72, 73))
V = Version(NOW - 1000, 0, WEB.key_id)


@pytest.fixture
def adm():
    root = build_root(serial=1, now_ms=NOW, expires_days=30, admins=[ADMIN.public], threshold=1,
                      publishers=[(WEB.public, Grant.parse("web/")), (DB.public, Grant.parse("db/"))])
    return Admission(init_root(root, [ADMIN], NOW))


def rec(**kw) -> RolloutRecord:
    base = dict(bundle="web/site", version=V, stage=0, thresholds=(123,), driver="a@h:1")
    base.update(kw)
    return RolloutRecord(**base)


def test_a_record_by_a_publisher_of_the_bundle_is_admitted(adm):
    assert adm(sign_record(rec(), WEB, NOW), None, NOW) is None


def test_a_record_by_a_key_outside_the_bundle_prefix_is_refused(adm):
    assert adm(sign_record(rec(), DB, NOW), None, NOW) == "OutOfScope"


def test_a_record_whose_signature_does_not_verify_is_refused(adm):
    item = sign_record(rec(), WEB, NOW)
    forged = type(item)(key=item.key, version=item.version, payload=rec(stage=1, thresholds=(1, ALL)).encode(),
                        signatures=item.signatures)
    assert adm(forged, None, NOW) == "BadSignature"


def test_a_record_under_another_bundle_key_is_malformed(adm):
    item = sign_record(rec(), WEB, NOW)
    moved = type(item)(key="rollout/web/other", version=item.version, payload=item.payload)
    moved = moved.with_signature(WEB.key_id, WEB.sign(moved.signing_bytes()))
    assert adm(moved, None, NOW) == "Malformed"


def test_a_halted_rollout_cannot_be_reopened_even_by_a_newer_record(adm):
    halted = sign_record(rec(state="halted"), WEB, NOW)
    reopened = sign_record(rec(stage=1, thresholds=(123, ALL)), WEB, NOW + 10)
    assert adm(reopened, halted, NOW + 10) == "Stale"
    rolled = sign_record(rec(state="rolled_back"), WEB, NOW + 10)
    assert adm(rolled, halted, NOW + 10) is None  # halted -> rolled back (abort after a halt) moves forward


def test_sign_record_stamps_after_the_stored_one_even_with_a_clock_behind(adm):
    stored = sign_record(rec(), WEB, NOW + 5_000)
    nxt = sign_record(rec(stage=1, thresholds=(123, 456)), WEB, NOW, after=stored.version)
    assert nxt.version > stored.version
    assert adm(nxt, stored, NOW) is None


def test_a_health_command_needs_a_grant_with_exec():
    root = build_root(serial=1, now_ms=NOW, expires_days=30, admins=[ADMIN.public], threshold=1,
                      publishers=[(WEB.public, Grant.parse("web/;types=file"))])
    adm = Admission(init_root(root, [ADMIN], NOW))
    plan = RolloutPlan.from_document({"stages": ["100%"], "health": "curl -f http://127.0.0.1/"})
    with pytest.raises(Refusal) as info:
        adm.verify_bundle_item(pack(Bundle(name="web/site", rollout=plan), WEB, NOW), NOW)
    assert info.value.reason == "OutOfScope" and "exec" in str(info.value)
    quiet = RolloutPlan.from_document({"stages": ["100%"]})
    assert adm.verify_bundle_item(pack(Bundle(name="web/site", rollout=quiet), WEB, NOW), NOW).rollout == quiet


def test_still_valid_keeps_a_stored_record_after_a_restart(adm):
    assert adm.still_valid(sign_record(rec(), WEB, NOW), NOW) is None
