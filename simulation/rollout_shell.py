"""The rollout's shell in the simulator: gates on every host, the driver on one, reports between them.

This is what node/rollout.py and the CLI's driver do in the daemon, on the
simulated clock: it carries out the effects of the sans-I/O machines of
policy/rollout_machines.py (``Gate``, ``Driver``) and feeds them what
happens. Nothing of their logic is re-implemented here.

- ``RolloutObserver`` is the engine's ``Observer`` plus one hook: every
  accepted item is passed on, so the shell sees the bundle and the stage
  records arrive at each host as the gossip core admits them.
- ``RolloutModel`` is the gossip core's model with one change: the driver's
  host runs its ``GossipNode`` behind ``DriverCore``, which takes the
  reports (``ReportMsg``) out of its inbound messages; every other message
  goes to the core untouched. Reports travel through the simulated network
  (latency, FIFO links, cuts), sized as the daemon's signed envelope;
  the driver's answer (``ReportAck``) is counted, not delivered (nothing
  reads it in the simulation).
- ``RolloutShell`` keeps one ``Gate`` per host, runs applies, health
  checks and reverts as timed simulator calls, wakes gates and the driver
  at their ``next_deadline()``, signs the driver's records and injects
  them at the driver's host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from grapevine.gossip import codec
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.wire import ENVELOPE_VERSION, PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from grapevine.policy.keys import SigningKey
from grapevine.policy.rollout import ROLLOUT_KEY_PREFIX, TERMINAL, RolloutPlan, RolloutRecord, sign_record, stage_of
from grapevine.policy.rollout_machines import (
    Apply,
    Driver,
    DriverConfig,
    Gate,
    GateState,
    Publish,
    Report,
    Revert,
    RunHealth,
)

from .engine import Host, Simulator
from .observers import Observer
from .plumtree import PlumtreeModel

BUNDLE = "web/site"
BUNDLE_KEY = "bundle/" + BUNDLE
RECORD_KEY = ROLLOUT_KEY_PREFIX + BUNDLE
BAD_HEALTH = "health check failed: exit 1 (a node the simulation made bad)"


def envelope_size(sender: str, dest: str, body: dict) -> int:
    """Bytes of the daemon's peer-route frame: [version, sender, node key, dest, body, signature]."""
    packed = msgpack.packb(body, use_bin_type=True)
    return len(msgpack.packb([ENVELOPE_VERSION, sender, bytes(PUBLIC_KEY_BYTES), dest, packed,
                              bytes(SIGNATURE_BYTES)], use_bin_type=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportMsg:
    """A node's ``rollout.report`` post to the driver's node (the route body of node/rollout.py)."""

    state: str
    detail: str
    term: int
    size: int
    carries_payload = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportAck:
    """The driver's node's signed answer to a report (counted; the simulation does not deliver it)."""

    size: int
    carries_payload = False


class DriverCore:
    """The driver's host: its ``GossipNode``, with reports taken out of the inbound messages."""

    __slots__ = ("core", "model")

    def __init__(self, core: Any, model: RolloutModel) -> None:
        self.core = core
        self.model = model

    def on_message(self, peer: str, msg: Any, now: int) -> list:
        if type(msg) is ReportMsg:
            if self.model.inbox is not None:
                self.model.inbox(peer, msg, now)
            return []
        return self.core.on_message(peer, msg, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


class RolloutModel(PlumtreeModel):
    """The gossip core, with the driver's host able to take reports."""

    def __init__(self, config: Any, *, driver_id: str) -> None:
        super().__init__(config)
        self.driver_id = driver_id
        self.inbox: Callable[[str, ReportMsg, int], None] | None = None
        encoded_size = codec.encoded_size

        def size_of(msg: Any) -> int:
            return msg.size if type(msg) is ReportMsg else encoded_size(msg)

        self.size_of = size_of  # type: ignore[method-assign]

    def make_node(self, node_id: str, *, rng: random.Random, store: Any) -> Any:
        core = super().make_node(node_id, rng=rng, store=store)
        return DriverCore(core, self) if node_id == self.driver_id else core


class RolloutObserver(Observer):
    """The usual invariant checks, and every accepted bundle or record passed to the shell."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.hook: Callable[[Simulator, Host, Any, int], None] | None = None

    def on_accept(self, sim: Simulator, host: Host, effect: Any, now: int) -> None:
        super().on_accept(sim, host, effect, now)
        if self.hook is not None:
            key = effect.item.key
            if key == BUNDLE_KEY or key == RECORD_KEY:
                self.hook(sim, host, effect, now)


class RolloutShell:
    """Carries out the gates' and the driver's effects on the simulated fleet (see the module docstring)."""

    def __init__(self, sim: Simulator, observer: RolloutObserver, *, key: SigningKey, driver_id: str,
                 bundle_item: SignedItem, plan: RolloutPlan, previous: Version, bad: set[str],
                 timing: random.Random, apply_ms: tuple[int, int], health_ms: tuple[int, int],
                 config: DriverConfig) -> None:
        self.sim, self.observer, self.key, self.driver_id = sim, observer, key, driver_id
        self.item, self.version, self.plan, self.previous = bundle_item, bundle_item.version, plan, previous
        self.bad, self.timing, self.apply_ms, self.health_ms, self.config = bad, timing, apply_ms, health_ms, config
        self.driver: Driver | None = None
        self.gates: dict[int, Gate] = {}  # host idx -> its gate for the staged version
        self.ever: set[int] = set()  # hosts that ever ran the staged version
        self.busy = 0  # applies, health checks and reverts under way
        self.final_holders = 0  # hosts that accepted the driver's last record
        self.records: list[dict] = []  # what the driver published, in order
        self.reports = [0, 0]  # messages, bytes
        self._final: Version | None = None
        self._last: Version | None = None
        self._decoded: dict[Version, RolloutRecord] = {}
        self._wake: dict[int, int] = {}
        self._driver_wake: int | None = None
        self._term = 0
        self._ack = ReportAck(size=envelope_size(driver_id, "", {"ok": True}))
        self._sizes: dict[tuple[str, str, str], int] = {}

    # -- the driver ---------------------------------------------------------------------
    def start(self, targets: list[str]) -> None:
        """Inject the staged bundle at the driver's host and start the driver there (stage 0 opens)."""
        sim = self.sim
        now = sim.now
        sim.publish(sim.by_id[self.driver_id], self.item)
        self.driver = Driver(BUNDLE, self.version, self.plan, targets, self.driver_id, now, config=self.config)
        self._driver_effects(self.driver.start(now), now)

    def _driver_effects(self, effects: list, now: int) -> None:
        for e in effects:
            if type(e) is not Publish:
                raise TypeError(f"the driver asked for {type(e).__name__}, which the shell does not know")
            rec = e.record
            item = sign_record(rec, self.key, now, after=self._last)
            self._last = item.version
            self._decoded[item.version] = rec
            if rec.state in TERMINAL:
                self._final = item.version
            self._term = rec.term
            self.records.append({"at_ms": now, "state": rec.state, "stage": rec.stage, "bytes": len(item.payload)})
            self.sim.publish(self.sim.by_id[self.driver_id], item)
        self._arm_driver()

    def _arm_driver(self) -> None:
        d = self.driver.next_deadline() if self.driver is not None else None
        if d is not None and d != self._driver_wake:
            self._driver_wake = d
            self.sim.call_at(d, self._driver_tick, d)

    def _driver_tick(self, at: int) -> None:
        if self._driver_wake != at:
            return
        self._driver_wake = None
        self._driver_effects(self.driver.on_tick(self.sim.now), self.sim.now)

    def on_report(self, sender: str, msg: ReportMsg, now: int) -> None:
        """A report reached the driver's host (``DriverCore``): the driver takes it, the node is answered."""
        row = self.sim.network.traffic.rows.setdefault(ReportAck, [0, 0, 0, 0])
        row[0] += 1
        row[1] += self._ack.size
        if self.driver is not None:
            self._driver_effects(self.driver.on_report(sender, msg.state, now, msg.detail), now)

    # -- the gates -----------------------------------------------------------------------
    def on_accept(self, sim: Simulator, host: Host, effect: Any, now: int) -> None:
        item = effect.item
        if item.key == RECORD_KEY:
            if item.version == self._final and host.alive:
                self.final_holders += 1
            gate = self.gates.get(host.idx)
            rec = self._record(item)
            if gate is not None and rec is not None:
                self._handle(host, gate, gate.on_record(rec, now), now)
            return
        if item.version != self.version or host.idx in self.gates:
            return
        gate = self.gates[host.idx] = Gate(host.node_id, BUNDLE, self.version, self.plan, self.previous)
        rec = self._record(sim.model.store_get(host.store, RECORD_KEY))
        effects = gate.on_record(rec, now) if rec is not None else []
        self._handle(host, gate, effects, now)

    def _record(self, item: SignedItem | None) -> RolloutRecord | None:
        """The record an item carries: the driver signed it here, so its decoded form is at hand."""
        if item is None:
            return None
        rec = self._decoded.get(item.version)
        if rec is None:
            rec = self._decoded[item.version] = RolloutRecord.decode(item.payload)
        return rec

    def _draw(self, span: tuple[int, int]) -> int:
        lo, hi = span
        return lo + self.timing.randrange(hi - lo + 1)

    def _handle(self, host: Host, gate: Gate, effects: list, now: int) -> None:
        sim = self.sim
        for e in effects:
            t = type(e)
            if t is Report:
                self._report(host, e, now)
            elif t is Apply:
                self.ever.add(host.idx)
                self.busy += 1
                sim.call_at(now + self._draw(self.apply_ms), self._applied, host, gate)
            elif t is RunHealth:
                self.busy += 1
                sim.call_at(now + self._draw(self.health_ms), self._checked, host, gate)
            elif t is Revert:
                self.busy += 1
                sim.call_at(now + self._draw(self.apply_ms), self._reverted, host, gate)
            else:
                raise TypeError(f"a gate asked for {t.__name__}, which the shell does not know")
        d = gate.next_deadline()
        if d is not None and self._wake.get(host.idx) != d:
            self._wake[host.idx] = d
            sim.call_at(d, self._gate_tick, host, gate, d)

    def _report(self, host: Host, e: Report, now: int) -> None:
        key = (host.node_id, e.state, e.detail)
        size = self._sizes.get(key)
        if size is None:
            body = {"b": e.bundle, "v": str(e.version), "s": e.state, "d": e.detail, "t": self._term}
            size = self._sizes[key] = envelope_size(host.node_id, self.driver_id, body)
        self.reports[0] += 1
        self.reports[1] += size
        self.sim.network.send(host, self.driver_id, ReportMsg(state=e.state, detail=e.detail, term=self._term,
                                                              size=size), now)

    def _applied(self, host: Host, gate: Gate) -> None:
        self.busy -= 1
        if host.alive:
            self._handle(host, gate, gate.on_applied(True, "", self.sim.now), self.sim.now)

    def _checked(self, host: Host, gate: Gate) -> None:
        self.busy -= 1
        if host.alive:
            ok = host.node_id not in self.bad
            self._handle(host, gate, gate.on_health(ok, "" if ok else BAD_HEALTH, self.sim.now), self.sim.now)

    def _reverted(self, host: Host, gate: Gate) -> None:
        self.busy -= 1
        if host.alive:
            self._handle(host, gate, gate.on_reverted(True, "", self.sim.now), self.sim.now)

    def _gate_tick(self, host: Host, gate: Gate, at: int) -> None:
        if self._wake.get(host.idx) != at:
            return
        del self._wake[host.idx]
        if host.alive:
            self._handle(host, gate, gate.on_tick(self.sim.now), self.sim.now)

    # -- the end ----------------------------------------------------------------------------
    def settled(self) -> bool:
        """The driver is done, no node is still applying or reverting, every node holds its last record."""
        d = self.driver
        return (d is not None and d.done and not self.busy and self.final_holders >= self.sim.live
                and self.observer.stores_equal())

    def figures(self, t0: int) -> dict[str, Any]:
        d = self.driver
        assert d is not None
        gates = self.gates.values()
        end = next((r["at_ms"] for r in self.records if r["state"] in TERMINAL), None)
        opened: dict[int, int] = {}
        for r in self.records:
            if r["state"] == "running":
                opened.setdefault(r["stage"], r["at_ms"] - t0)
        ths = list(d.thresholds)
        truth = [[0, 0] for _ in self.plan.stages]  # per stage: ever applied, still applied
        for idx, g in self.gates.items():
            k = stage_of(g.hash, ths)
            if k is None:
                continue
            truth[k][0] += idx in self.ever
            truth[k][1] += g.runs_new
        stages = []
        for k, row in enumerate(d.status()["stages"]):
            stages.append({**row, "opened_ms": opened.get(k), "ever_applied": truth[k][0],
                           "final_applied": truth[k][1]})
        return {
            "ever_applied": len(self.ever),
            "reverted": sum(1 for g in gates if g.state == GateState.REVERTED),
            "final_applied": sum(1 for g in gates if g.runs_new),
            "halted": d.state in ("halted", "rolled_back"),
            "state": d.state,
            "reason": d.reason,
            "rollout_ms": None if end is None else end - t0,
            "stages": stages,
            "records": self.records,
            "reports": {"messages": self.reports[0], "bytes": self.reports[1],
                        "per_node": round(self.reports[0] / max(1, self.sim.live), 3)},
        }
