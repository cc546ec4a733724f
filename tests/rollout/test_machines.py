"""The rollout's state machines (policy/rollout_machines.py) on a virtual clock: no sleeps, no sockets."""

from __future__ import annotations

import pytest

from grapevine.policy.rollout import ALL, RolloutPlan, RolloutRecord
from grapevine.policy.rollout_machines import (
    GATE_MOVES,
    Apply,
    Driver,
    DriverConfig,
    Gate,
    GateState,
    Report,
    Revert,
    RolloutStateError,
    RunHealth,
    abort_record,
)
from tests.rollout.memfleet import NEW, OLD, MemFleet


def plan(**kw) -> RolloutPlan:
    doc = {"stages": [1, "10%", "50%", "100%"], "soak": "30s", "health": "check", "max_failures": 0}
    doc.update(kw)
    return RolloutPlan.from_document(doc)


def test_healthy_rollout_opens_every_stage_in_turn_and_completes():
    fleet = MemFleet(100, plan())
    fleet.start()
    fleet.run()
    assert fleet.driver.state == "complete"
    assert [r.stage for r in fleet.records] == [0, 1, 2, 3, 3]
    assert set(fleet.running.values()) == {NEW}
    assert all(g.state is GateState.DONE for g in fleet.gates.values())
    # four stages, each healthy for the 30 s soak before the next one opens (and before completion)
    assert 4 * 30_000 <= fleet.now < 4 * 30_000 + 2_000
    st = fleet.driver.status()
    assert [(s["fraction"], s["open"], s["applied"], s["healthy"], s["failed"]) for s in st["stages"]] == [
        (0.01, True, 1, 1, 0), (0.1, True, 9, 9, 0), (0.5, True, 40, 40, 0), (1.0, True, 50, 50, 0)]


def test_stage_sizes_are_what_was_asked():
    fleet = MemFleet(200, plan())
    fleet.start()
    fleet.run()
    opened = [sum(r.opens(g.hash) for g in fleet.gates.values()) for r in fleet.records[:4]]
    assert opened == [1, 20, 100, 200]


def test_bad_bundle_is_caught_by_the_first_stage_and_nobody_else_ever_runs_it():
    fleet = MemFleet(100, plan(), bad=set(MemFleet(100, plan()).names))  # every node fails its health check
    fleet.start()
    fleet.run()
    assert fleet.driver.state == "rolled_back"
    assert len(fleet.ever) == 1  # the one node of the first stage
    assert set(fleet.running.values()) == {OLD}
    assert "failed, over the budget of 0" in fleet.driver.reason and "probe failed" in fleet.driver.reason
    assert fleet.records[-1].state == "rolled_back"
    assert sum(g.state is GateState.HALTED for g in fleet.gates.values()) == 99


def test_failures_within_the_budget_do_not_halt():
    names = MemFleet(100, plan()).names
    fleet = MemFleet(100, plan(max_failures="5%"), bad=set(names[:3]))
    fleet.start()
    fleet.run()
    assert fleet.driver.state == "complete"
    assert all(fleet.running[n] == OLD for n in names[:3])  # the failed ones went back on their own
    assert sum(v == NEW for v in fleet.running.values()) == 97


def test_halt_without_rollback_keeps_the_nodes_that_applied_and_opens_nothing_more():
    names = MemFleet(100, plan()).names
    p = plan(on_failure="halt")
    probe = MemFleet(100, p)
    # the node of stage 1 that is not the stage-0 node fails
    first = min(probe.gates.values(), key=lambda g: g.hash).node_id
    second = sorted(probe.gates.values(), key=lambda g: g.hash)[5].node_id
    fleet = MemFleet(100, p, bad={second})
    fleet.start()
    fleet.run()
    assert fleet.driver.state == "halted"
    assert fleet.running[first] == NEW and fleet.running[second] == OLD
    assert max(r.stage for r in fleet.records) == 1
    assert sum(v == NEW for v in fleet.running.values()) == 9
    assert len(names) == 100


def test_a_silent_stage_member_counts_as_failed_after_the_report_timeout():
    probe = MemFleet(10, plan())
    first = min(probe.gates.values(), key=lambda g: g.hash).node_id
    fleet = MemFleet(10, plan(), silent={first}, config=DriverConfig(report_timeout_ms=5_000))
    fleet.start()
    fleet.run()
    assert fleet.driver.state == "rolled_back"
    assert "no report within 5 s" in fleet.driver.reason
    assert 5_000 <= fleet.now < 6_000


def test_a_failure_during_the_soak_halts_before_the_next_stage():
    fleet = MemFleet(20, plan())
    fleet.start()
    fleet.run(until_ms=10_000)  # stage 0 applied, soaking
    assert fleet.driver.stage == 0
    node = next(n for n, g in fleet.gates.items() if g.state is GateState.HEALTHY)
    fleet.bad.add(node)  # the next re-check fails
    fleet.run()
    assert fleet.driver.state == "rolled_back" and fleet.driver.stage == 0
    assert set(fleet.running.values()) == {OLD}


def test_driver_resumed_from_a_record_finishes_the_rollout():
    fleet = MemFleet(50, plan(soak="1s"))
    fleet.start()
    fleet.run(until_ms=1_500)  # stage 1 open
    record = fleet.records[-1]
    assert record.state == "running" and record.stage == 1
    # the driver dies; a new one takes over from the replicated record, with a new term
    fleet.driver = Driver.resume(record, fleet.plan, fleet.names, "other@10.0.0.8:7000", fleet.now)
    fleet.handle(None, fleet.driver.start(fleet.now))
    assert fleet.records[-1].term == record.term + 1 and fleet.records[-1].driver == "other@10.0.0.8:7000"
    for name, g in fleet.gates.items():  # nodes re-send their state to the new driver
        if g.report:
            fleet.driver.on_report(name, g.report, fleet.now, g.detail)
    fleet.run()
    assert fleet.driver.state == "complete"
    assert set(fleet.running.values()) == {NEW}
    with pytest.raises(RolloutStateError):
        Driver.resume(fleet.records[-1], fleet.plan, fleet.names, "x@h:1", fleet.now)


def test_abort_reverts_every_node_that_applied():
    fleet = MemFleet(50, plan(soak="1s"))
    fleet.start()
    fleet.run(until_ms=2_500)
    assert sum(v == NEW for v in fleet.running.values()) > 1
    fleet.handle(None, fleet.driver.abort("aborted by ops", fleet.now))
    fleet.run()
    assert set(fleet.running.values()) == {OLD}
    assert fleet.records[-1].state == "rolled_back" and fleet.records[-1].reason == "aborted by ops"
    done = RolloutRecord(bundle="web/site", version=NEW, state="complete", stage=0, thresholds=(ALL,))
    with pytest.raises(RolloutStateError):
        abort_record(done, "too late")


def test_gate_holds_until_its_stage_opens_and_never_applies_after_a_halt():
    p = plan()
    gate = Gate("n@h:1", "web/site", NEW, p, OLD)
    below = RolloutRecord(bundle="web/site", version=NEW, stage=0, thresholds=(gate.hash,))  # hash not < threshold
    assert gate.on_record(below, 0) == [] and not gate.runs_new
    other = RolloutRecord(bundle="web/site", version=OLD, stage=0, thresholds=(ALL,))
    assert gate.on_record(other, 0) == []  # another version's record
    halted = RolloutRecord(bundle="web/site", version=NEW, state="halted", stage=0, thresholds=(gate.hash,))
    assert gate.on_record(halted, 1) == [] and gate.state is GateState.HALTED
    opened = RolloutRecord(bundle="web/site", version=NEW, stage=1, thresholds=(gate.hash, ALL))
    assert gate.on_record(opened, 2) == [] and not gate.runs_new


def test_gate_applies_checks_reports_and_falls_back_on_its_own():
    gate = Gate("n@h:1", "web/site", NEW, plan(), OLD)
    open_all = RolloutRecord(bundle="web/site", version=NEW, stage=0, thresholds=(ALL,))
    assert gate.on_record(open_all, 0) == [Apply(bundle="web/site", version=NEW)]
    assert gate.runs_new
    assert gate.on_applied(True, "", 10) == [Report(bundle="web/site", version=NEW, state="applied"),
                                             RunHealth(bundle="web/site", argv=("check",), timeout_ms=10_000)]
    assert gate.on_health(False, "exit 1", 20) == [Report(bundle="web/site", version=NEW, state="failed",
                                                          detail="exit 1"), Revert(bundle="web/site", to=OLD)]
    assert not gate.runs_new
    assert gate.on_reverted(True, "", 30) == [Report(bundle="web/site", version=NEW, state="reverted", detail="exit 1")]
    assert gate.on_record(open_all, 40) == []  # a failed version is never applied again here


def test_a_failed_converge_of_the_new_version_is_a_failure():
    gate = Gate("n@h:1", "web/site", NEW, plan(), None)
    gate.on_record(RolloutRecord(bundle="web/site", version=NEW, stage=0, thresholds=(ALL,)), 0)
    effects = gate.on_applied(False, "file:/etc/x failed", 5)
    assert effects[-1] == Revert(bundle="web/site", to=None)  # no earlier version here: stop applying it
    assert effects[0].state == "failed" and "file:/etc/x" in effects[0].detail


def test_gate_restored_after_a_restart_rechecks_health():
    gate = Gate("n@h:1", "web/site", NEW, plan(), OLD)
    gate.on_record(RolloutRecord(bundle="web/site", version=NEW, stage=0, thresholds=(ALL,)), 0)
    gate.on_applied(True, "", 1)
    gate.on_health(True, "", 2)
    again, effects = Gate.restore(gate.snapshot(), plan(), 100)
    assert again.state is GateState.CHECKING and effects == [RunHealth(bundle="web/site", argv=("check",),
                                                                       timeout_ms=10_000)]
    assert again.on_health(True, "", 101) == []  # healthy was reported before the restart


def test_every_gate_move_is_in_the_table():
    gate = Gate("n@h:1", "web/site", NEW, plan(), OLD)
    with pytest.raises(RolloutStateError):
        gate._go("healthy")  # not from HOLDING
    assert (GateState.HOLDING, "open") in GATE_MOVES


def test_late_reporters_are_counted_in_their_stage():
    drv = Driver("web/site", NEW, plan(soak=0), [], "d@h:1", 0)
    drv.start(0)
    assert drv.record.thresholds == (ALL,)  # no targets discovered: the last stage's threshold for all
    drv.on_report("late@h:1", "healthy", 5)
    assert drv.status()["targets"] == 1
