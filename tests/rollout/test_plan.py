"""The rollout plan (policy/rollout.py): written forms, canonical signed form, sizes, records."""

from __future__ import annotations

import pytest

from grapevine.gossip.errors import PolicyError, ProtocolError
from grapevine.gossip.item import Version
from grapevine.policy.bundle import Bundle
from grapevine.policy.rollout import (
    ALL,
    RolloutPlan,
    RolloutRecord,
    inside,
    parse_duration,
    plan_from_flags,
    stage_hash,
    threshold_for,
)

V = Version(1_700_000_000_000, 0, "abcd")


def test_the_documented_plan_reads_as_written():
    plan = RolloutPlan.from_document({
        "stages": [1, "10%", "50%", "100%"], "soak": "30s",
        "health": {"command": ["/usr/bin/curl", "-fsS", "http://127.0.0.1/health"], "timeout": "5s"},
        "max_failures": "2%", "on_failure": "halt"})
    assert [str(s) for s in plan.stages] == ["1", "10%", "50%", "100%"]
    assert plan.soak_ms == 30_000 and plan.health_timeout_ms == 5_000
    assert plan.health == ("/usr/bin/curl", "-fsS", "http://127.0.0.1/health")
    assert plan.on_failure == "halt"
    assert RolloutPlan.from_document(plan.to_document()) == plan


@pytest.mark.parametrize(("doc", "words"), [
    ({"stages": ["10%", "50%"]}, "last stage must be 100%"),
    ({"stages": ["50%", "10%", "100%"]}, "must grow"),
    ({"stages": [5, 2, "100%"]}, "must grow"),
    ({"stages": []}, "stages must list"),
    ({"stages": ["0%", "100%"]}, "percentage in (0"),
    ({"stages": ["120%"]}, "percentage"),
    ({"stages": ["ten", "100%"]}, "count (10) or a percentage"),
    ({"stages": [0, "100%"]}, ">= 1"),
    ({"soak": "soon"}, "not a duration"),
    ({"soak": -1}, "non-negative"),
    ({"max_failures": "-1"}, "count (10) or a percentage"),
    ({"on_failure": "panic"}, "on_failure must be one of rollback, halt"),
    ({"health": {"timeout": "5s"}}, "health must be a mapping with a command"),
    ({"health": {"command": ""}}, "health.command is empty"),
    ({"health": {"command": "x", "retries": 3}}, "unknown health key"),
    ({"stage": [1]}, "unknown rollout key(s) ['stage']"),
    ({"stages": ["1%"] * 20 + ["100%"]}, "at most 16 stages"),
])
def test_bad_plans_are_refused_naming_what_is_wrong(doc, words):
    with pytest.raises(PolicyError) as info:
        RolloutPlan.from_document(doc, "site.yaml")
    assert words in str(info.value) and "site.yaml" in str(info.value)


def test_flags_build_the_same_plan_as_the_policy_file():
    by_flags = plan_from_flags(stages="1,10%,100%", soak="1s", health="/bin/check --fast", max_failures="1",
                               on_failure="halt")
    by_file = RolloutPlan.from_document({"stages": [1, "10%", "100%"], "soak": "1s",
                                         "health": {"command": ["/bin/check", "--fast"]}, "max_failures": 1,
                                         "on_failure": "halt"})
    assert by_flags == by_file
    assert plan_from_flags(stages=None, soak=None, health=None, max_failures=None, on_failure=None) is None


def test_durations():
    assert [parse_duration(x, "t") for x in ("30s", "500ms", "2m", "1h", 3, "1.5s")] == [
        30_000, 500, 120_000, 3_600_000, 3_000, 1_500]


@pytest.mark.parametrize(("n", "counts"), [
    (0, [0, 0, 0, 0]), (1, [1, 1, 1, 1]), (5, [1, 1, 3, 5]), (1000, [1, 100, 500, 1000]), (10_000, [10, 1000, 5000, 10_000]),
])
def test_stage_counts_are_cumulative_and_end_at_every_target(n, counts):
    plan = RolloutPlan.from_document({"stages": ["0.1%", "10%", "50%", "100%"]})
    assert plan.stage_counts(n) == counts


def test_failure_budget_rounds_a_percentage_down():
    assert RolloutPlan.from_document({"max_failures": "2%"}).failure_budget(40) == 0
    assert RolloutPlan.from_document({"max_failures": "2%"}).failure_budget(100) == 2
    assert RolloutPlan.from_document({"max_failures": 3}).failure_budget(1) == 3


def test_the_plan_travels_in_the_bundle_and_is_covered_by_its_canonical_bytes():
    plan = RolloutPlan.from_document({"stages": [1, "100%"], "soak": "1s", "health": "true"})
    b = Bundle.from_document({"bundle": "web/site", "rollout": plan.to_document(), "resources": []}, "site.yaml")
    assert b.rollout == plan
    again = Bundle.decode(b.encode())
    assert again == b and again.encode() == b.encode()
    plain = Bundle(name="web/site")
    assert b"rollout" not in plain.encode()  # a bundle without a plan keeps its old bytes
    assert Bundle.decode(plain.encode()).rollout is None


def test_a_plan_not_in_canonical_form_is_refused_when_decoding():
    import msgpack

    b = Bundle(name="web/site", rollout=RolloutPlan.from_document({"stages": ["100%"]}))
    obj = msgpack.unpackb(b.encode())
    obj["rollout"]["stages"] = ["100.0%"]
    with pytest.raises(ProtocolError):
        Bundle.decode(msgpack.packb(obj, use_bin_type=True))


def test_stage_hash_is_deterministic_and_depends_on_node_and_version():
    assert stage_hash("a@h:1", V) == stage_hash("a@h:1", V)
    assert stage_hash("a@h:1", V) != stage_hash("b@h:1", V)
    assert stage_hash("a@h:1", V) != stage_hash("a@h:1", V._replace(counter=1))
    assert 0 <= stage_hash("a@h:1", V) < 2**64


@pytest.mark.parametrize("count", [0, 1, 7, 99, 100])
def test_threshold_lets_exactly_the_asked_count_in(count):
    hashes = sorted(stage_hash(f"n{i}@h:1", V) for i in range(100))
    t = threshold_for(hashes, count)
    assert sum(inside(h, t) for h in hashes) == count
    assert (t == ALL) == (count == 100)


def test_record_round_trips_and_refuses_what_is_not_canonical():
    r = RolloutRecord(bundle="web/site", version=V, stage=1, thresholds=(5, ALL), driver="a@h:1", term=2,
                      counts=((1, 1, 0), (3, 2, 0)))
    assert RolloutRecord.decode(r.encode()) == r
    assert len(r.encode()) < 200  # a few bytes at any fleet size
    with pytest.raises(ProtocolError):
        RolloutRecord(bundle="web/site", version=V, stage=1, thresholds=(9, 5))  # shrinking
    with pytest.raises(ProtocolError):
        RolloutRecord(bundle="web/site", version=V, stage=0, thresholds=())
    with pytest.raises(ProtocolError):
        RolloutRecord.decode(b"\x81\xa1x\x01")


def test_records_only_move_forward_for_one_version():
    run0 = RolloutRecord(bundle="b", version=V, stage=0, thresholds=(5,))
    run1 = RolloutRecord(bundle="b", version=V, stage=1, thresholds=(5, 9))
    halted = RolloutRecord(bundle="b", version=V, state="halted", stage=1, thresholds=(5, 9))
    back = RolloutRecord(bundle="b", version=V, state="rolled_back", stage=1, thresholds=(5, 9))
    done = RolloutRecord(bundle="b", version=V, state="complete", stage=1, thresholds=(5, ALL))
    assert run1.may_follow(run0) is None
    assert run0.may_follow(run1) is not None
    assert halted.may_follow(run1) is None and back.may_follow(halted) is None
    assert run1.may_follow(halted) is not None and run1.may_follow(back) is not None
    assert halted.may_follow(back) is not None and back.may_follow(done) is not None
    newer = RolloutRecord(bundle="b", version=V._replace(wall_ms=V.wall_ms + 1), stage=0, thresholds=(1,))
    assert newer.may_follow(back) is None  # a new version starts its own rollout
