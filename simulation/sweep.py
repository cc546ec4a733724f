"""Seed sweeps: one scenario over many seeds, fanned out to Dask or a local process pool.

A scenario is registered by name with a *runner*, a module-level function
``runner(seed, nodes, **options) -> dict`` that runs one seeded simulation and
returns its figures as a JSON-able document with at least ``ok`` (bool); a
failed run also says ``failure`` (its kind: ``safety``, ``liveness``, ...)
and ``report`` (the printed lines, ending with the command that replays it).
Runners are module-level so that a worker process can import them by name.

The built-in scenarios are registered at the end of this module: the
``grapevine simulate`` scenarios (``inject``, ``partition``, ``churn``,
``loss`` and any later one added to ``scenarios.SCENARIOS``) and ``chaos``
(simulation/chaos.py). A scenario defined in another module registers itself
when that module is imported (``register("rollout", run_one, nodes=1000)``);
whoever offers it by name (the command line) imports that module first.

``run_sweep`` sends one task per seed to an engine:

- ``dask``: a ``distributed`` cluster, either a ``LocalCluster`` of worker
  processes started for the sweep on 127.0.0.1 and closed after it, or an
  existing one reached through its scheduler address. Needs the ``cluster``
  extra (``pip install 'grapevine-mesh[cluster]'``).
- ``local``: a ``concurrent.futures`` process pool on this machine (one
  worker: the seeds run one after the other in this process).

Every result carries its ``seed`` and the ``worker`` that ran it (the Dask
worker's address, or the pool process). Each run is a pure function of its
seed and parameters, so a result does not depend on the engine or worker.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import statistics
import sys
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

from grapevine.gossip.errors import ConfigError

from .chaos import ChaosParams, run_chaos
from .metrics import percentile
from .runner import SimParams, simulate
from .scenarios import SCENARIOS

log = logging.getLogger("grapevine.sim")

Runner = Callable[..., dict[str, Any]]
ResultFn = Callable[[dict[str, Any], int, int], None]  # (result, done so far, total)

ENGINES = ("auto", "dask", "local")
MAX_SEEDS = 100_000  # one sweep; a result document is kept per seed
CONNECT_TIMEOUT_S = 30  # reaching an existing scheduler
CLUSTER_HINT = "pip install 'grapevine-mesh[cluster]'"
# Keys a sweep adds to each runner document.
RESULT_KEYS = ("seed", "worker", "failure", "report")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named scenario a sweep can run."""

    name: str
    runner: Runner
    nodes: int  # default fleet size
    figures: tuple[str, ...] = ()  # the table's rows (dotted paths); empty: every numeric figure
    check: Callable[[int, dict[str, Any]], None] | None = None  # raises ConfigError before a seed runs
    totals: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None  # scenario-wide sums
    about: str = ""


_REGISTRY: dict[str, Scenario] = {}


def register(name: str, runner: Runner, *, nodes: int = 1000, figures: tuple[str, ...] = (),
             check: Callable[[int, dict[str, Any]], None] | None = None,
             totals: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
             about: str = "") -> Scenario:
    """Offer ``runner`` to sweeps as ``name``. Registering a name twice is an error."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"scenario name must be a word, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name].runner is not runner:
        raise ValueError(f"scenario {name!r} is already registered")
    spec = Scenario(name, runner, nodes, tuple(figures), check, totals, about)
    _REGISTRY[name] = spec
    return spec


def scenario_names() -> list[str]:
    return sorted(_REGISTRY)


def get_scenario(name: str) -> Scenario:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"--scenario must be one of {', '.join(scenario_names())}, got {name!r}") from None


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"1-200"``, ``"7"`` or ``"1-5,9,20-22"``: ascending, no repeats."""
    seeds: set[int] = set()
    if not text.strip():
        raise ConfigError("--seeds is empty: give a range such as 1-200")
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ConfigError(f"--seeds must be seeds and ranges such as 1-200 or 1,5,9-12, got {part!r}") from None
        if lo < 0 or hi < lo:
            raise ConfigError(f"--seeds range {part!r} must run from a non-negative seed upwards")
        if hi - lo + 1 + len(seeds) > MAX_SEEDS:
            raise ConfigError(f"--seeds names more than {MAX_SEEDS:,} seeds")
        seeds.update(range(lo, hi + 1))
    return sorted(seeds)


def seeds_text(seeds: list[int]) -> str:
    """The shortest ``--seeds`` text naming ``seeds`` (ascending)."""
    parts: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


# -- one seed, on whichever worker -----------------------------------------------


def worker_name() -> str:
    """The Dask worker's address when run by one, else this process on this host."""
    if sys.modules.get("distributed") is not None:  # only a Dask worker has it loaded
        try:
            from distributed import get_worker

            return get_worker().address
        except (ImportError, ValueError):
            pass  # not inside a Dask task
    return f"{socket.gethostname()}/pid {os.getpid()}"


def lost_seed(seed: int, exc: BaseException) -> dict[str, Any]:
    """The result of a seed whose task never returned (its worker process died, say)."""
    return {"ok": False, "failure": "error", "report": f"error: the task of seed {seed} failed: {exc!r}",
            "seed": seed, "worker": None}


def run_seed(runner: Runner, seed: int, nodes: int, options: dict[str, Any]) -> dict[str, Any]:
    """Run one seed; an exception becomes a failed result (``failure: error``), never a lost seed."""
    try:
        doc = dict(runner(seed, nodes, **options))
    except Exception as exc:  # noqa: BLE001 - a crashing run is a result of the sweep
        detail = "".join(traceback.format_exception(exc)).rstrip()
        doc = {"ok": False, "failure": "error", "report": f"error: {exc!r}\n{detail}"}
    if doc.get("ok") is not True:
        doc.setdefault("failure", "failed")
        doc.setdefault("report", None)
    doc.setdefault("failure", None)
    doc.setdefault("report", None)
    doc["seed"] = seed
    doc["worker"] = worker_name()
    return doc


# -- engines ---------------------------------------------------------------------


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def choose_engine(engine: str, scheduler: str | None) -> str:
    """``auto`` means Dask when ``distributed`` is installed, else the local pool."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local":
        if scheduler:
            raise ConfigError("--scheduler needs the dask engine, not --engine local")
        return "local"
    if dask_available():
        return "dask"
    if engine == "dask" or scheduler:
        raise ConfigError(f"a Dask cluster needs the distributed package: {CLUSTER_HINT}")
    return "local"


def _run_dask(spec: Scenario, seeds: list[int], nodes: int, options: dict[str, Any], *,
              scheduler: str | None, workers: int | None, on_result: ResultFn,
              info: dict[str, Any]) -> list[dict[str, Any]]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    else:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError as exc:
            raise ConnectionError(f"the Dask cluster at {client.scheduler.address} has no worker") from exc
        info["scheduler"] = client.scheduler.address
        info["place"] = f"{'Dask' if scheduler else 'a local Dask'} cluster at {info['scheduler']}"
        info["workers"] = sorted(client.scheduler_info().get("workers", {}))
        batch = uuid.uuid4().hex[:8]
        futures = {
            client.submit(run_seed, spec.runner, seed, nodes, options,
                          key=f"grapevine-sweep-{spec.name}-{batch}-{seed}", pure=False): seed
            for seed in seeds
        }
        results = []
        for future in as_completed(futures):
            try:
                doc = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the task's workers kept dying
                doc = lost_seed(futures[future], exc)
            results.append(doc)
            future.release()
            on_result(doc, len(results), len(seeds))
        # Workers that joined during the sweep count too.
        info["workers"] = sorted(set(info["workers"]) | {d["worker"] for d in results if d["worker"]})
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _run_local(spec: Scenario, seeds: list[int], nodes: int, options: dict[str, Any], *,
               workers: int | None, on_result: ResultFn, info: dict[str, Any]) -> list[dict[str, Any]]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    count = max(1, min(workers or os.cpu_count() or 1, len(seeds)))
    results: list[dict[str, Any]] = []
    if count == 1:
        info["workers"] = [worker_name()]
        info["place"] = "this process"
        for seed in seeds:
            results.append(run_seed(spec.runner, seed, nodes, options))
            on_result(results[-1], len(results), len(seeds))
        return results
    with ProcessPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run_seed, spec.runner, seed, nodes, options) for seed in seeds]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                on_result(results[-1], len(results), len(seeds))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    info["workers"] = sorted({d["worker"] for d in results})
    info["place"] = f"a local pool of {count} processes"
    return results


@dataclass(slots=True)
class Sweep:
    """Every seed's result and where it ran."""

    scenario: Scenario
    nodes: int
    seeds: list[int]
    options: dict[str, Any]
    engine: str
    results: list[dict[str, Any]] = field(default_factory=list)  # by seed
    scheduler: str | None = None
    place: str = ""  # where the seeds ran, in words
    workers: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [d for d in self.results if d.get("ok") is not True]

    @property
    def ok(self) -> bool:
        return len(self.results) == len(self.seeds) and not self.failed

    def summary(self) -> dict[str, Any]:
        figures = figure_table([figures_of(d) for d in self.results])
        out: dict[str, Any] = {
            "seeds_run": len(self.results),
            "failed_seeds": [d["seed"] for d in self.failed],
            "failures": [
                {"seed": d["seed"], "failure": d["failure"], "worker": d["worker"],
                 "message": first_line(d.get("report")), "reproduce": reproduce_of(d)}
                for d in self.failed
            ],
            "by_worker": dict(sorted(Counter(d["worker"] or "(task lost)" for d in self.results).items())),
            "figures": figures,
            "wall_s": self.wall_s,
        }
        if self.scenario.totals is not None:
            out["totals"] = self.scenario.totals(self.results)
        return out

    def doc(self) -> dict[str, Any]:
        """What ``grapevine simulate sweep --json`` prints."""
        return {
            "scenario": self.scenario.name,
            "nodes": self.nodes,
            "seeds": seeds_text(self.seeds),
            "options": dict(self.options),
            "engine": self.engine,
            "scheduler": self.scheduler,
            "place": self.place,
            "workers": list(self.workers),
            "results": self.results,
            "summary": self.summary(),
            "ok": self.ok,
            "wall_s": self.wall_s,
        }


def check_sweep(name: str, nodes: int | None, options: dict[str, Any], workers: int | None = None,
                scheduler: str | None = None) -> tuple[Scenario, int]:
    """The scenario and fleet size of a sweep; ``ConfigError`` for anything it would refuse."""
    spec = get_scenario(name)
    nodes = spec.nodes if nodes is None else nodes
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers is not None and scheduler:
        raise ConfigError("--workers sizes a local cluster; the cluster behind --scheduler has its own workers")
    if spec.check is not None:
        spec.check(nodes, options)
    return spec, nodes


def run_sweep(name: str, seeds: list[int], *, nodes: int | None = None, options: dict[str, Any] | None = None,
              engine: str = "auto", scheduler: str | None = None, workers: int | None = None,
              on_result: ResultFn | None = None) -> Sweep:
    """Run scenario ``name`` once per seed on ``engine``; ``on_result`` sees each result as it lands.

    Bad parameters raise ``ConfigError`` before anything starts; a cluster
    that cannot be reached raises ``ConnectionError``. A seed that fails is a
    result, never an exception.
    """
    spec, nodes = check_sweep(name, nodes, options or {}, workers, scheduler)
    options = dict(options or {})
    if not seeds:
        raise ConfigError("--seeds names no seed")
    chosen = choose_engine(engine, scheduler)
    sweep = Sweep(spec, nodes, list(seeds), options, chosen)
    info: dict[str, Any] = {}
    started = time.perf_counter()
    seen = on_result or (lambda doc, done, total: None)
    log.info("sweep %s: %d seeds, %d nodes, engine %s", name, len(seeds), nodes, chosen)
    if chosen == "dask":
        results = _run_dask(spec, sweep.seeds, nodes, options, scheduler=scheduler, workers=workers,
                            on_result=seen, info=info)
    else:
        results = _run_local(spec, sweep.seeds, nodes, options, workers=workers, on_result=seen, info=info)
    sweep.wall_s = round(time.perf_counter() - started, 3)
    sweep.results = sorted(results, key=lambda d: d["seed"])
    sweep.scheduler = info.get("scheduler")
    sweep.place = info.get("place", "")
    sweep.workers = info.get("workers", [])
    return sweep


# -- figures -----------------------------------------------------------------------

SKIP_FIGURES = frozenset({"seed", "ok"})


def figures_of(doc: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a result document, by dotted path (``convergence_ms.p99``)."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        if key in SKIP_FIGURES and not prefix:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(figures_of(value, f"{path}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = value
    return out


def figure_table(per_seed: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """min / median / p99 / max of each figure over the seeds that have it."""
    names: dict[str, None] = {}
    for figures in per_seed:
        names.update(dict.fromkeys(figures))
    table = {}
    for name in names:
        values = sorted(f[name] for f in per_seed if name in f)
        table[name] = {"min": values[0], "median": statistics.median(values), "p99": percentile(values, 99),
                       "max": values[-1], "seeds": len(values)}
    return table


def first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def reproduce_of(doc: dict[str, Any]) -> str | None:
    """The command that replays this seed alone."""
    for line in reversed((doc.get("report") or "").splitlines()):
        if line.startswith("reproduce with: "):
            return line.removeprefix("reproduce with: ")
    return doc.get("reproduce")


# -- the built-in scenarios ---------------------------------------------------------


def _options_error(exc: TypeError, name: str) -> ConfigError:
    return ConfigError(f"scenario {name!r} does not take that option: {exc}")


def simulate_seed(seed: int, nodes: int, *, scenario: str, **options: Any) -> dict[str, Any]:
    """One ``grapevine simulate`` run: its ``--json`` document plus ``failure`` and ``report``."""
    result = simulate(SimParams(nodes=nodes, seed=seed, scenario=scenario, **options))
    doc = dict(result.doc)
    first = result.runs[0]
    failed = next((r for r in result.runs if r.failure == "safety"), None) or (None if first.ok else first)
    if failed is not None:
        doc["failure"] = failed.failure or "not converged"
        doc["report"] = failed.report or (
            f"not converged: converged fraction {failed.doc.get('converged_fraction')} < 1\n"
            f"reproduce with: {failed.doc['reproduce']}"
        )
    del result, first, failed
    # A large fleet is left frozen for a process about to exit; a worker runs on.
    gc.unfreeze()
    return doc


def _check_simulate(scenario: str) -> Callable[[int, dict[str, Any]], None]:
    def check(nodes: int, options: dict[str, Any]) -> None:
        try:
            SimParams(nodes=nodes, seed=0, scenario=scenario, **options)
        except TypeError as exc:
            raise _options_error(exc, scenario) from None
    return check


def chaos_seed(seed: int, nodes: int, **options: Any) -> dict[str, Any]:
    """One chaos run (simulation/chaos.py): its document plus ``failure`` and ``report``."""
    result = run_chaos(ChaosParams(seed=seed, nodes=nodes, **options))
    doc = dict(result.doc)
    doc["failure"] = result.failure
    doc["report"] = result.report
    return doc


def _check_chaos(nodes: int, options: dict[str, Any]) -> None:
    try:
        ChaosParams(seed=0, nodes=nodes, **options)
    except TypeError as exc:
        raise _options_error(exc, "chaos") from None


def chaos_totals(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The chaos sweep's summary: faults and refusals summed, failures by kind, heal times."""
    faults: Counter = Counter()
    refusals: Counter = Counter()
    for d in docs:
        faults.update(d.get("faults", {}))
        refusals.update(d.get("refusals", {}))
    heals = sorted(d["heal_ms"] for d in docs if d.get("heal_ms") is not None)
    # p90 as benchmarks/RESULTS-chaos.md has always counted it: the value at index int(0.9 n).
    p90 = heals[min(len(heals) - 1, int(0.9 * len(heals)))] if heals else None
    return {
        "faults": dict(sorted(faults.items())),
        "refusals": dict(sorted(refusals.items())),
        "safety_violations": sum(1 for d in docs if d.get("failure") == "safety"),
        "liveness_failures": sum(1 for d in docs if d.get("failure") == "liveness"),
        "heal_ms": {"median": statistics.median(heals) if heals else None, "p90": p90,
                    "max": heals[-1] if heals else None},
        "events": sum(d.get("events", 0) for d in docs),
        "wall_s_total": round(sum(d.get("wall_s", 0.0) for d in docs), 1),
    }


SIMULATE_FIGURES = (
    "converged_fraction", "convergence_ms.p50", "convergence_ms.p99", "convergence_ms.max", "heal_ms",
    "max_hops", "messages_per_node", "bytes_per_node", "payload_copies_per_node", "idle_bytes_per_node_per_s",
    "sim_ms", "events", "wall_s", "peak_rss_mb",
)
CHAOS_FIGURES = (
    "heal_ms", "live_nodes", "keys_checked", "settings.loss", "settings.duplicate", "settings.reorder",
    "faults.partitions", "faults.crashes", "faults.inject_waves", "faults.lost", "faults.forged_pushes",
    "accepted", "sim_ms", "events", "wall_s",
)

for _name in SCENARIOS:
    register(_name, partial(simulate_seed, scenario=_name), nodes=1000, figures=SIMULATE_FIGURES,
             check=_check_simulate(_name), about=f"grapevine simulate --scenario {_name}")
register("chaos", chaos_seed, nodes=ChaosParams.__dataclass_fields__["nodes"].default, figures=CHAOS_FIGURES,
         check=_check_chaos, totals=chaos_totals,
         about="every fault at once, then a heal that must converge (simulation/chaos.py)")


def rollout_seed(seed: int, nodes: int, **opts: Any) -> dict[str, Any]:
    """One seed of the staged-rollout scenario (simulation/rollout.py); ``-o bad_fraction=F``."""
    from .rollout import run_rollout

    return run_rollout(nodes, seed, **opts)


register("rollout", rollout_seed, nodes=1000,
         figures=("ever_applied", "reverted", "final_applied", "rollout_ms", "bytes_per_node", "wall_s"),
         about="a staged rollout with health gates (simulation/rollout.py); -o bad_fraction=F")
