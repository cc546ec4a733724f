"""Seed sweeps (simulation/sweep.py): seed ranges, the registry, a real Dask LocalCluster, the process pool."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.simulation import sweep as sweeps
from grapevine.simulation.chaos import ChaosParams, run_chaos
from grapevine.simulation.metrics import strip_machine_fields
from grapevine.simulation.runner import SimParams, simulate
from grapevine.simulation.sweep import choose_engine, parse_seeds, run_sweep, seeds_text

QUICK = dict(settle_ms=2_000, idle_ms=2_000)  # inject at 80 nodes: a fraction of a second per seed
CHAOS_QUICK = dict(chaos_ms=5_000)  # chaos at 30 nodes


def local_doc(scenario: str, seed: int, nodes: int, options: dict) -> dict:
    """The figures of one seed run here, without the sweep: what every engine must reproduce."""
    if scenario == "chaos":
        return run_chaos(ChaosParams(seed=seed, nodes=nodes, **options)).doc
    return simulate(SimParams(nodes=nodes, seed=seed, scenario=scenario, **options)).doc


def assert_same_figures(result: dict, scenario: str, nodes: int, options: dict) -> None:
    expected = strip_machine_fields(local_doc(scenario, result["seed"], nodes, options))
    got = strip_machine_fields({k: v for k, v in result.items() if k in expected})
    assert got == expected, f"seed {result['seed']} differs from a local run"


@pytest.mark.parametrize(
    "text, seeds",
    [("1-5", [1, 2, 3, 4, 5]), ("7", [7]), ("0", [0]), ("9,1-3,2", [1, 2, 3, 9]), (" 4 - 6 ", [4, 5, 6])],
)
def test_seed_ranges_name_the_seeds_in_order(text, seeds):
    assert parse_seeds(text) == seeds
    assert parse_seeds(seeds_text(seeds)) == seeds


@pytest.mark.parametrize(
    "text, words",
    [("", "empty"), ("x", "got 'x'"), ("5-1", "'5-1' must run"), ("-3", "got '-3'"), ("1-", "got '1-'"),
     ("1-100001", "more than 100,000"), ("1,,2", "got ''")],
)
def test_bad_seed_ranges_are_refused_with_what_is_wrong(text, words):
    with pytest.raises(ConfigError) as info:
        parse_seeds(text)
    assert words in str(info.value)


def test_every_simulate_scenario_and_chaos_are_registered_and_unknown_names_refused():
    assert {"inject", "partition", "churn", "loss", "chaos"} <= set(sweeps.scenario_names())
    with pytest.raises(ConfigError, match="--scenario must be one of .*chaos.*got 'flood'"):
        sweeps.get_scenario("flood")
    with pytest.raises(ConfigError, match="does not take that option"):
        run_sweep("chaos", [1], options={"fanout": 3}, engine="local")
    with pytest.raises(ConfigError, match="--nodes must be between"):
        run_sweep("inject", [1], nodes=1, engine="local")


def test_without_distributed_the_sweep_falls_back_to_the_process_pool(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    assert choose_engine("auto", None) == "local"
    with pytest.raises(ConfigError, match=r"grapevine-mesh\[cluster\]"):
        choose_engine("dask", None)
    with pytest.raises(ConfigError, match=r"grapevine-mesh\[cluster\]"):
        choose_engine("auto", "tcp://127.0.0.1:8786")


def test_process_pool_returns_every_seed_from_its_processes_with_local_figures():
    seeds = [1, 2, 3, 4]
    seen = []
    result = run_sweep("inject", seeds, nodes=80, options=QUICK, engine="local", workers=2,
                       on_result=lambda doc, done, total: seen.append((doc["seed"], done, total)))
    assert result.engine == "local" and result.ok
    assert [d["seed"] for d in result.results] == seeds
    assert sorted(s for s, _, _ in seen) == seeds and [d for _, d, _ in seen] == [1, 2, 3, 4]
    pids = {d["worker"].rsplit("pid ", 1)[1] for d in result.results}
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2
    for doc in result.results:
        assert_same_figures(doc, "inject", 80, QUICK)
    one = run_sweep("inject", [3], nodes=80, options=QUICK, engine="local", workers=1)
    assert one.results[0]["worker"].endswith(f"pid {os.getpid()}")  # one worker: this process
    assert one.place == "this process"


def test_summary_gives_min_median_p99_max_per_figure_and_names_failed_seeds():
    # Seeds 2 and 4 need longer than this budget to heal the partition; 1 and 3 do not.
    options = dict(QUICK, partition_ms=5_000, budget_ms=1_500)
    result = run_sweep("partition", [1, 2, 3, 4], nodes=60, options=options, engine="local", workers=1)
    summary = result.summary()
    assert not result.ok and summary["failed_seeds"] == [2, 4]
    failure = summary["failures"][0]
    assert failure["seed"] == 2 and failure["failure"] == "liveness"
    assert failure["reproduce"] == ("grapevine simulate --nodes 60 --seed 2 --scenario partition --protocol plumtree "
                                    "--settle-ms 2000 --idle-ms 2000 --partition-ms 5000 --budget-ms 1500")
    heal = summary["figures"]["heal_ms"]
    assert heal["seeds"] == 2 and heal["min"] <= heal["median"] <= heal["p99"] <= heal["max"] < 1_500
    hops = sorted(d["max_hops"] for d in result.results)
    assert summary["figures"]["max_hops"] == {"min": hops[0], "median": (hops[1] + hops[2]) / 2, "p99": hops[-1],
                                             "max": hops[-1], "seeds": 4}


def raising_runner(seed: int, nodes: int, **options):
    if seed == 2:
        raise RuntimeError("boom")
    return {"ok": True, "value": seed}


@pytest.fixture
def raising_scenario():
    sweeps.register("test-raises", raising_runner, nodes=8)
    yield "test-raises"
    sweeps._REGISTRY.pop("test-raises", None)


def test_a_runner_that_raises_is_a_failed_seed_not_a_lost_one(raising_scenario):
    result = run_sweep(raising_scenario, [1, 2, 3], engine="local", workers=1)
    assert [d["seed"] for d in result.results] == [1, 2, 3]
    assert result.summary()["failed_seeds"] == [2]
    failed = result.results[1]
    assert failed["failure"] == "error" and "RuntimeError('boom')" in failed["report"]
    assert result.summary()["figures"]["value"] == {"min": 1, "median": 2.0, "p99": 3, "max": 3, "seeds": 2}


# -- a real Dask cluster -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes on loopback, closed after the module."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as local:
        with distributed.Client(local) as client:
            client.wait_for_workers(2, timeout=60)
        yield local


@pytest.mark.slow
@pytest.mark.parametrize("scenario, nodes, options", [("inject", 80, QUICK), ("chaos", 30, CHAOS_QUICK)])
def test_dask_cluster_returns_every_seed_from_both_workers_with_local_figures(cluster, scenario, nodes, options):
    seeds = list(range(1, 11))
    result = run_sweep(scenario, seeds, nodes=nodes, options=options, scheduler=cluster.scheduler_address)
    assert result.engine == "dask" and result.scheduler == cluster.scheduler_address
    assert [d["seed"] for d in result.results] == seeds and result.ok
    workers = set(cluster.scheduler_info["workers"])
    assert len(workers) == 2 and set(result.workers) == workers
    assert {d["worker"] for d in result.results} == workers  # both workers ran seeds
    for doc in result.results:
        assert_same_figures(doc, scenario, nodes, options)
    assert result.doc()["summary"]["by_worker"].keys() == workers


@pytest.mark.slow
def test_default_dask_engine_starts_a_local_cluster_and_closes_it():
    result = run_sweep("chaos", [1, 2, 3, 4], nodes=30, options=CHAOS_QUICK, engine="dask", workers=2)
    assert result.engine == "dask" and result.ok and len(result.workers) == 2
    assert {d["worker"] for d in result.results} <= set(result.workers)
    for address in [result.scheduler, *result.workers]:
        url = urlparse(address)
        assert url.hostname == "127.0.0.1"
        with pytest.raises(OSError):  # nothing listens there once the sweep is over
            socket.create_connection((url.hostname, url.port), timeout=2).close()


@pytest.mark.slow
def test_unreachable_scheduler_is_a_connection_error_naming_it(monkeypatch):
    monkeypatch.setattr(sweeps, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        run_sweep("inject", [1], nodes=20, scheduler=f"tcp://127.0.0.1:{port}")
