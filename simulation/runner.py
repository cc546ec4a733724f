"""One simulation invocation: parameters in, a result document out.

``simulate(params)`` runs the chosen scenario on the gossip core, on the
push-gossip baseline, or on both one after the other (same seed, same
fleet size, same network model), and returns a ``Result`` whose ``doc`` is
what ``grapevine simulate --json`` prints. A safety violation or a liveness
failure ends that protocol's run; the document then says which, and gives
the command that replays the run exactly.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from grapevine.gossip.errors import ConfigError

from .metrics import peak_rss_mb
from .observers import LivenessFailure, SafetyViolation, failure_report
from .scenarios import DEFAULT_LOSS, SCENARIOS, ScenarioRun

log = logging.getLogger("grapevine.sim")

PROTOCOLS = ("plumtree", "baseline", "both")
MAX_NODES = 1_000_000  # one process; far beyond what fits in memory anyway
MAX_ITEMS = 100_000  # preloaded items are copied into every node's store
# From this fleet size on, ``simulate`` leaves its last fleet in the frozen
# generation instead of handing it back to the collector: walking and freeing
# its objects one by one costs seconds (about 6 s of 100 s at 100,000 nodes),
# and the command that asked is about to exit. Smaller fleets are collected.
KEEP_FROZEN_NODES = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class SimParams:
    """Everything that determines a run. Equal params give an equal result."""

    nodes: int
    seed: int
    scenario: str
    protocol: str = "plumtree"
    items: int = 10  # items preloaded in every store (idle cost must not depend on it)
    payload_bytes: int = 2048  # size of a bundle's payload
    loss: float | None = None  # None: the scenario's default (5 % for loss, else 0)
    duplicate: float = 0.0
    reorder: float = 0.0
    latency_ms: float = 3.0  # median one-way latency
    join_window_ms: int | None = None  # joins spread over this; None: 1 ms per node within 1-10 s
    settle_ms: int = 5_000  # after the last join, before the warm-up
    idle_ms: int = 10_000  # the idle window that measures background cost
    partition_ms: int = 20_000  # how long the cut lasts before each side publishes
    budget_ms: int = 60_000  # simulated time a converging phase may take

    def __post_init__(self) -> None:
        if not 2 <= self.nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be between 2 and {MAX_NODES}, got {self.nodes}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"--scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not 0 <= self.items <= MAX_ITEMS:
            raise ConfigError(f"--items must be between 0 and {MAX_ITEMS}, got {self.items}")
        if not 1 <= self.payload_bytes <= 1024 * 1024:
            raise ConfigError(f"--payload-bytes must be between 1 and 1048576, got {self.payload_bytes}")
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"--{name} must be a probability in [0, 1), got {value}")
        if self.latency_ms <= 0:
            raise ConfigError(f"--latency-ms must be positive, got {self.latency_ms}")
        if self.join_window_ms is not None and self.join_window_ms < 1:
            raise ConfigError(f"--join-window-ms must be positive, got {self.join_window_ms}")
        for name in ("settle_ms", "idle_ms", "partition_ms", "budget_ms"):
            if getattr(self, name) < (1 if name == "budget_ms" else 0):
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")

    def reproduce(self, protocol: str | None = None) -> str:
        """The command line that replays this run exactly."""
        parts = [f"grapevine simulate --nodes {self.nodes} --seed {self.seed} --scenario {self.scenario}"]
        parts.append(f"--protocol {protocol or self.protocol}")
        for f in fields(self):
            if f.name in ("nodes", "seed", "scenario", "protocol"):
                continue
            value = getattr(self, f.name)
            if value != f.default:
                parts.append(f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)

    @property
    def effective_loss(self) -> float:
        if self.loss is not None:
            return self.loss
        return DEFAULT_LOSS if self.scenario == "loss" else 0.0

    def describe(self) -> dict[str, Any]:
        """Seed and every fault setting, as printed before the run starts."""
        return {
            "seed": self.seed,
            "nodes": self.nodes,
            "scenario": self.scenario,
            "protocol": self.protocol,
            "items": self.items,
            "payload_bytes": self.payload_bytes,
            "latency_median_ms": self.latency_ms,
            "loss": self.effective_loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "faults_during": "the measured phase",
        }


@dataclass(slots=True)
class ProtocolResult:
    """One protocol's run: its document, its curves and whether it failed."""

    protocol: str
    doc: dict[str, Any]
    curves: dict[str, list[int]] = field(default_factory=dict)
    live_nodes: int = 0
    marks: dict[str, int] = field(default_factory=dict)
    failure: str | None = None  # "safety" or "liveness"
    report: str | None = None  # the printed failure lines, reproduce command included

    @property
    def ok(self) -> bool:
        return self.failure is None and self.doc.get("converged_fraction") == 1.0


@dataclass(slots=True)
class Result:
    doc: dict[str, Any]
    runs: list[ProtocolResult]

    @property
    def ok(self) -> bool:
        """The run passed: no invariant failed anywhere and the measured protocol converged."""
        if any(r.failure == "safety" for r in self.runs):
            return False
        return self.runs[0].ok


ProgressFn = Callable[[str, str, int, int, int], None]


def run_protocol(
    params: SimParams,
    protocol: str,
    *,
    progress: ProgressFn | None = None,
    prepare: Callable[[ScenarioRun], None] | None = None,
    keep_frozen: bool = False,
) -> ProtocolResult:
    """Run the scenario on one protocol. ``prepare`` may add phase hooks (tests).

    ``keep_frozen``: leave every object of the run in the frozen generation
    afterwards (never collected: for a process that exits next).
    """
    started = time.perf_counter()
    run = ScenarioRun(params, protocol, progress=progress)
    if prepare is not None:
        prepare(run)
    failure = report = None
    doc = run.doc
    # A fleet is millions of long-lived objects and almost no reference
    # cycles: what a run throws away is freed by reference counting, and even
    # young-generation collections (a few percent of a large run) would only
    # rescan the objects just created. The scenario collects once, when the
    # fleet is built.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        run.execute()
    except SafetyViolation as exc:
        failure = "safety"
        doc["safety_violation"] = {"node": exc.node, "time_ms": exc.time_ms, "message": str(exc)}
        report = failure_report("safety", f"at {exc.node}, t={exc.time_ms} ms: {exc}", params.reproduce(protocol))
    except LivenessFailure as exc:
        failure = "liveness"
        doc["liveness_failure"] = str(exc)
        report = failure_report("liveness", str(exc), params.reproduce(protocol))
    finally:
        if keep_frozen:
            gc.freeze()
        else:
            gc.unfreeze()
        if was_enabled:
            gc.enable()
    run.close_phase()  # a failed phase still reports its cost
    sim = run.sim
    doc.setdefault("converged_fraction", 0.0)
    doc.setdefault("convergence_ms", {"p50": None, "p90": None, "p99": None, "max": None})
    for key in ("max_hops", "messages_per_node", "bytes_per_node", "payload_copies_per_node",
                "idle_bytes_per_node_per_s"):
        doc.setdefault(key, None)
    if params.scenario == "partition":
        doc.setdefault("heal_ms", None)
    doc.setdefault("safety_violation", None)
    doc.setdefault("liveness_failure", None)
    doc["protocol"] = protocol
    doc["sim_ms"] = sim.now
    doc["events"] = sim.events
    doc["refusals"] = dict(sorted(run.observer.refused.items()))
    doc["reproduce"] = params.reproduce(protocol)
    doc["wall_s"] = round(time.perf_counter() - started, 3)
    doc["peak_rss_mb"] = peak_rss_mb()
    live = doc.get("live_nodes") or sim.live
    result = ProtocolResult(protocol, doc, run.curves, live, dict(run.marks), failure, report)
    doc["ok"] = result.ok
    log.info("[%s] done: converged %.4f, %d events, %.1f s wall", protocol, doc["converged_fraction"],
             sim.events, doc["wall_s"])
    return result


def simulate(params: SimParams, *, progress: ProgressFn | None = None) -> Result:
    """Run the scenario on the protocol(s) named by ``params.protocol``.

    The last fleet of a large run is left frozen (``KEEP_FROZEN_NODES``):
    meant for the command line, whose process ends right after.
    """
    started = time.perf_counter()
    order = ["plumtree", "baseline"] if params.protocol == "both" else [params.protocol]
    large = params.nodes >= KEEP_FROZEN_NODES
    runs = [
        run_protocol(params, proto, progress=progress, keep_frozen=large and i == len(order) - 1)
        for i, proto in enumerate(order)
    ]
    doc = dict(runs[0].doc)
    doc.update(nodes=params.nodes, seed=params.seed, scenario=params.scenario, items=params.items,
               payload_bytes=params.payload_bytes, faults=params.describe())
    if len(runs) > 1:
        doc["baseline"] = runs[1].doc
    doc["reproduce"] = params.reproduce()
    doc["wall_s"] = round(time.perf_counter() - started, 3)
    doc["peak_rss_mb"] = peak_rss_mb()
    result = Result(doc, runs)
    doc["ok"] = result.ok
    return result
