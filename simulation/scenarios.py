"""Scenarios: bootstrap a fleet, settle it, warm it up, then measure.

Every scenario runs the same opening, through the real protocol:

1. bootstrap: node n0 starts alone; every other node joins through a few
   random nodes that already joined, at random instants spread over a short
   window (a fleet boot storm), then the overlay settles;
2. warm-up: one item is published at a random node and must reach every
   node, so the broadcast tree has formed before anything is measured;
3. idle: nothing is published for ``idle_ms``; the bytes sent in that window
   give ``idle_bytes_per_node_per_s``;
4. the scenario itself:

   - inject: one new item at a random node; per-node time to hold it, hops,
     and messages / bytes / payload copies per node while it spreads;
   - partition: the fleet is cut in two for long enough that each side
     declares the other dead; each side publishes its own item and both
     write the same key; then the cut heals and ``heal_ms`` runs from the
     heal until every live node holds the same store;
   - churn: while an item spreads, 10 % of the nodes crash (half of them
     restart a few seconds later with their store) and 10 % new nodes join;
   - loss: while an item spreads, 5 % of all messages are dropped.

A phase that must converge runs until it has (every live node holds the
tracked items and all live stores are equal) or its budget of simulated time
is spent; running out of budget is a liveness failure.
"""

from __future__ import annotations

import gc
import logging
import random
from typing import TYPE_CHECKING, Any, Callable

from grapevine.gossip.item import SignedItem, Version

from .engine import Host, Model, Simulator, derive_seed
from .metrics import Recorder, summary
from .network import NetConfig
from .observers import LivenessFailure, Tracker

if TYPE_CHECKING:  # pragma: no cover
    from .runner import SimParams

log = logging.getLogger("grapevine.sim")

SCENARIOS = ("inject", "partition", "churn", "loss")
PHASES = ("bootstrap", "warm-up", "idle", "measure", "checks")
JOIN_CONTACTS = 2  # a node is configured with a couple of join addresses
CHURN_FRACTION = 0.10  # share of the fleet that crashes, and share that joins, in churn
CHURN_SPREAD_MS = 300  # crashes and joins land while the broadcast is still spreading
RESTART_AFTER_MS = 5_000  # half of the crashed nodes come back after a few seconds
DEFAULT_LOSS = 0.05  # the loss scenario drops 5 % of messages unless told otherwise
SPLIT_SPREAD_MS = 5_000  # while cut, each side spreads its own items for this long
TAIL_MS = 1_000  # after convergence, keep counting late announcements for one second
PRELOAD_WALL_MS = 1  # preloaded items carry an old stamp: they predate the run


def join_window_ms(nodes: int) -> int:
    """Joins spread over about 1 ms per node, between 1 s and 10 s."""
    return max(1_000, min(10_000, nodes))


def make_model(protocol: str, nodes: int) -> Model:
    if protocol == "baseline":
        from .baseline import BaselineModel

        return BaselineModel()
    from grapevine.gossip.config import GossipConfig

    from .plumtree import PlumtreeModel

    return PlumtreeModel(GossipConfig.for_fleet(nodes))


class ScenarioRun:
    """One scenario on one protocol: builds the fleet, runs the phases, reports."""

    def __init__(
        self,
        params: SimParams,
        protocol: str,
        *,
        model: Model | None = None,
        progress: Callable[[str, str, int, int, int], None] | None = None,
    ) -> None:
        self.p = params
        self.protocol = protocol
        self.model = model or make_model(protocol, params.nodes)
        self._progress = progress
        self.sim = Simulator(
            self.model,
            seed=params.seed,
            net=NetConfig(latency_median_ms=params.latency_ms),
            progress=self._on_progress if progress else None,
        )
        self.observer = self.sim.observer
        self.workload = random.Random(derive_seed(params.seed, "workload"))
        self.churn = random.Random(derive_seed(params.seed, "churn"))
        self.recorder = Recorder(self.sim.network.traffic)
        self.started: list[Host] = []
        self.doc: dict[str, Any] = {}
        self.curves: dict[str, list[int]] = {}
        self.marks: dict[str, int] = {}
        self.phase = PHASES[0]
        self.hooks: dict[str, Callable[[ScenarioRun], None]] = {}  # phase name -> action before it
        self._phase_start: tuple[int, int] | None = None

    # -- helpers -------------------------------------------------------------

    def _on_progress(self, sim: Simulator) -> None:
        assert self._progress is not None
        self._progress(self.protocol, self.phase, PHASES.index(self.phase), len(PHASES), sim.now)

    def enter(self, phase: str) -> None:
        self.close_phase()
        self._phase_start = (self.sim.now, self.sim.events)
        self.phase = phase
        log.info("[%s] phase %s at t=%d ms (%d live)", self.protocol, phase, self.sim.now, self.sim.live)
        if self._progress:
            self._progress(self.protocol, phase, PHASES.index(phase), len(PHASES), self.sim.now)
        hook = self.hooks.get(phase)
        if hook is not None:
            hook(self)

    def close_phase(self) -> None:
        """Record the simulated time and events the current phase took."""
        if self._phase_start is None:
            return
        t0, e0 = self._phase_start
        phases = self.doc.setdefault("phases", {})
        phases[self.phase] = {"sim_ms": self.sim.now - t0, "events": self.sim.events - e0}
        self._phase_start = None

    def new_item(self, key: str, author: str) -> SignedItem:
        return SignedItem(
            key=key,
            version=Version(self.sim.now, 0, author),
            payload=self.workload.randbytes(self.p.payload_bytes),
        )

    def random_live(self, *, side: int | None = None, exclude: Host | None = None) -> Host:
        net = self.sim.network
        pool = [
            h for h in self.sim.hosts
            if h.alive and h is not exclude and (side is None or net.side_of(h.idx) == side)
        ]
        return pool[self.workload.randrange(len(pool))]

    def _contacts(self, rng: random.Random) -> list[str]:
        picked: list[str] = []
        started = self.started
        for _ in range(8 * JOIN_CONTACTS):  # bounded: a few dead picks are skipped
            if len(picked) >= JOIN_CONTACTS or not started:
                break
            h = started[rng.randrange(len(started))]
            if h.alive and h.node_id not in picked:
                picked.append(h.node_id)
        return picked

    def _join(self, host: Host, rng: random.Random) -> None:
        self.sim.start(host, self._contacts(rng))
        self.started.append(host)

    def _restart(self, host: Host) -> None:
        if not host.alive:
            self.sim.restart(host, self._contacts(self.churn))

    def converge(self, trackers: list[Tracker], budget_ms: int, *, after: int = 0) -> bool:
        """Run until every live node holds the trackers' items and all stores match."""
        sim = self.sim
        obs = self.observer

        def done() -> bool:
            if sim.now < after:
                return False
            live = sim.live
            for tr in trackers:
                if tr.live_holders < live:
                    return False
            return obs.stores_equal()

        return sim.run(sim.now + budget_ms, stop=done)

    def figures(self, trackers: list[Tracker], t_ref: int) -> dict[str, Any]:
        """Share of live nodes holding every tracked item, and how long it took."""
        times: list[int] = []
        hops = 0
        live = 0
        for h in self.sim.hosts:
            if not h.alive:
                continue
            live += 1
            worst = 0
            for tr in trackers:
                t = tr.times.get(h.idx)
                if t is None:
                    break
                worst = max(worst, t - t_ref)
                hops = max(hops, tr.hops.get(h.idx, 0))
            else:
                times.append(worst)
        return {
            "live_nodes": live,
            "converged_fraction": round(len(times) / live, 6) if live else 0.0,
            "convergence_ms": summary(times),
            "max_hops": hops,
        }

    # -- the opening -----------------------------------------------------------

    def bootstrap(self) -> None:
        self.enter("bootstrap")
        sim = self.sim
        p = self.p
        preload = [
            SignedItem(key=f"bundle/preload/{i:05d}", version=Version(PRELOAD_WALL_MS, 0, "preload"),
                       payload=self.workload.randbytes(p.payload_bytes))
            for i in range(p.items)
        ]
        self.observer.preload(preload)
        hosts = [sim.add_host(store=self.model.new_store(preload)) for _ in range(p.nodes)]
        sim.start(hosts[0])
        self.started.append(hosts[0])
        window = p.join_window_ms or join_window_ms(p.nodes)
        rng = random.Random(derive_seed(p.seed, "bootstrap"))
        for host in hosts[1:]:
            sim.call_at(1 + rng.randrange(window), self._join, host, rng)
        sim.run(window + p.settle_ms)
        gc.collect()
        gc.freeze()  # the fleet is built: keep its objects out of later collections
        views = [len(h.core.active_view) for h in hosts if hasattr(h.core, "active_view")]
        self.doc["bootstrap"] = {
            "join_window_ms": window,
            "settle_ms": p.settle_ms,
            "isolated_nodes": sum(1 for v in views if v == 0),
            "active_view_mean": round(sum(views) / len(views), 3) if views else None,
        }

    def warm_up(self) -> None:
        self.enter("warm-up")
        sim = self.sim
        origin = self.random_live()
        item = self.new_item("bundle/warm-up", f"author-{origin.node_id}")
        t0 = sim.now
        tr = self.observer.track(item.key, item.version, t0, "warm-up")
        sim.publish(origin, item)
        if not self.converge([tr], self.p.budget_ms):
            raise LivenessFailure(
                f"warm-up broadcast reached {tr.live_holders} of {sim.live} live nodes "
                f"within {self.p.budget_ms} ms (stores agree: {self.observer.stores_equal()})"
            )
        self.doc["warm_up_ms"] = sim.now - t0

    def idle(self) -> None:
        self.enter("idle")
        sim = self.sim
        self.recorder.mark("idle", sim.now)
        sim.run_for(self.p.idle_ms)
        window = self.recorder.since("idle", sim.now)
        self.doc.update(window.rate_per_node(sim.live))
        self.doc["idle_traffic_by_type"] = window.by_type

    # -- the scenarios ------------------------------------------------------------

    def _measure_broadcast(self, label: str, *, churn: bool = False) -> None:
        sim = self.sim
        origin = self.random_live()
        item = self.new_item(f"bundle/{label}", f"author-{origin.node_id}")
        t0 = sim.now
        self.marks["publish"] = t0
        tr = self.observer.track(item.key, item.version, t0, label)
        after = t0
        if churn:
            after = self._schedule_churn(origin, t0)
        self.recorder.mark("measure", t0)
        sim.publish(origin, item)
        converged = self.converge([tr], self.p.budget_ms + (after - t0), after=after)
        self._finish_measure([tr], t0, converged, "the new item")

    def _finish_measure(self, trackers: list[Tracker], t_ref: int, converged: bool, what: str,
                        *, curve_origin: int | None = None) -> None:
        sim = self.sim
        self.doc["measured_until_ms"] = sim.now - t_ref
        if converged:
            sim.run_for(TAIL_MS)
        window = self.recorder.since("measure", sim.now)
        self.doc.update(self.figures(trackers, t_ref))
        self.doc.update(window.per_node(sim.live))
        self.doc["traffic_by_type"] = window.by_type
        self.doc["lost_messages"] = window.lost
        self.doc["failed_sends"] = window.failed
        origin = t_ref if curve_origin is None else curve_origin
        for tr in trackers:
            hosts = sim.hosts
            self.curves[tr.label] = sorted(t - origin for i, t in tr.times.items() if hosts[i].alive)
        if not converged:
            raise LivenessFailure(
                f"{what} reached {min(t.live_holders for t in trackers)} of {sim.live} live nodes and "
                f"{self.observer.fingerprint_groups()} distinct store contents remain after "
                f"{sim.now - t_ref} ms of simulated time"
            )

    def measure_inject(self) -> None:
        self._measure_broadcast("inject")

    def measure_loss(self) -> None:
        self._measure_broadcast("loss")

    def measure_churn(self) -> None:
        self._measure_broadcast("churn", churn=True)

    def _schedule_churn(self, origin: Host, t0: int) -> int:
        """Crash 10 %, restart half of those later, join 10 % new; return when done."""
        sim = self.sim
        rng = self.churn
        candidates = [h for h in sim.hosts if h.alive and h is not origin]
        count = max(1, round(CHURN_FRACTION * self.p.nodes))
        victims = rng.sample(candidates, min(count, len(candidates)))
        end = t0
        for i, host in enumerate(victims):
            at = t0 + rng.randrange(CHURN_SPREAD_MS)
            sim.call_at(at, sim.crash, host)
            if i % 2 == 0:
                sim.call_at(at + RESTART_AFTER_MS, self._restart, host)
                end = max(end, at + RESTART_AFTER_MS)
            end = max(end, at)
        for _ in range(count):
            host = sim.add_host()  # a fresh machine: empty store
            at = t0 + rng.randrange(CHURN_SPREAD_MS)
            sim.call_at(at, self._join, host, rng)
            end = max(end, at)
        self.doc["churn"] = {"crashed": len(victims), "restarted": (len(victims) + 1) // 2, "joined": count}
        return end

    def measure_partition(self) -> None:
        sim = self.sim
        p = self.p
        net = sim.network
        live = [h for h in sim.hosts if h.alive]
        self.churn.shuffle(live)
        half = len(live) // 2
        net.partition({h.idx: (0 if i < half else 1) for i, h in enumerate(live)})
        sim.run_for(p.partition_ms)
        a = self.random_live(side=0)
        b = self.random_live(side=1)
        t_pub = sim.now
        self.marks["publish"] = t_pub
        item_a = self.new_item("bundle/side-a", f"author-{a.node_id}")
        item_b = self.new_item("bundle/side-b", f"author-{b.node_id}")
        both_a = self.new_item("bundle/both-sides", f"author-{a.node_id}")
        both_b = self.new_item("bundle/both-sides", f"author-{b.node_id}")
        winner = max(both_a.version, both_b.version)
        obs = self.observer
        trackers = [
            obs.track(item_a.key, item_a.version, t_pub, "side A item"),
            obs.track(item_b.key, item_b.version, t_pub, "side B item"),
            obs.track(both_a.key, winner, t_pub, "same key, both sides"),
        ]
        for host, item in ((a, item_a), (b, item_b), (a, both_a), (b, both_b)):
            sim.publish(host, item)
        sim.run_for(SPLIT_SPREAD_MS)
        sides = [sum(1 for h in live if h.alive and net.side_of(h.idx) == s) for s in (0, 1)]
        self.doc["partition"] = {
            "sides": sides,
            "cut_ms": p.partition_ms + SPLIT_SPREAD_MS,
            "side_a_holders_before_heal": trackers[0].live_holders,
            "side_b_holders_before_heal": trackers[1].live_holders,
        }
        t_heal = sim.now
        self.marks["heal"] = t_heal
        self.recorder.mark("measure", t_heal)
        net.heal()
        converged = self.converge(trackers, p.budget_ms)
        self.doc["heal_ms"] = sim.now - t_heal if converged else None
        # Curves are drawn from the publish instant, so the heal shows as a step.
        self._finish_measure(trackers, t_heal, converged, "the healed fleet", curve_origin=t_pub)

    # -- the whole run ------------------------------------------------------------

    def execute(self) -> None:
        """Run every phase; exceptions (safety, liveness) propagate to the runner."""
        self.bootstrap()
        self.warm_up()
        self.idle()
        self.enter("measure")
        p = self.p
        if p.effective_loss or p.duplicate or p.reorder:
            self.sim.network.set_faults(loss=p.effective_loss, duplicate=p.duplicate, reorder=p.reorder)
        getattr(self, f"measure_{self.p.scenario}")()
        self.enter("checks")
        self.observer.audit(self.sim, "at the end of the run")
        mismatch = self.observer.store_digest_mismatch(self.sim)
        self.close_phase()
        if mismatch is not None:
            raise LivenessFailure(f"after the healed phase {mismatch}")
