"""Each scenario on the real gossip core at about 1,000 nodes, invariants observed throughout."""

from __future__ import annotations

import pytest

from grapevine.simulation.runner import run_protocol
from grapevine.simulation.scenarios import SCENARIOS

NODES = 1_000
HEAL_BUDGET_MS = 30_000  # the partition must heal within 30 s of simulated time
IDLE_FLATNESS = 0.25  # idle cost may differ by at most 25 % across sizes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_live_node_converges_and_no_invariant_breaks(params, scenario):
    result = run_protocol(params(nodes=NODES, scenario=scenario, seed=21), "plumtree")
    doc = result.doc
    assert result.failure is None, result.report
    assert doc["safety_violation"] is None and doc["liveness_failure"] is None
    assert doc["converged_fraction"] == 1.0
    assert doc["live_nodes"] == (NODES if scenario != "churn" else NODES + doc["churn"]["joined"]
                                 - doc["churn"]["crashed"] + doc["churn"]["restarted"])
    if scenario == "partition":
        assert doc["partition"]["sides"] == [NODES // 2, NODES // 2]
        # Each side spread its own item before the heal (a node the cut left
        # with no neighbour on its side may wait for the heal), nothing crossed.
        for side in ("side_a_holders_before_heal", "side_b_holders_before_heal"):
            assert 0.98 * NODES // 2 <= doc["partition"][side] <= NODES // 2
        assert doc["heal_ms"] is not None and doc["heal_ms"] <= HEAL_BUDGET_MS
    if scenario == "loss":
        assert doc["lost_messages"] > 0
    if scenario == "inject":
        # The tree formed during the warm-up: about one payload per node.
        assert doc["payload_copies_per_node"] <= 1.3


def test_plumtree_costs_far_fewer_payload_copies_than_push_gossip(params):
    p = params(nodes=NODES, seed=22)
    tree = run_protocol(p, "plumtree").doc
    push = run_protocol(p, "baseline").doc
    assert tree["converged_fraction"] == push["converged_fraction"] == 1.0
    assert push["payload_copies_per_node"] > 5 * tree["payload_copies_per_node"]
    assert push["bytes_per_node"] > 3 * tree["bytes_per_node"]


def _idle(params, **overrides) -> float:
    result = run_protocol(params(idle_ms=15_000, seed=23, **overrides), "plumtree")
    assert result.failure is None, result.report
    return result.doc["idle_bytes_per_node_per_s"]


def test_idle_cost_per_node_does_not_grow_with_the_fleet(params):
    small, large = _idle(params, nodes=300), _idle(params, nodes=1_000)
    assert abs(large - small) <= IDLE_FLATNESS * small, (small, large)


def test_idle_cost_per_node_does_not_grow_with_the_number_of_items(params):
    few, many = _idle(params, nodes=300, items=10), _idle(params, nodes=300, items=1_000)
    assert abs(many - few) <= IDLE_FLATNESS * few, (few, many)
