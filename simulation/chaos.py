"""Chaos runs: the real gossip core under every fault at once, then healed.

One seeded run has three phases:

1. boot: every node starts with its own clock offset (a seeded skew within
   the core's ``max_skew_ms``, so any two clocks differ by less than the
   limit) and joins through a few nodes already up;
2. chaos: for ``chaos_ms`` of simulated time the network loses, duplicates
   and reorders messages; the fleet is cut into two or three sides a few
   times (the last cut holds until the heal); nodes crash (their store stays on disk) and come back, some with a
   new clock offset; waves of concurrent injections write the same keys from
   many nodes at once; items of a marked class (which the validator refuses)
   are published and also pushed by forging nodes straight into the
   broadcast and anti-entropy paths, with stamps from the future among them;
3. heal: the cut heals, the network is clean again, every crashed node but
   the permanently dead restarts; every live node must then hold the same
   store, and that store must hold the newest version of every item any live
   node ever published, within ``budget_ms`` of simulated time.

Safety is checked throughout by the observer (no version goes backwards, no
store rolls back across a restart, one (key, version) has one content
fleet-wide, no honest node admits an item the validator refuses or a stamp
further ahead of its own clock than the limit). Liveness is checked after the
heal. Either failure is reported apart, with the command that replays it.

Every decision comes from a ``random.Random`` derived from the master seed
and a label, so a run is a pure function of its parameters.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field, fields
from typing import Any

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.messages import Push, SyncItems

from .engine import INF, Host, Simulator, derive_seed
from .network import NetConfig
from .observers import LivenessFailure, Observer, SafetyViolation, failure_report
from .plumtree import PlumtreeModel

log = logging.getLogger("grapevine.sim")

# Items whose payload starts with this mark are what the chaos validator
# refuses; ordinary payloads start with OK_MARK, so no random draw collides.
FORBIDDEN_MARK = b"\x00forbidden:"
OK_MARK = b"ok:"
FORBIDDEN_REASON = "Forbidden"
# Wall clocks start near a real epoch so a negative skew never makes a
# clock negative (stamps are non-negative integers).
EPOCH_MS = 1_700_000_000_000
# Any two clocks differ by at most this share of max_skew_ms: skew "within
# limits" means an honest item is never refused as FromTheFuture.
SKEW_SHARE = 0.9
KEY_POOL = 6  # concurrent waves write a few keys over and over: many conflicts per key
JOIN_CONTACTS = 2  # as in the scenarios: a couple of configured join addresses
BOOT_WINDOW_MS = 2_000  # every node starts within 2 s
BOOT_SETTLE_MS = 3_000  # then the overlay settles before the first fault
PAYLOAD_BYTES = 256  # small bundles: the run is about ordering, not bandwidth
CHECK_EVERY_MS = 5_000  # full store audits during the chaos phase
MIN_CUT_MS = 5_000  # a cut outlasts the probe timeout (4 s): each side declares the other dead
RESTART_SHARE = 0.7  # crashed nodes that come back by themselves during the phase...
PERMANENT_SHARE = 0.07  # ...and those that never come back; the rest restart at the heal
RESTART_AFTER_MS = (500, 8_000)  # a process manager restarts a crashed daemon within seconds
WAVE_GAP_MS = (300, 2_500)  # time between two waves of concurrent injections
MAX_WRITERS = 8  # nodes writing one key in the same wave
FORBIDDEN_WAVE_SHARE = 0.3  # waves in which one writer publishes a refused item
FORGERIES = (3, 10)  # forged sends per run
FUTURE_SHARE = 0.4  # forged items stamped beyond the skew limit (the rest carry the refused mark)


def validator(item: SignedItem, current: SignedItem | None, now: int) -> str | None:
    """The chaos fleet's admission rule: refuse the marked class of items."""
    return FORBIDDEN_REASON if item.payload.startswith(FORBIDDEN_MARK) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChaosParams:
    """Everything that determines a chaos run. Equal params give an equal result."""

    seed: int
    nodes: int = 300
    chaos_ms: int = 40_000  # the fault phase
    budget_ms: int = 60_000  # simulated time the healed fleet may take to converge
    max_loss: float = 0.2  # each run draws its loss in [0, max_loss]
    max_duplicate: float = 0.1
    max_reorder: float = 0.2
    crash_share: float = 0.15  # at most this share of the fleet crashes during the phase
    heal_loss: float = 0.0  # loss left on the links after the heal (0: the network is clean)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"--seed must be a non-negative integer, got {self.seed}")
        if not 8 <= self.nodes <= 100_000:
            raise ConfigError(f"--nodes must be between 8 and 100000, got {self.nodes}")
        if self.chaos_ms < 5_000 or self.budget_ms < 1_000:
            raise ConfigError("--chaos-ms must be at least 5000 and --budget-ms at least 1000")
        for name in ("max_loss", "max_duplicate", "max_reorder", "crash_share", "heal_loss"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")

    def reproduce(self) -> str:
        parts = [f"python benchmarks/chaos_sweep.py --seed {self.seed} --nodes {self.nodes}"]
        for f in fields(self):
            if f.name not in ("seed", "nodes") and getattr(self, f.name) != f.default:
                parts.append(f"--{f.name.replace('_', '-')} {getattr(self, f.name)}")
        return " ".join(parts)


class SkewedCore:
    """A GossipNode whose clock reads ``offset`` ms off the simulator's clock."""

    __slots__ = ("core", "offset")

    def __init__(self, core: Any, offset: int) -> None:
        self.core = core
        self.offset = offset

    @property
    def active_view(self) -> list[str]:
        return self.core.active_view

    @property
    def passive_view(self) -> list[str]:
        return self.core.passive_view

    @property
    def store(self) -> Any:
        return self.core.store

    def join(self, contacts: Any, now: int) -> list:
        return self.core.join(contacts, now + self.offset)

    def on_message(self, peer: str, msg: Any, now: int) -> list:
        return self.core.on_message(peer, msg, now + self.offset)

    def on_send_failed(self, peer: str, now: int) -> list:
        return self.core.on_send_failed(peer, now + self.offset)

    def on_tick(self, now: int) -> list:
        return self.core.on_tick(now + self.offset)

    def publish(self, item: SignedItem, now: int) -> list:
        return self.core.publish(item, now + self.offset)

    def next_deadline(self) -> int:
        d = self.core.next_deadline()
        return INF if d >= INF else d - self.offset


class ChaosModel(PlumtreeModel):
    """The real core, with the chaos validator and a seeded clock offset per start."""

    name = "plumtree-chaos"

    def __init__(self, config: GossipConfig, seed: int, skew_spread_ms: int, reskew: float,
                 lax: frozenset[str] = frozenset()) -> None:
        super().__init__(config, validator=validator)
        self.lax = lax  # nodes built without the validator (tests prove the observer catches them)
        self.seed = seed
        self.spread = skew_spread_ms
        self.reskew = reskew  # chance that a restarted node comes back with a new offset
        self.offsets: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.reskewed = 0

    def make_node(self, node_id: str, *, rng: random.Random, store: Any) -> Any:
        n = self.starts.get(node_id, 0) + 1
        self.starts[node_id] = n
        r = random.Random(derive_seed(self.seed, f"clock/{node_id}/{n}"))
        if node_id not in self.offsets or r.random() < self.reskew:
            if node_id in self.offsets:
                self.reskewed += 1
            self.offsets[node_id] = r.randrange(self.spread + 1) - self.spread // 2
        check = None if node_id in self.lax else self.validator
        core = self._node_cls(node_id, config=self.config, rng=rng, validator=check, store=store)
        return SkewedCore(core, EPOCH_MS + self.offsets[node_id])


class ChaosObserver(Observer):
    """The base safety checks plus admission: nothing refused ever gets in."""

    def __init__(self, model: ChaosModel) -> None:
        super().__init__(model)
        self.max_skew = model.config.max_skew_ms
        self.published: dict[int, dict[str, Version]] = {}  # host idx -> key -> newest it published

    def on_accept(self, sim: Simulator, host: Host, effect: Any, now: int) -> None:
        super().on_accept(sim, host, effect, now)
        item = effect.item
        local = now + host.core.offset
        reason = validator(item, None, local)
        if reason is not None:
            raise self._violation(
                sim, host, f"admitted {item.key!r} {tuple(item.version)} that the validator refuses ({reason})"
            )
        if item.version.wall_ms > local + self.max_skew:
            raise self._violation(
                sim, host,
                f"admitted {item.key!r} stamped {item.version.wall_ms - local} ms ahead of its clock "
                f"(limit {self.max_skew} ms)",
            )
        if effect.source is None:
            mine = self.published.setdefault(host.idx, {})
            if item.key not in mine or mine[item.key] < item.version:
                mine[item.key] = item.version


@dataclass(slots=True)
class ChaosResult:
    params: ChaosParams
    doc: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # "safety" or "liveness"
    report: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


class ChaosRun:
    """One seeded chaos run: builds the fleet, plans the faults, checks the invariants."""

    def __init__(self, params: ChaosParams, *, lax: tuple[str, ...] = ()) -> None:
        self.p = params
        seed = params.seed
        plan = random.Random(derive_seed(seed, "chaos/plan"))
        self.config = GossipConfig.for_fleet(params.nodes)
        self.loss = round(plan.uniform(0.0, params.max_loss), 4)
        self.duplicate = round(plan.uniform(0.0, params.max_duplicate), 4)
        self.reorder = round(plan.uniform(0.0, params.max_reorder), 4)
        self.skew_spread = int(plan.uniform(0.3, 1.0) * SKEW_SHARE * self.config.max_skew_ms)
        self.model = ChaosModel(self.config, seed, self.skew_spread, reskew=0.5, lax=frozenset(lax))
        self.observer = ChaosObserver(self.model)
        self.sim = Simulator(self.model, seed=seed, net=NetConfig(), observer=self.observer)
        self.plan = plan
        self.faults = random.Random(derive_seed(seed, "chaos/faults"))
        self.workload = random.Random(derive_seed(seed, "chaos/workload"))
        self.counts: dict[str, int] = {
            "partitions": 0, "heals": 0, "crashes": 0, "restarts": 0, "permanent_crashes": 0,
            "clock_reskews": 0, "inject_waves": 0, "injections": 0, "forbidden_published": 0,
            "forged_pushes": 0, "forged_syncs": 0, "future_stamped": 0,
        }
        self.cut = False  # a partition is in place
        self.permanent: set[int] = set()
        self.doc: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Seed and every fault setting of this run, as printed before it starts."""
        return {
            "seed": self.p.seed,
            "nodes": self.p.nodes,
            "chaos_ms": self.p.chaos_ms,
            "budget_ms": self.p.budget_ms,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "skew_spread_ms": self.skew_spread,
            "max_skew_ms": self.config.max_skew_ms,
            "heal_loss": self.p.heal_loss,
        }

    def local_now(self, host: Host) -> int:
        return self.sim.now + host.core.offset

    def live(self) -> list[Host]:
        return [h for h in self.sim.hosts if h.alive]

    def contacts(self, rng: random.Random, exclude: Host) -> list[str]:
        live = [h for h in self.sim.hosts if h.alive and h is not exclude]
        return [h.node_id for h in rng.sample(live, min(JOIN_CONTACTS, len(live)))]

    def payload(self, forbidden: bool = False) -> bytes:
        return (FORBIDDEN_MARK if forbidden else OK_MARK) + self.workload.randbytes(PAYLOAD_BYTES)

    # -- the phases --------------------------------------------------------------

    def boot(self) -> None:
        sim = self.sim
        hosts = [sim.add_host() for _ in range(self.p.nodes)]
        sim.start(hosts[0])
        rng = random.Random(derive_seed(self.p.seed, "chaos/boot"))
        for host in hosts[1:]:
            sim.call_at(1 + rng.randrange(BOOT_WINDOW_MS), self._boot_one, host, rng)
        sim.run(BOOT_WINDOW_MS + BOOT_SETTLE_MS)

    def _boot_one(self, host: Host, rng: random.Random) -> None:
        sim = self.sim
        up = [h for h in sim.hosts if h.alive]
        sim.start(host, [h.node_id for h in rng.sample(up, min(JOIN_CONTACTS, len(up)))])

    def schedule_chaos(self) -> int:
        """Put every fault of the phase on the event heap; return when the phase ends."""
        sim = self.sim
        p = self.p
        rng = self.plan
        t0 = sim.now
        end = t0 + p.chaos_ms
        sim.network.set_faults(loss=self.loss, duplicate=self.duplicate, reorder=self.reorder)
        # Partitions: a few episodes, one at a time, each long enough for
        # failure detection to declare the other side dead. The last one
        # lasts until the end of the phase: the final heal heals a real cut.
        episodes = rng.randint(1, 3)
        slot = p.chaos_ms // episodes
        for i in range(episodes):
            start = t0 + i * slot + rng.randrange(max(1, slot // 4))
            length = rng.randint(min(MIN_CUT_MS, slot // 2), max(MIN_CUT_MS, slot * 3 // 4))
            sides = rng.choice((2, 2, 3))
            sim.call_at(start, self._partition, sides)
            if i < episodes - 1:
                sim.call_at(min(start + length, end), self._heal_cut)
        # Crashes: most come back after a while, some only at the heal, a few never.
        crashes = rng.randint(1, max(1, int(p.crash_share * p.nodes)))
        for _ in range(crashes):
            at = t0 + rng.randrange(p.chaos_ms)
            fate = rng.random()
            back = at + rng.randint(*RESTART_AFTER_MS) if fate < RESTART_SHARE else None
            sim.call_at(at, self._crash, fate >= 1.0 - PERMANENT_SHARE, back)
        # Concurrent injections of the same keys from many nodes.
        at = t0 + rng.randint(200, 1_000)
        while at < end - 1_000:
            writers = rng.randint(1, MAX_WRITERS)
            key = f"bundle/chaos/k{rng.randrange(KEY_POOL)}"
            sim.call_at(at, self._wave, key, writers, rng.random() < FORBIDDEN_WAVE_SHARE)
            at += rng.randint(*WAVE_GAP_MS)
        # Forgeries: a node holding the network key but no author key pushes
        # refused items straight into the broadcast and anti-entropy paths.
        for _ in range(rng.randint(*FORGERIES)):
            sim.call_at(t0 + rng.randrange(p.chaos_ms), self._forge)
        for t in range(t0 + CHECK_EVERY_MS, end, CHECK_EVERY_MS):
            sim.call_at(t, self.observer.audit, sim, "during the chaos phase")
        return end

    def _partition(self, sides: int) -> None:
        rng = self.faults
        groups = {h.idx: rng.randrange(sides) for h in self.sim.hosts}
        self.sim.network.partition(groups)
        self.cut = True
        self.counts["partitions"] += 1

    def _heal_cut(self) -> None:
        if self.cut:
            self.cut = False
            self.sim.network.heal()
            self.counts["heals"] += 1

    def _crash(self, permanent: bool, back: int | None) -> None:
        sim = self.sim
        live = self.live()
        if len(live) <= max(2, self.p.nodes // 2):
            return  # keep a majority of the fleet up: a wiped-out fleet proves nothing
        host = live[self.faults.randrange(len(live))]
        sim.crash(host)
        self.counts["crashes"] += 1
        if permanent:
            self.permanent.add(host.idx)
            self.counts["permanent_crashes"] += 1
        elif back is not None:
            sim.call_at(back, self._restart, host)

    def _restart(self, host: Host) -> None:
        if host.alive or host.idx in self.permanent:
            return
        self.sim.restart(host, self.contacts(self.faults, host))
        self.counts["restarts"] += 1

    def _wave(self, key: str, writers: int, with_forbidden: bool) -> None:
        """``writers`` live nodes publish a new version of ``key`` in the same few ms."""
        sim = self.sim
        rng = self.workload
        live = self.live()
        picked = rng.sample(live, min(writers, len(live)))
        self.counts["inject_waves"] += 1
        for i, host in enumerate(picked):
            forbidden = with_forbidden and i == 0
            sim.call_at(sim.now + rng.randrange(20), self._publish, host, key, forbidden)

    def _publish(self, host: Host, key: str, forbidden: bool) -> None:
        if not host.alive:
            return
        author = f"author-{host.node_id}-{host.incarnation}"
        item = SignedItem(key=key, version=Version(self.local_now(host), 0, author), payload=self.payload(forbidden))
        self.counts["forbidden_published" if forbidden else "injections"] += 1
        self.sim.publish(host, item)

    def _forge(self) -> None:
        sim = self.sim
        rng = self.workload
        live = [h for h in self.live() if h.core.active_view]
        if not live:
            return
        src = live[rng.randrange(len(live))]
        key = f"bundle/chaos/k{rng.randrange(KEY_POOL)}"
        author = f"forger-{src.node_id}"
        now = self.local_now(src)
        future = rng.random() < FUTURE_SHARE
        if future:
            # Far enough ahead that no clock within the skew limit may take it.
            wall = now + 2 * self.config.max_skew_ms + rng.randrange(60_000)
            item = SignedItem(key=key, version=Version(wall, 0, author), payload=self.payload())
            self.counts["future_stamped"] += 1
        else:
            item = SignedItem(key=key, version=Version(now + 1_000, 0, author), payload=self.payload(True))
        net = sim.network
        for peer in src.core.active_view:
            net.send(src, peer, Push(hops=1, item=item), sim.now)
            self.counts["forged_pushes"] += 1
        passive = src.core.passive_view
        if passive:
            net.send(src, passive[rng.randrange(len(passive))], SyncItems(items=(item,)), sim.now)
            self.counts["forged_syncs"] += 1

    def heal(self) -> None:
        sim = self.sim
        self._heal_cut()
        sim.network.set_faults(loss=self.p.heal_loss, duplicate=0.0, reorder=0.0)
        rng = self.faults
        for host in sim.hosts:
            if not host.alive and host.idx not in self.permanent:
                sim.restart(host, self.contacts(rng, host))
                self.counts["restarts"] += 1

    def expected(self) -> dict[str, SignedItem]:
        """Per key, the newest item held by any live node: what all must hold."""
        best: dict[str, SignedItem] = {}
        for host in self.live():
            for item in host.store.items():
                cur = best.get(item.key)
                if cur is None or (item.version, item.digest()) > (cur.version, cur.digest()):
                    best[item.key] = item
        return best

    def converged(self) -> bool:
        return self.observer.stores_equal()

    def check_liveness(self) -> None:
        """Every live node holds the same store: the newest of all that was published."""
        sim = self.sim
        mismatch = self.observer.store_digest_mismatch(sim)
        if mismatch is not None:
            raise LivenessFailure(f"{self.p.budget_ms} ms after the heal {mismatch}")
        want = self.expected()
        for host in self.live():
            for key, item in want.items():
                have = host.store.get(key)
                if have is None or have.digest() != item.digest():
                    raise LivenessFailure(f"{host.node_id} disagrees on {key!r} after the heal")
        # Nothing published by a node that is up at the end may be lost.
        for idx, keys in self.observer.published.items():
            if not sim.hosts[idx].alive:
                continue
            for key, version in keys.items():
                if key not in want or want[key].version < version:
                    raise LivenessFailure(
                        f"{key!r} {tuple(version)} published at n{idx} was lost: the fleet holds "
                        f"{tuple(want[key].version) if key in want else None}"
                    )
        self.doc["keys_checked"] = len(want)

    def execute(self) -> None:
        sim = self.sim
        self.boot()
        end = self.schedule_chaos()
        sim.run(end)
        self.observer.audit(sim, "at the end of the chaos phase")
        self.counts["clock_reskews"] = self.model.reskewed
        self.heal()
        t_heal = sim.now
        self.doc["heal_at_ms"] = t_heal
        done = sim.run(t_heal + self.p.budget_ms, stop=self.converged)
        self.doc["heal_ms"] = sim.now - t_heal if done else None
        self.observer.audit(sim, "after the heal")
        self.check_liveness()


def run_chaos(params: ChaosParams, *, lax: tuple[str, ...] = ()) -> ChaosResult:
    """Run one seeded chaos run; failures are reported, never raised.

    ``lax`` names nodes built without the validator: a deliberately broken
    fleet, to show that the observer reports it.
    """
    started = time.perf_counter()
    run = ChaosRun(params, lax=lax)
    result = ChaosResult(params)
    doc = result.doc
    doc["settings"] = run.describe()
    try:
        run.execute()
    except SafetyViolation as exc:
        result.failure = "safety"
        doc["safety_violation"] = {"node": exc.node, "time_ms": exc.time_ms, "message": str(exc)}
        result.report = failure_report("safety", f"at {exc.node}, t={exc.time_ms} ms: {exc}", params.reproduce())
    except LivenessFailure as exc:
        result.failure = "liveness"
        doc["liveness_failure"] = str(exc)
        result.report = failure_report("liveness", str(exc), params.reproduce())
    sim = run.sim
    traffic = sim.network.traffic
    faults = dict(run.counts)
    faults.update(lost=traffic.lost, duplicated=traffic.duplicated, reordered=traffic.reordered,
                  failed_sends=traffic.failed)
    faults["clock_reskews"] = run.model.reskewed
    doc.update(run.doc)
    doc.setdefault("heal_ms", None)
    doc.setdefault("safety_violation", None)
    doc.setdefault("liveness_failure", None)
    doc.update(
        seed=params.seed,
        nodes=params.nodes,
        live_nodes=sim.live,
        faults=faults,
        refusals=dict(sorted(run.observer.refused.items())),
        accepted=run.observer.accepted,
        events=sim.events,
        sim_ms=sim.now,
        ok=result.ok,
        reproduce=params.reproduce(),
        wall_s=round(time.perf_counter() - started, 3),
    )
    log.info("chaos seed %d: %s in %.1f s", params.seed, "ok" if result.ok else result.failure, doc["wall_s"])
    return result
