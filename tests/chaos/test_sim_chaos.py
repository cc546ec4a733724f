"""Seeded chaos in the simulator: every fault at once, then a heal that must converge."""

from __future__ import annotations

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.simulation.chaos import SKEW_SHARE, ChaosParams, ChaosRun, run_chaos
from grapevine.simulation.metrics import strip_machine_fields

CI_SEEDS = (11, 23, 37, 41, 58)  # five fixed seeds; the 200-seed sweep is benchmarks/chaos_sweep.py
CI_NODES = 300
# Fault kinds every CI sweep must have exercised at least once, all seeds together.
KINDS = ("partitions", "heals", "crashes", "restarts", "clock_reskews", "inject_waves", "injections",
         "forbidden_published", "forged_pushes", "forged_syncs", "future_stamped", "lost", "duplicated",
         "reordered")


@pytest.fixture(scope="module")
def sweep(chaos_record):
    results = {}
    for seed in CI_SEEDS:
        r = run_chaos(ChaosParams(seed=seed, nodes=CI_NODES))
        results[seed] = r
        chaos_record["sim_seeds"].append(seed)
        chaos_record["sim_faults"].update(r.doc["faults"])
        chaos_record["sim_violations"] += r.failure is not None
    return results


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_chaos_seed_keeps_safety_and_converges_after_heal(sweep, seed):
    r = sweep[seed]
    assert r.ok, r.report
    doc = r.doc
    assert doc["safety_violation"] is None and doc["liveness_failure"] is None
    assert doc["heal_ms"] is not None and doc["heal_ms"] <= r.params.budget_ms
    assert doc["keys_checked"] >= 2  # the contested keys really were written
    assert doc["live_nodes"] == CI_NODES - doc["faults"]["permanent_crashes"]


def test_sweep_exercised_every_fault_kind_and_refused_every_forgery(sweep):
    total = {k: sum(r.doc["faults"][k] for r in sweep.values()) for k in KINDS}
    assert all(v > 0 for v in total.values()), total
    refusals = {k: sum(r.doc["refusals"].get(k, 0) for r in sweep.values()) for k in ("Forbidden", "FromTheFuture", "Stale")}
    assert all(v > 0 for v in refusals.values()), refusals


def test_node_that_skips_the_validator_is_a_safety_failure_with_its_seed():
    nodes = [f"n{i}" for i in range(80)]
    r = run_chaos(ChaosParams(seed=5, nodes=80), lax=tuple(nodes))
    assert r.failure == "safety"
    assert "validator refuses" in r.doc["safety_violation"]["message"]
    assert r.report.startswith("safety failure: at n")
    assert r.report.endswith("reproduce with: python benchmarks/chaos_sweep.py --seed 5 --nodes 80")
    assert r.doc["liveness_failure"] is None and not r.ok


def test_links_that_stay_lossy_after_heal_are_a_liveness_failure_not_a_safety_one():
    r = run_chaos(ChaosParams(seed=3, nodes=80, heal_loss=0.95, budget_ms=4_000))
    assert r.failure == "liveness"
    assert r.doc["safety_violation"] is None
    assert "after the heal" in r.doc["liveness_failure"]
    assert "--seed 3 --nodes 80 --budget-ms 4000 --heal-loss 0.95" in r.report


def test_same_seed_replays_the_same_run():
    a = run_chaos(ChaosParams(seed=9, nodes=60, chaos_ms=15_000))
    b = run_chaos(ChaosParams(seed=9, nodes=60, chaos_ms=15_000))
    assert a.ok, a.report
    assert strip_machine_fields(a.doc) == strip_machine_fields(b.doc)
    c = run_chaos(ChaosParams(seed=10, nodes=60, chaos_ms=15_000))
    assert strip_machine_fields(c.doc) != strip_machine_fields(a.doc)


def test_clocks_are_skewed_apart_but_within_the_core_limit():
    run = ChaosRun(ChaosParams(seed=4, nodes=60, chaos_ms=15_000))
    run.execute()
    offsets = run.model.offsets.values()
    spread = max(offsets) - min(offsets)
    assert 0 < spread <= SKEW_SHARE * run.config.max_skew_ms
    assert run.model.reskewed > 0  # some restarted node came back with another clock
    assert spread >= run.skew_spread // 2


@pytest.mark.parametrize(
    "field, value",
    [("seed", -1), ("nodes", 3), ("chaos_ms", 10), ("max_loss", 1.0), ("heal_loss", -0.1), ("crash_share", 2.0)],
)
def test_bad_parameters_are_refused_with_their_name(field, value):
    kw = {"seed": 1, field: value}
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        ChaosParams(**kw)
