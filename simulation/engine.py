"""The discrete-event engine: a virtual clock, a heap of events, the hosts.

One ``Simulator`` runs one fleet of one protocol. Time is an int number of
simulated milliseconds. Events wait in a calendar: one list per millisecond
that has any, and a small heap of those milliseconds. Events of the same
millisecond run in the order they were scheduled, so a run is a pure
function of its master seed. (A calendar rather than one heap of events:
at 100,000 nodes there are a million events in flight but only a few
hundred distinct instants, so scheduling costs an append.) The four kinds:

- DELIVER: a message reaches a host (``core.on_message``);
- FAIL: the transport tells a host that a send did not get through
  (``core.on_send_failed``);
- WAKE: a host's own timers are due (``core.on_tick``). A host is woken at
  its ``next_deadline()``, never on a fixed tick, so an idle fleet of
  100,000 nodes costs only the timers that actually fire;
- CALL: a scenario action (crash, join, publish, partition, heal, ...).

Every source of randomness is a ``random.Random`` seeded from the master
seed and a label (``derive_seed``): the network, the churn, the workload and
each incarnation of each node get their own, so adding a node does not shift
the random stream of the network.

The protocol under test is plugged in as a ``Model`` (the real gossip core,
or the push-gossip baseline): it builds nodes and stores and tells the
network how large a message is. Whatever a node wants done comes back as
effects: sends go to the ``Network``, accepted items to the ``Observer``.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
from typing import Any, Callable, Iterable, Sequence

from .network import FIFO_LINKS, NetConfig, Network
from .observers import Observer

log = logging.getLogger("grapevine.sim")

INF = 1 << 62  # "no deadline": later than any simulated time
DELIVER, FAIL, WAKE, CALL = 0, 1, 2, 3
# Effect kinds a model maps its effect classes to.
SEND, ACCEPTED, REFUSED, DELIVERED, PEER_UP, PEER_DOWN = range(6)
# How often (in events) the progress callback is called: rarely enough to
# cost nothing, often enough for a progress bar to move smoothly.
PROGRESS_EVERY = 1 << 15


def derive_seed(master: int, label: str) -> int:
    """A child seed for one subsystem: stable, independent of other labels."""
    digest = hashlib.blake2b(f"{master}/{label}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Model:
    """What the engine needs from a protocol (gossip core or baseline)."""

    name = "model"
    effect_kinds: dict[type, int] = {}

    def make_node(self, node_id: str, *, rng: random.Random, store: Any) -> Any:
        raise NotImplementedError

    def new_store(self, items: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    def size_of(self, msg: Any) -> int:
        raise NotImplementedError

    def carries_payload(self, msg: Any) -> bool:
        raise NotImplementedError

    def store_get(self, store: Any, key: str) -> Any:
        raise NotImplementedError

    def store_items(self, store: Any) -> list[Any]:
        raise NotImplementedError

    def store_digest(self, store: Any) -> bytes:
        raise NotImplementedError

    def join_contacts(self, sim: Simulator, host: Host, contacts: Sequence[str]) -> Sequence[str]:
        return contacts

    def on_host_up(self, sim: Simulator, host: Host) -> None:
        """A host's process started (first start or restart)."""

    def on_host_down(self, sim: Simulator, host: Host) -> None:
        """A host's process crashed."""


class Host:
    """One machine of the simulated fleet: the node process and its disk."""

    __slots__ = (
        "idx", "node_id", "core", "store", "alive", "incarnation", "wake_at", "fp", "started_at",
        "fifo", "fifo_limit",
    )

    def __init__(self, idx: int, store: Any) -> None:
        self.idx = idx
        self.node_id = f"n{idx}"
        self.core: Any = None
        self.store = store  # survives crashes, as the daemon's SQLite file does
        self.alive = False
        self.incarnation = 0
        self.wake_at = INF
        self.fp = 0  # observer's fingerprint of the store content
        self.started_at = -1
        self.fifo: dict[int, int] = {}  # the network's per-link FIFO: dst idx -> last delivery time
        self.fifo_limit = FIFO_LINKS

    def __repr__(self) -> str:
        return f"Host({self.node_id}, alive={self.alive}, inc={self.incarnation})"


class Simulator:
    """A virtual clock, an event heap, a network and a fleet of hosts."""

    def __init__(
        self,
        model: Model,
        *,
        seed: int,
        net: NetConfig | None = None,
        observer: Observer | None = None,
        progress: Callable[[Simulator], None] | None = None,
    ) -> None:
        self.model = model
        self.seed = seed
        self.now = 0
        self.events = 0
        self.hosts: list[Host] = []
        self.by_id: dict[str, Host] = {}
        self.live = 0
        self.progress = progress
        self._calendar: dict[int, list[tuple]] = {}  # time -> events (kind, host, inc, a, b)
        self._times: list[int] = []  # heap of the times that have a list in the calendar
        self._dirty = False
        self.network = Network(
            self,
            net or NetConfig(),
            random.Random(derive_seed(seed, "network")),
            size_of=model.size_of,
            carries_payload=model.carries_payload,
        )
        self.observer = observer if observer is not None else Observer(model)
        self._kinds = dict(model.effect_kinds)
        self._send_type = next((t for t, k in self._kinds.items() if k == SEND), None)
        self.effect_counts = [0] * 6

    # -- building the fleet ------------------------------------------------

    def add_host(self, store: Any = None) -> Host:
        host = Host(len(self.hosts), self.model.new_store() if store is None else store)
        self.hosts.append(host)
        self.by_id[host.node_id] = host
        self.observer.on_host_added(self, host, preloaded=store is not None)
        return host

    def node_rng(self, host: Host) -> random.Random:
        return random.Random(derive_seed(self.seed, f"node/{host.node_id}/{host.incarnation}"))

    def start(self, host: Host, contacts: Sequence[str] = ()) -> None:
        """Start the host's process and join through ``contacts`` (if any)."""
        if host.alive:
            raise RuntimeError(f"{host.node_id} is already running")
        host.incarnation += 1
        host.core = self.model.make_node(host.node_id, rng=self.node_rng(host), store=host.store)
        host.alive = True
        host.wake_at = INF
        host.started_at = self.now
        self.live += 1
        self.model.on_host_up(self, host)
        self.observer.on_host_up(self, host)
        contacts = [c for c in self.model.join_contacts(self, host, contacts) if c != host.node_id]
        if contacts:
            self._apply(host, host.core.join(contacts, self.now), self.now)
        self._wake(host)
        self._dirty = True

    def crash(self, host: Host) -> None:
        """Kill the host's process; its store stays on disk."""
        if not host.alive:
            return
        peers = list(getattr(host.core, "active_view", ()) or ())
        host.alive = False
        host.core = None
        host.wake_at = INF
        self.live -= 1
        self.model.on_host_down(self, host)
        self.observer.on_host_down(self, host)
        net = self.network
        if net.config.link_close_notify:
            # The kernel closes the dead process's sockets: each peer with an
            # open link to it sees the link drop one latency later.
            for peer in peers:
                other = self.by_id.get(peer)
                if other is not None and other.alive and net.reachable(host.idx, other.idx):
                    self.schedule_failure(self.now + net.latency(), other, host.node_id)
        self._dirty = True

    def restart(self, host: Host, contacts: Sequence[str] = ()) -> None:
        self.start(host, contacts)

    def publish(self, host: Host, item: Any) -> None:
        if not host.alive:
            raise RuntimeError(f"cannot publish at {host.node_id}: it is down")
        self._apply(host, host.core.publish(item, self.now), self.now)
        self._wake(host)

    def live_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.alive]

    # -- scheduling --------------------------------------------------------

    def schedule(self, at: int, event: tuple) -> None:
        """Put ``(kind, host, incarnation, a, b)`` in the calendar at time ``at``."""
        bucket = self._calendar.get(at)
        if bucket is None:
            self._calendar[at] = [event]
            heapq.heappush(self._times, at)
        else:
            bucket.append(event)

    def call_at(self, at: int, fn: Callable[..., Any], *args: Any) -> None:
        self.schedule(max(at, self.now), (CALL, None, 0, fn, args))

    def schedule_delivery(self, at: int, dst: Host, src_id: str, msg: Any) -> None:
        self.schedule(at, (DELIVER, dst, dst.incarnation, src_id, msg))

    def schedule_failure(self, at: int, src: Host, peer: str) -> None:
        self.schedule(at, (FAIL, src, src.incarnation, peer, None))

    def pending(self) -> int:
        """Events waiting in the calendar."""
        return sum(len(b) for b in self._calendar.values())

    def _wake(self, host: Host) -> None:
        if not host.alive:
            return
        d = host.core.next_deadline()
        if d is None:
            return
        if d < host.wake_at:
            if d <= self.now:
                d = self.now + 1  # due now: run it next millisecond, never in a loop
            host.wake_at = d
            self.schedule(d, (WAKE, host, host.incarnation, None, None))

    # -- effects -----------------------------------------------------------

    def _apply(self, host: Host, effects: list[Any], now: int) -> None:
        send_type = self._send_type
        net = self.network
        for e in effects:
            if type(e) is send_type:
                net.send(host, e.peer, e.msg, now)
            else:
                self._apply_other(host, e, now)

    def _apply_other(self, host: Host, e: Any, now: int) -> None:
        """An effect other than a send: counted, and passed to the observer."""
        cls = type(e)
        kind = self._kinds.get(cls)
        if kind is None:
            raise TypeError(f"{host.node_id}: the engine does not know effect {cls.__name__}")
        self.effect_counts[kind] += 1
        if kind == ACCEPTED:
            self.observer.on_accept(self, host, e, now)
            self._dirty = True
        elif kind == REFUSED:
            self.observer.on_refuse(self, host, e, now)

    # -- the loop ----------------------------------------------------------

    def run(self, until: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to time ``until``; True if ``stop()`` became true.

        ``stop`` is re-evaluated only after something that can change its
        answer (an accepted item, a scenario action).
        """
        calendar = self._calendar
        times = self._times
        pop = heapq.heappop
        schedule = self.schedule
        net = self.network
        send_all = net.send_all
        send_type = self._send_type
        apply_other = self._apply_other
        progress = self.progress
        watchers = self.observer.delivery_watchers
        if stop is not None and stop():
            return True
        while times and times[0] <= until:
            t = pop(times)
            batch = calendar.pop(t)
            self.now = t
            self.events += len(batch)
            if progress is not None and (self.events ^ (self.events - len(batch))) >= PROGRESS_EVERY:
                progress(self)
            for i, (kind, host, inc, a, b) in enumerate(batch):
                if kind == DELIVER:
                    if not host.alive or host.incarnation != inc:
                        src = self.by_id.get(a)
                        if src is not None and src.alive:
                            schedule(t + net.config.refused_ms, (FAIL, src, src.incarnation, host.node_id, None))
                        continue
                    if net._groups is not None and net.arrival_blocked(a, host):
                        src = self.by_id[a]
                        schedule(t + net.config.cut_timeout_ms, (FAIL, src, src.incarnation, host.node_id, None))
                        continue
                    if watchers:
                        for watch in watchers:
                            watch(t, a, host, b)
                    effects = host.core.on_message(a, b, t)
                elif kind == WAKE:
                    if host.incarnation != inc or host.wake_at != t or not host.alive:
                        continue
                    host.wake_at = INF
                    effects = host.core.on_tick(t)
                elif kind == FAIL:
                    if not host.alive or host.incarnation != inc:
                        continue
                    for watch in self.observer.failure_watchers:
                        watch(t, host, a)
                    effects = host.core.on_send_failed(a, t)
                else:
                    a(*b)
                    self._dirty = True
                    if stop is not None and stop():
                        self._put_back(t, batch, i + 1)
                        return True
                    continue
                # Simulator._apply and _wake, inlined: this runs once per event.
                if effects:
                    send_all(host, effects, t, send_type, apply_other)
                if host.alive:
                    d = host.core.next_deadline()
                    if d is not None and d < host.wake_at:
                        if d <= t:
                            d = t + 1
                        host.wake_at = d
                        schedule(d, (WAKE, host, host.incarnation, None, None))
                if self._dirty and stop is not None:
                    self._dirty = False
                    if stop():
                        self._put_back(t, batch, i + 1)
                        return True
        if self.now < until:
            self.now = until
        return False

    def _put_back(self, t: int, batch: list[tuple], start: int) -> None:
        """A run stopped inside a millisecond: its unprocessed events go first next time."""
        rest = batch[start:]
        if not rest:
            return
        self.events -= len(rest)  # counted with their batch, they have not run yet
        later = self._calendar.get(t)
        if later is None:
            self._calendar[t] = rest
            heapq.heappush(self._times, t)
        else:
            self._calendar[t] = rest + later

    def run_for(self, duration: int, stop: Callable[[], bool] | None = None) -> bool:
        return self.run(self.now + duration, stop)
