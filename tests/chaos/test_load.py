"""Load with real agents: injections and run orders at once; nothing lost, nothing run twice.

The smaller sibling of benchmarks/load_run.py (which drives 200 injections
and 2,000 run orders across 20 agents): the same driver on fewer agents.
Every run targets every agent; each order's command appends its run id to
runs.log under the executing agent's --root, and the lines are counted: each
order sent must have run exactly once, on the agent it was sent to.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

AGENTS = 8
INJECTIONS = 40
BUNDLES = 8
RUNS = 25  # x 8 agents = 200 orders
CONCURRENCY = 3
MAX_RSS_GROWTH = 0.2  # resident memory of each agent after the load within 20 % of before

_spec = importlib.util.spec_from_file_location(
    "load_run", Path(__file__).resolve().parents[2] / "benchmarks" / "load_run.py")
load_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load_run)


def test_concurrent_injections_and_runs_lose_nothing_and_run_nothing_twice(tmp_path, chaos_record):
    doc = load_run.run_load(tmp_path, agents=AGENTS, injections=INJECTIONS, runs=RUNS, bundles=BUNDLES,
                            concurrency=CONCURRENCY)
    assert doc["errors"] == []
    assert doc["injections"] == INJECTIONS and doc["bundles"] == BUNDLES
    assert doc["runs"] == RUNS
    # Every run reaches every agent: none missed by discovery, and what was sent ran once.
    assert doc["targets_missed_by_discovery"] == 0, doc["short_runs"]
    assert doc["results"] == doc["orders_sent"] == RUNS * AGENTS
    assert doc["results_missing"] == 0 and doc["results_failed"] == 0
    assert doc["orders_lost"] == 0
    assert doc["orders_executed_twice"] == 0
    assert doc["orders_foreign"] == 0
    assert doc["rss_growth_max"] <= MAX_RSS_GROWTH, (doc["rss_before_kib"], doc["rss_after_kib"])
    chaos_record["real"].append(
        f"load: {AGENTS} agents, {doc['injections']} injections, {doc['runs']} runs, {doc['orders_sent']} run orders "
        f"sent in {doc['load_s']} s ({doc['targets_missed_by_discovery']} targets missed by discovery); "
        f"orders lost {doc['orders_lost']}, executed twice {doc['orders_executed_twice']}; "
        f"newest of {doc['bundles']} bundles applied everywhere; RSS growth max {doc['rss_growth_max']:.1%}"
    )
