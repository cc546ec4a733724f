"""Invariant observers: they see every accepted item and every node's store.

Safety (must hold at every instant, checked as events happen):

- no version goes backwards at any node: a node accepts a key only at a
  version above the one it held, reports the version it really held as
  ``previous``, and its store never silently loses a version it accepted
  (checked on every accept, on every restart and at the end of each phase);
- all nodes holding a key at a version agree on its content: one
  (key, version) pair maps to one item digest fleet-wide.

Liveness (must hold by the end of a healed phase, within a budget of
simulated time): every live node holds the tracked items, and every live
node holds the same store digest.

A safety violation raises ``SafetyViolation`` at once, which stops the run;
a liveness failure is reported by the scenario at the end of its phase. The
scenario runner turns either into a report that ends with the command that
reproduces the run.

To know cheaply when all stores are equal, the observer keeps for each host
a fingerprint of its store content: the XOR of a hash of every (key,
version) it holds, updated on each accept. Equal content gives equal
fingerprints; the real ``store_digest()`` of the core is compared at the end.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Host, Model, Simulator

log = logging.getLogger("grapevine.sim")


class SafetyViolation(Exception):
    """Something that must never happen happened (the run stops)."""

    def __init__(self, message: str, *, node: str, time_ms: int) -> None:
        super().__init__(message)
        self.node = node
        self.time_ms = time_ms


class LivenessFailure(Exception):
    """Something that must happen did not happen within its budget."""


def item_fingerprint(key: str, version: Any) -> int:
    """One (key, version)'s share of a store fingerprint."""
    return hash((key, version))


class Tracker:
    """Which hosts hold a given key at a given version (or newer), and when."""

    __slots__ = ("key", "version", "started", "times", "hops", "live_holders", "label")

    def __init__(self, key: str, version: Any, started: int, label: str) -> None:
        self.key = key
        self.version = version
        self.started = started
        self.label = label
        self.times: dict[int, int] = {}  # host idx -> time of first holding it
        self.hops: dict[int, int] = {}  # host idx -> broadcast hops when it arrived
        self.live_holders = 0


class Observer:
    """Checks safety on every accepted item and tracks convergence."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.initial_fp = 0  # fingerprint of a preloaded store
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.trackers: list[Tracker] = []
        self._held: dict[int, dict[str, Any]] = {}  # host idx -> key -> version accepted
        self._digests: dict[tuple[str, Any], tuple[Any, bytes]] = {}
        self._fp_counts: dict[int, int] = {}  # fingerprint -> live hosts with it
        # Callables (time, source id, destination host, message) that see every
        # delivered message; empty in normal runs, so delivery costs nothing extra.
        self.delivery_watchers: list[Any] = []
        # Callables (time, host, peer id) that see every failed send reported.
        self.failure_watchers: list[Any] = []

    # -- host lifecycle ------------------------------------------------------

    def preload(self, items: Iterable[Any]) -> None:
        """Items every preloaded store starts with."""
        fp = 0
        for item in items:
            fp ^= item_fingerprint(item.key, item.version)
            self._digests[(item.key, item.version)] = (item, item.digest())
        self.initial_fp = fp

    def on_host_added(self, sim: Simulator, host: Host, *, preloaded: bool) -> None:
        host.fp = self.initial_fp if preloaded else 0

    def on_host_up(self, sim: Simulator, host: Host) -> None:
        if host.incarnation > 1:
            self.audit_host(sim, host, "after restart")
        self._fp_add(host.fp)
        for tr in self.trackers:
            if host.idx in tr.times:
                tr.live_holders += 1

    def on_host_down(self, sim: Simulator, host: Host) -> None:
        self._fp_remove(host.fp)
        for tr in self.trackers:
            if host.idx in tr.times:
                tr.live_holders -= 1

    def _fp_add(self, fp: int) -> None:
        self._fp_counts[fp] = self._fp_counts.get(fp, 0) + 1

    def _fp_remove(self, fp: int) -> None:
        n = self._fp_counts[fp] - 1
        if n:
            self._fp_counts[fp] = n
        else:
            del self._fp_counts[fp]

    # -- the event hooks -------------------------------------------------------

    def _violation(self, sim: Simulator, host: Host, message: str) -> SafetyViolation:
        log.error("safety violation at %s t=%d: %s", host.node_id, sim.now, message)
        return SafetyViolation(message, node=host.node_id, time_ms=sim.now)

    def on_accept(self, sim: Simulator, host: Host, effect: Any, now: int) -> None:
        item = effect.item
        key = item.key
        version = item.version
        self.accepted += 1
        held = self._held.get(host.idx)
        if held is None:
            held = self._held[host.idx] = {}
        old = held.get(key)
        previous = effect.previous
        if old is not None:
            if version <= old:
                raise self._violation(
                    sim, host, f"version went backwards: key {key!r} held {tuple(old)}, accepted {tuple(version)}"
                )
            if previous is None or previous < old:
                raise self._violation(
                    sim, host,
                    f"store lost a version: key {key!r} was accepted at {tuple(old)} but the node "
                    f"replaced {None if previous is None else tuple(previous)}",
                )
        if previous is not None and version <= previous:
            raise self._violation(
                sim, host, f"version went backwards: key {key!r} replaced {tuple(previous)} by {tuple(version)}"
            )
        entry = self._digests.get((key, version))
        if entry is None:
            self._digests[(key, version)] = (item, item.digest())
        elif entry[0] is not item and item.digest() != entry[1]:
            raise self._violation(
                sim, host, f"two different items share key {key!r} version {tuple(version)}: digests disagree"
            )
        held[key] = version
        fp = host.fp ^ item_fingerprint(key, version)
        if previous is not None:
            fp ^= item_fingerprint(key, previous)
        if host.alive:
            self._fp_remove(host.fp)
            self._fp_add(fp)
        host.fp = fp
        for tr in self.trackers:
            if tr.key == key and version >= tr.version and host.idx not in tr.times:
                tr.times[host.idx] = now
                tr.hops[host.idx] = effect.hops
                if host.alive:
                    tr.live_holders += 1

    def on_refuse(self, sim: Simulator, host: Host, effect: Any, now: int) -> None:
        reason = effect.reason
        self.refused[reason] = self.refused.get(reason, 0) + 1

    # -- checks the scenario asks for -------------------------------------------

    def track(self, key: str, version: Any, started: int, label: str = "") -> Tracker:
        tr = Tracker(key, version, started, label or key)
        self.trackers.append(tr)
        return tr

    def stores_equal(self) -> bool:
        """True when every live host's store fingerprint is the same."""
        return len(self._fp_counts) <= 1

    def fingerprint_groups(self) -> int:
        return len(self._fp_counts)

    def audit_host(self, sim: Simulator, host: Host, when: str) -> None:
        """Every version the host accepted is still in its store (or newer)."""
        held = self._held.get(host.idx)
        if not held:
            return
        get = self.model.store_get
        for key, version in held.items():
            stored = get(host.store, key)
            if stored is None or stored.version < version:
                have = None if stored is None else tuple(stored.version)
                raise self._violation(
                    sim, host, f"store rolled back {when}: key {key!r} was at {tuple(version)}, now {have}"
                )

    def audit(self, sim: Simulator, when: str) -> None:
        for host in sim.hosts:
            if host.alive:
                self.audit_host(sim, host, when)

    def store_digest_mismatch(self, sim: Simulator) -> str | None:
        """None if all live hosts hold the same real store digest, else a description."""
        counts: dict[bytes, list[str]] = {}
        for host in sim.hosts:
            if host.alive:
                counts.setdefault(self.model.store_digest(host.store), []).append(host.node_id)
        if len(counts) <= 1:
            return None
        groups = sorted(counts.values(), key=len, reverse=True)
        minority = [n for g in groups[1:] for n in g]
        return (
            f"{len(counts)} different store digests among {sum(map(len, groups))} live nodes; "
            f"{len(minority)} differ from the majority (e.g. {', '.join(minority[:5])})"
        )


def failure_report(kind: str, message: str, reproduce: str) -> str:
    """The lines printed for a failed run: what broke, then how to replay it."""
    return f"{kind} failure: {message}\nreproduce with: {reproduce}"
