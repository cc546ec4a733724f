"""The rollout scenario of the simulator: real gates and driver on simulated gossip nodes.

Small fleets (200-500 nodes) and a short soak keep each run to a couple of
seconds; the figures at 10,000 and 100,000 nodes are in
benchmarks/RESULTS-rollout.md (benchmarks/sim_rollout.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.simulation.metrics import strip_machine_fields
from grapevine.simulation.rollout import run_rollout

SOAK_MS = 4_000
QUICK = dict(soak_ms=SOAK_MS, settle_ms=3_000, idle_ms=20_000)  # 20 s: two shuffle periods per idle window


@cache
def _run(nodes: int, seed: int, bad_fraction: float, **opts: Any) -> dict[str, Any]:
    return run_rollout(nodes, seed, bad_fraction=bad_fraction, **QUICK, **opts)


def run(nodes: int, seed: int, bad_fraction: float, **opts: Any) -> dict[str, Any]:
    """One run per distinct argument list in this module (runs are deterministic, so sharing is exact)."""
    doc = _run(nodes, seed, bad_fraction, **opts)
    assert doc["safety_violation"] is None and doc["liveness_failure"] is None, doc.get("failure_report")
    return doc


def test_bad_bundle_halts_in_its_first_stage_and_no_node_keeps_it():
    doc = run(400, 3, 1.0)
    assert doc["halted"] is True and doc["state"] == "rolled_back"
    assert 1 <= doc["ever_applied"] <= 0.02 * 400
    assert doc["final_applied"] == 0
    assert doc["reverted"] == doc["ever_applied"]
    assert [s["open"] for s in doc["stages"]] == [True, False, False, False]
    assert doc["stages"][0]["ever_applied"] == doc["ever_applied"]
    assert "over the budget of 0" in doc["reason"]
    # Every node holds the bundle (it spread as any item) and the halting record: the halt is replicated.
    assert doc["converged_fraction"] == 1.0
    assert doc["plain"]["ever_applied"] == 400  # the same bundle injected plainly would run everywhere


def test_good_bundle_reaches_every_node_stage_by_stage():
    doc = run(300, 1, 0.0)
    assert doc["state"] == "complete" and doc["halted"] is False
    assert doc["ever_applied"] == doc["final_applied"] == 300
    assert doc["reverted"] == 0
    opened = [s["opened_ms"] for s in doc["stages"]]
    assert opened[0] == 0
    assert all(b - a >= SOAK_MS for a, b in zip(opened, opened[1:]))
    # stages x (soak + propagation, apply and health): each stage settles within two seconds here
    assert 4 * SOAK_MS <= doc["rollout_ms"] <= 4 * (SOAK_MS + 2_000)
    assert [s["size"] for s in doc["stages"]] == [3, 30, 150, 300]
    assert sum(s["ever_applied"] for s in doc["stages"]) == 300
    assert doc["reports"]["per_node"] == 2.0  # applied, healthy


def test_rollout_traffic_stays_within_three_plain_injects_and_idle_returns_flat():
    doc = run(300, 1, 0.0)
    assert doc["plain"]["converged_fraction"] == 1.0
    assert doc["item_bytes_ratio"] <= 3.0, doc["traffic_by_type"]
    assert doc["payload_copies_per_node"] < 6.5  # the bundle and five records, about once per node each
    assert doc["idle_bytes_per_node_per_s_after"] <= 1.5 * doc["idle_bytes_per_node_per_s"]


def test_failures_within_the_budget_revert_those_nodes_and_the_rollout_completes():
    doc = run(500, 2, 0.01, max_failures="2%")
    assert doc["bad_nodes"] == 5
    assert doc["state"] == "complete" and doc["halted"] is False
    assert doc["reverted"] == 5
    assert doc["final_applied"] == 495
    assert sum(s["failed"] for s in doc["stages"]) == 5


def test_failures_over_the_budget_halt_without_rollback_when_the_plan_says_halt():
    doc = run(500, 2, 0.05, max_failures="2%", on_failure="halt")
    assert doc["state"] == "halted" and doc["halted"] is True
    assert not doc["stages"][-1]["open"]
    # Healthy nodes of the opened stages keep the version; the failed ones went back on their own.
    assert doc["final_applied"] == doc["ever_applied"] - doc["reverted"] > 0
    assert doc["ever_applied"] < 500


def test_same_seed_gives_the_same_document_and_another_seed_another():
    a = strip_machine_fields(run_rollout(200, 5, bad_fraction=0.02, max_failures="5%", **QUICK))
    b = strip_machine_fields(run(200, 5, 0.02, max_failures="5%"))
    assert a == b
    c = strip_machine_fields(run(200, 6, 0.02, max_failures="5%"))
    assert c["driver"] != a["driver"] or c["stages"] != a["stages"]


@pytest.mark.parametrize("opts, what", [
    (dict(bad_fraction=1.5), "--bad-fraction"),
    (dict(stages=("10%", "50%")), "last stage must be 100%"),
    (dict(on_failure="explode"), "on_failure"),
])
def test_bad_parameters_are_refused_naming_what_is_wrong(opts, what):
    with pytest.raises(ConfigError, match=what):
        run_rollout(50, 1, **opts)


def test_cli_rollout_scenario_prints_the_documented_fields_and_refuses_bad_fraction_elsewhere():
    """`simulate --scenario rollout --bad-fraction 1.0 --json`: the DESIGN.md fields; --bad-fraction elsewhere is a usage error."""
    import json

    from click.testing import CliRunner

    from grapevine.cli.main import cli

    res = CliRunner().invoke(cli, ["simulate", "--scenario", "rollout", "--nodes", "200", "--seed", "3",
                                   "--bad-fraction", "1.0", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in ("ever_applied", "reverted", "final_applied", "halted", "rollout_ms", "stages"):
        assert key in doc, key
    assert doc["halted"] is True and doc["final_applied"] == 0 and doc["ever_applied"] <= 4
    refused = CliRunner().invoke(cli, ["simulate", "--bad-fraction", "0.5"])
    assert refused.exit_code == 2 and "--bad-fraction" in refused.output


def test_sweep_registry_offers_the_rollout_scenario():
    from grapevine.simulation.sweep import scenario_names

    assert "rollout" in scenario_names()
