"""The staged-rollout scenario: the real rollout machines on a fleet of simulated gossip nodes.

``run_rollout(nodes, seed, bad_fraction=F, **opts)`` builds a fleet of real
``GossipNode`` cores (the opening of every scenario: boot storm, warm-up,
idle window), then:

1. plain inject: the driver's node injects version 1 of ``bundle/web/site``
   without a plan; every node applies it on arrival. Its traffic window is
   the comparison, and it is the version every node goes back to;
2. staged rollout: the same node injects version 2, the same files plus a
   signed ``rollout:`` plan (default stages 1%, 10%, 50%, 100%, soak 30 s,
   ``max_failures`` 0, ``on_failure`` rollback), and starts a ``Driver``
   (policy/rollout_machines.py) there. The bundle spreads by gossip as any
   item; each node holds a ``Gate`` for it from the moment it accepts it.
   The driver's stage records are signed items under ``rollout/web/site``
   that spread by gossip too. Gates apply when a record opens their stage,
   check health, revert on failure; their reports go straight to the
   driver's node as simulated direct messages (the daemon's
   ``rollout.report`` route: a node-signed envelope, and a short signed
   answer), through the simulated network;
3. after the rollout ended (complete, or halted and every reverted node
   back), an idle window shows the background cost back to its flat level.

A fraction F of the nodes, chosen by the seed, fail their health check
(F = 1.0: a bad bundle). Applying and reverting take 200-400 ms and a
health check 100-300 ms of simulated time, drawn from a seeded stream.

Signatures: the bundle versions and every stage record are signed with a
real Ed25519 key (derived from the seed, so runs repeat exactly), once, by
the driver's node, as the daemon does; the items travel with their real
signatures and sizes. Nodes do not re-verify them (the simulated cores run
without the admission validator, as in every scenario); a record's payload
is decoded once per version and shared. Report sizes are those of the
daemon's envelope (sender, node key, destination, body, signature); the
node keys are not modelled, the signature bytes are counted.

The report document has the usual ``simulate --json`` fields (for the
staged bundle's dissemination and the rollout's traffic window) plus
``ever_applied``, ``reverted``, ``final_applied``, ``halted``, ``rollout_ms``
and ``stages``, and ``plain``: the same figures of the plain inject.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from grapevine.gossip.errors import ConfigError, PolicyError
from grapevine.gossip.item import SignedItem, Version
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.rollout import DEFAULT_STAGES, RolloutPlan
from grapevine.policy.rollout_machines import DriverConfig

from .engine import derive_seed
from .metrics import peak_rss_mb
from .observers import LivenessFailure, SafetyViolation, failure_report
from .rollout_shell import BUNDLE, RECORD_KEY, RolloutModel, RolloutObserver, RolloutShell
from .runner import SimParams
from .scenarios import TAIL_MS, ScenarioRun

log = logging.getLogger("grapevine.sim")

PLAIN_GAP_MS = 2_000  # quiet time between the plain inject's tail and the staged one
# Messages that carry, announce, repair or report items: what an inject or a rollout adds. The rest
# (membership probes and shuffles, the periodic anti-entropy digests) runs the same with or without it.
ITEM_TRAFFIC = ("Push", "IHave", "Graft", "Prune", "SyncKeys", "SyncLeaves", "SyncItems", "ReportMsg", "ReportAck")
FILE_NAME = "site.conf"


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutParams:
    """Everything that determines a rollout run (equal params give an equal document)."""

    nodes: int
    seed: int
    bad_fraction: float = 0.0  # share of nodes whose health check fails; 1.0: a bad bundle
    stages: tuple[str | int, ...] = DEFAULT_STAGES
    soak_ms: int = 30_000
    max_failures: str | int = 0
    on_failure: str = "rollback"
    apply_ms: tuple[int, int] = (200, 400)  # converge of a version (also a revert), uniform in [lo, hi]
    health_ms: tuple[int, int] = (100, 300)  # one health check
    report_timeout_ms: int = 30_000  # a silent stage member counts as failed after this
    payload_bytes: int = 2048
    latency_ms: float = 3.0
    join_window_ms: int | None = None
    settle_ms: int = 5_000
    idle_ms: int = 10_000  # idle window before, and again after the rollout
    budget_ms: int = 60_000  # the warm-up and plain inject, and each stage beyond its soak
    keep_frozen: bool = False  # leave the fleet frozen at the end (a process that exits next)
    plan: RolloutPlan = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ConfigError(f"--bad-fraction must be in [0, 1], got {self.bad_fraction}")
        for name in ("apply_ms", "health_ms"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"{name} must be a range 1 <= lo <= hi, got {lo}..{hi}")
        if self.report_timeout_ms < 1:
            raise ConfigError("report_timeout_ms must be positive")
        try:
            plan = RolloutPlan.from_document({"stages": list(self.stages), "soak": f"{self.soak_ms}ms",
                                              "max_failures": self.max_failures, "on_failure": self.on_failure,
                                              "health": {"command": ["/usr/local/bin/site-health"], "timeout": "5s"}},
                                             "simulate rollout")
        except PolicyError as exc:  # an operator's argument: a usage error (exit 2), as the other settings
            raise ConfigError(str(exc)) from None
        object.__setattr__(self, "plan", plan)
        self.sim_params()  # node count, seed, phases: the usual checks

    def sim_params(self) -> SimParams:
        # The opening (boot storm, warm-up, idle) is the inject scenario's.
        return SimParams(nodes=self.nodes, seed=self.seed, scenario="inject", payload_bytes=self.payload_bytes,
                         latency_ms=self.latency_ms, join_window_ms=self.join_window_ms, settle_ms=self.settle_ms,
                         idle_ms=self.idle_ms, budget_ms=self.budget_ms)

    def reproduce(self) -> str:
        parts = [f"grapevine simulate --scenario rollout --nodes {self.nodes} --seed {self.seed}",
                 f"--bad-fraction {self.bad_fraction:g}"]
        for name, default in (("soak_ms", 30_000), ("settle_ms", 5_000), ("idle_ms", 10_000),
                              ("join_window_ms", None), ("max_failures", 0), ("on_failure", "rollback")):
            value = getattr(self, name)
            if value != default:
                parts.append(f"--{name.replace('_', '-')} {value}")
        if tuple(self.stages) != DEFAULT_STAGES:
            parts.append(f"--stages {','.join(map(str, self.stages))}")
        return " ".join(parts)


def item_bytes(by_type: dict[str, list[int]], nodes: int) -> float:
    """Bytes per node of the messages that carry, announce, repair or report items (``ITEM_TRAFFIC``)."""
    return round(sum(b for name, (_, b) in by_type.items() if name in ITEM_TRAFFIC) / max(1, nodes), 1)


class RolloutRun:
    """One rollout scenario: the opening, the plain inject, the staged rollout, the idle after."""

    def __init__(self, p: RolloutParams) -> None:
        self.p = p
        sp = p.sim_params()
        pick = random.Random(derive_seed(p.seed, "rollout/driver"))
        self.driver_id = f"n{pick.randrange(p.nodes)}"
        from grapevine.gossip.config import GossipConfig

        self.model = RolloutModel(GossipConfig.for_fleet(p.nodes), driver_id=self.driver_id)
        self.scenario = ScenarioRun(sp, "plumtree", model=self.model)
        sim = self.scenario.sim
        # The engine takes its observer at construction and ScenarioRun builds the engine: swap in
        # the rollout's observer before anything ran (it only adds the gates' hook to Observer).
        self.observer = RolloutObserver(self.model)
        sim.observer = self.scenario.observer = self.observer
        self.sim = sim
        self.key = SigningKey(derive_seed(p.seed, "rollout/key").to_bytes(8, "big") * 4)
        bad_rng = random.Random(derive_seed(p.seed, "rollout/bad"))
        count = round(p.bad_fraction * p.nodes)
        self.bad = {f"n{i}" for i in bad_rng.sample(range(p.nodes), count)}
        self.files = {FILE_NAME: random.Random(derive_seed(p.seed, "rollout/files")).randbytes(p.payload_bytes)}
        self.doc: dict[str, Any] = {}

    def _bundle(self, plan: RolloutPlan | None, counter: int) -> SignedItem:
        bundle = Bundle(name=BUNDLE, resources=({"file": "/etc/site.conf", "source": FILE_NAME},), files=self.files,
                        rollout=plan)
        return pack(bundle, self.key, self.sim.now, counter)

    # -- phases ----------------------------------------------------------------------
    def plain_inject(self) -> SignedItem:
        run, sim = self.scenario, self.sim
        run.enter("measure")
        host = sim.by_id[self.driver_id]
        item = self._bundle(None, 0)
        t0 = sim.now
        tr = self.observer.track(item.key, item.version, t0, "plain inject")
        run.recorder.mark("plain", t0)
        sim.publish(host, item)
        converged = run.converge([tr], self.p.budget_ms)
        if not converged:
            raise LivenessFailure(f"the plain inject reached {tr.live_holders} of {sim.live} live nodes "
                                  f"within {self.p.budget_ms} ms")
        sim.run_for(TAIL_MS)
        window = run.recorder.since("plain", sim.now)
        plain = {"version": str(item.version), **run.figures([tr], t0), **window.per_node(sim.live),
                 "item_bytes_per_node": item_bytes(window.by_type, sim.live),
                 "ever_applied": tr.live_holders, "bad_nodes_that_would_run_it": len(self.bad),
                 "window_ms": window.duration_ms, "traffic_by_type": window.by_type}
        self.doc["plain"] = plain
        sim.run_for(PLAIN_GAP_MS)
        return item

    def staged(self, previous: SignedItem) -> RolloutShell:
        run, sim, p = self.scenario, self.sim, self.p
        item = self._bundle(p.plan, 0)
        if item.version <= previous.version:  # the same millisecond: stamp after the plain one
            item = self._bundle(p.plan, previous.version.counter + 1)
        shell = RolloutShell(sim, self.observer, key=self.key, driver_id=self.driver_id, bundle_item=item,
                             plan=p.plan, previous=previous.version, bad=self.bad,
                             timing=random.Random(derive_seed(p.seed, "rollout/timing")), apply_ms=p.apply_ms,
                             health_ms=p.health_ms, config=DriverConfig(report_timeout_ms=p.report_timeout_ms))
        self.model.inbox = shell.on_report
        self.observer.hook = shell.on_accept
        t0 = sim.now
        tr = self.observer.track(item.key, item.version, t0, "staged bundle")
        run.recorder.mark("rollout", t0)
        shell.start([h.node_id for h in sim.hosts if h.alive])
        budget = len(p.plan.stages) * (p.plan.soak_ms + p.budget_ms) + p.budget_ms
        if not sim.run(t0 + budget, stop=shell.settled):
            raise LivenessFailure(f"the rollout did not settle within {budget} ms: driver {shell.driver.state}, "
                                  f"stage {shell.driver.stage}, {shell.busy} node actions pending, "
                                  f"{shell.final_holders} of {sim.live} nodes hold its last record")
        settled_ms = sim.now - t0
        sim.run_for(TAIL_MS)
        window = run.recorder.since("rollout", sim.now)
        d = self.doc
        d.update(run.figures([tr], t0))
        d.update(window.per_node(sim.live))
        idle = d.get("idle_bytes_per_node_per_s") or 0.0
        d["window_ms"] = window.duration_ms
        d["added_bytes_per_node"] = round(d["bytes_per_node"] - idle * window.duration_ms / 1000, 1)
        d["item_bytes_per_node"] = item_bytes(window.by_type, sim.live)
        d["traffic_by_type"] = window.by_type
        d.update(shell.figures(t0))
        d["settled_ms"] = settled_ms
        return shell

    def idle_after(self) -> None:
        run, sim = self.scenario, self.sim
        run.recorder.mark("after", sim.now)
        sim.run_for(self.p.idle_ms)
        rate = run.recorder.since("after", sim.now).rate_per_node(sim.live)
        self.doc["idle_bytes_per_node_per_s_after"] = rate["idle_bytes_per_node_per_s"]
        self.doc["idle_messages_per_node_per_s_after"] = rate["idle_messages_per_node_per_s"]

    def execute(self) -> None:
        run = self.scenario
        run.bootstrap()
        run.warm_up()
        run.idle()
        self.doc.update({k: v for k, v in run.doc.items() if k.startswith("idle_") or k in ("bootstrap", "warm_up_ms")})
        previous = self.plain_inject()
        self.staged(previous)
        self.idle_after()
        run.enter("checks")
        self.observer.audit(self.sim, "at the end of the run")
        mismatch = self.observer.store_digest_mismatch(self.sim)
        run.close_phase()
        if mismatch is not None:
            raise LivenessFailure(f"after the rollout {mismatch}")


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def run_rollout(nodes: int, seed: int, bad_fraction: float = 0.0, **opts: Any) -> dict[str, Any]:
    """Run the rollout scenario; the ``simulate --scenario rollout --json`` document.

    ``opts`` are ``RolloutParams`` fields (stages, soak_ms, max_failures, on_failure, apply_ms,
    health_ms, payload_bytes, settle_ms, idle_ms, ...). A safety violation or a liveness failure
    ends the run; the document then says which (``ok`` false) and how to reproduce it.
    """
    started = time.perf_counter()
    p = RolloutParams(nodes=nodes, seed=seed, bad_fraction=bad_fraction, **opts)
    r = RolloutRun(p)
    doc = r.doc
    was_enabled = gc.isenabled()
    gc.disable()  # as the runner does: a fleet is long-lived objects and almost no cycles
    failure = None
    try:
        r.execute()
    except SafetyViolation as exc:
        failure = "safety"
        doc["safety_violation"] = {"node": exc.node, "time_ms": exc.time_ms, "message": str(exc)}
        doc["failure_report"] = failure_report("safety", f"at {exc.node}, t={exc.time_ms} ms: {exc}", p.reproduce())
    except LivenessFailure as exc:
        failure = "liveness"
        doc["liveness_failure"] = str(exc)
        doc["failure_report"] = failure_report("liveness", str(exc), p.reproduce())
    finally:
        if p.keep_frozen:
            gc.freeze()
        else:
            gc.unfreeze()
        if was_enabled:
            gc.enable()
    r.scenario.close_phase()
    plain = doc.get("plain") or {}
    for key in ("converged_fraction", "convergence_ms", "max_hops", "messages_per_node", "bytes_per_node",
                "payload_copies_per_node", "idle_bytes_per_node_per_s", "ever_applied", "reverted", "final_applied",
                "halted", "rollout_ms", "stages", "safety_violation", "liveness_failure"):
        doc.setdefault(key, None)
    doc.update(nodes=nodes, seed=seed, scenario="rollout", protocol="plumtree", bad_fraction=bad_fraction,
               bad_nodes=len(r.bad), driver=r.driver_id, plan=p.plan.to_document(),
               timing={"apply_ms": list(p.apply_ms), "health_ms": list(p.health_ms),
                       "latency_median_ms": p.latency_ms, "report_timeout_ms": p.report_timeout_ms},
               signatures="real Ed25519: bundle versions and stage records signed once by the driver's node; "
                          "reports sized as node-signed envelopes; nodes do not re-verify",
               bytes_ratio=_ratio(doc.get("bytes_per_node"), plain.get("bytes_per_node")),
               added_bytes_ratio=_ratio(doc.get("added_bytes_per_node"), plain.get("bytes_per_node")),
               item_bytes_ratio=_ratio(doc.get("item_bytes_per_node"), plain.get("item_bytes_per_node")),
               idle_ratio_after=_ratio(doc.get("idle_bytes_per_node_per_s_after"),
                                       doc.get("idle_bytes_per_node_per_s")),
               phases=r.scenario.doc.get("phases"), sim_ms=r.sim.now, events=r.sim.events,
               refusals=dict(sorted(r.observer.refused.items())), reproduce=p.reproduce())
    doc["ok"] = failure is None and doc.get("converged_fraction") == 1.0
    doc["wall_s"] = round(time.perf_counter() - started, 3)
    doc["peak_rss_mb"] = peak_rss_mb()
    log.info("[rollout] %s: ever applied %s, final %s, %.1f s wall", "ok" if doc["ok"] else "FAILED",
             doc["ever_applied"], doc["final_applied"], doc["wall_s"])
    return doc
