"""The push-gossip baseline: faithful to the analysis and to memberlist's rules."""

from __future__ import annotations

import math

import pytest

from grapevine.simulation.baseline import push_pull_interval, push_rounds, retransmit_limit
from grapevine.simulation.runner import run_protocol

FIDELITY_NODES = 10_000
FIDELITY_SEEDS = (1, 2, 3)


def test_random_push_reaches_everyone_in_pittels_number_of_rounds():
    # Pittel (1987): random push needs log2 n + ln n + O(1) rounds; at
    # n = 10,000 that is about 22.5. Averaged over a few seeds the simulated
    # baseline (engine + network model, aligned rounds, fanout 1, unlimited
    # forwarding) must land within 10 %.
    expected = math.log2(FIDELITY_NODES) + math.log(FIDELITY_NODES)
    rounds = [push_rounds(FIDELITY_NODES, seed) for seed in FIDELITY_SEEDS]
    mean = sum(rounds) / len(rounds)
    assert abs(mean - expected) <= 0.10 * expected, (rounds, expected)


def test_wider_fanout_needs_fewer_rounds():
    assert push_rounds(2_000, 5, fanout=3) < push_rounds(2_000, 5, fanout=1)


@pytest.mark.parametrize(
    "mult, n, limit",
    [(4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 1_000, 16), (4, 10_000, 20), (3, 100_000, 18), (None, 10, None)],
)
def test_retransmit_limit_grows_with_log10_of_fleet(mult, n, limit):
    assert retransmit_limit(mult, n) == limit


@pytest.mark.parametrize("n, interval", [(10, 30_000), (32, 30_000), (33, 60_000), (1_000, 180_000), (10_000, 300_000)])
def test_push_pull_interval_scales_past_32_nodes(n, interval):
    assert push_pull_interval(30_000, n) == interval


@pytest.mark.parametrize("scenario", ["inject", "loss", "churn"])
def test_baseline_reaches_every_live_node(params, scenario):
    result = run_protocol(params(scenario=scenario, protocol="baseline"), "baseline")
    doc = result.doc
    assert result.failure is None, result.report
    assert doc["converged_fraction"] == 1.0
    # memberlist's rule: each node sends each item 4 * ceil(log10(n + 1)) times.
    assert doc["payload_copies_per_node"] > 8


def test_baseline_partition_is_left_to_slow_full_state_syncs(params):
    # Push gossip has no repair but push/pull (every 30 s, scaled to 120 s
    # at 300 nodes): within a 20 s budget after the heal it cannot converge,
    # and the run says so as a liveness failure, not a safety one.
    result = run_protocol(params(scenario="partition", protocol="baseline", budget_ms=20_000), "baseline")
    assert result.failure == "liveness"
    assert result.doc["heal_ms"] is None
    assert 0.0 < result.doc["converged_fraction"] < 1.0
    assert "reproduce with: grapevine simulate --nodes 300 --seed 7 --scenario partition" in result.report
