"""The simulated network: latency, loss, duplication, reordering, cuts.

Every ``Send`` effect of a simulated node goes through ``Network.send``. The
network decides whether the message arrives, when, and how often, and it
reports a failed send back to the sender the way a real transport does:

- the destination process is down (crashed, or never existed): the sender
  learns it after ``refused_ms`` (a connection refused by the peer's host);
- sender and destination are on two sides of a partition: the packets go
  nowhere and the sender learns it after ``cut_timeout_ms`` (a connect or
  request timeout);
- a message lost to random loss is simply gone: nobody is told, as with a
  dropped datagram or a frame that never made it before the link reset.

Latencies come from a seeded log-normal distribution around a few
milliseconds. Links are FIFO (a WebSocket per pair) unless a message is
picked for reordering, which adds an extra delay and lets it overtake.

The network owns no clock and no heap: it asks its ``Simulator`` to schedule
deliveries and failures, and counts every message and byte per sender.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, replace
from heapq import heappush
from typing import TYPE_CHECKING, Any, Callable

from grapevine.gossip.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Host, Simulator

DELIVER = 0  # the engine's event kind for a delivery (engine.DELIVER)

log = logging.getLogger("grapevine.sim")

# Size of the pre-drawn latency table: 4096 samples reproduce a log-normal
# shape closely while a draw costs one getrandbits call instead of exp/gauss.
LATENCY_TABLE_BITS = 12
# A latency above this is cut off: links in one data centre, not satellites.
MAX_LATENCY_MS = 200
# Links a host's FIFO map holds before the ones with nothing in flight are
# dropped (a delivery time in the past can no longer hold back a message).
# A node has a handful of links in flight at once; the limit doubles past a burst
# (a smaller map per host: at a million hosts each entry counts).
FIFO_LINKS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    """Fault and link settings of one simulated run (all printed first)."""

    latency_median_ms: float = 3.0  # one-way latency median in a data centre
    latency_sigma: float = 0.5  # log-normal spread: p99 about 3.2x the median
    loss: float = 0.0  # probability that a message silently vanishes
    duplicate: float = 0.0  # probability that a message arrives twice
    reorder: float = 0.0  # probability that a message is delayed past later ones
    reorder_extra_ms: int = 40  # the extra delay of a reordered message, at most
    refused_ms: int = 5  # a send to a dead process fails after about one round trip
    cut_timeout_ms: int = 2000  # a send across a partition fails after a connect timeout
    link_close_notify: bool = True  # peers of a crashed process see its links close

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise ConfigError(f"{name} must be a probability in [0, 1), got {value}")
        if not (self.latency_median_ms > 0 and self.latency_sigma >= 0):
            raise ConfigError("latency median must be > 0 and sigma >= 0")
        if self.refused_ms < 1 or self.cut_timeout_ms < 1 or self.reorder_extra_ms < 1:
            raise ConfigError("refused_ms, cut_timeout_ms and reorder_extra_ms must be >= 1")

    def describe(self) -> dict[str, Any]:
        return {
            "latency_median_ms": self.latency_median_ms,
            "latency_sigma": self.latency_sigma,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "refused_ms": self.refused_ms,
            "cut_timeout_ms": self.cut_timeout_ms,
        }


class Traffic:
    """Fleet-wide message counters, by message class and in total.

    The send path only bumps one row per message class ([messages, bytes,
    payload copies]); totals are summed from the rows when asked for.
    """

    __slots__ = ("rows", "lost", "failed", "duplicated", "reordered")

    def __init__(self) -> None:
        # class -> [messages, bytes, payload copies, 1 if the class carries a payload]
        self.rows: dict[type, list[int]] = {}
        self.lost = 0  # messages dropped by the loss fault
        self.failed = 0  # sends reported failed (dead destination or a cut)
        self.duplicated = 0  # messages delivered a second time by the duplicate fault
        self.reordered = 0  # messages delayed past later ones by the reorder fault

    @property
    def messages(self) -> int:
        return sum(r[0] for r in self.rows.values())

    @property
    def bytes(self) -> int:
        return sum(r[1] for r in self.rows.values())

    @property
    def payload_copies(self) -> int:
        return sum(r[2] for r in self.rows.values())

    @property
    def by_type(self) -> dict[str, list[int]]:
        """Message class name -> [messages, bytes]."""
        return {cls.__name__: [r[0], r[1]] for cls, r in self.rows.items()}

    def snapshot(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "bytes": self.bytes,
            "payload_copies": self.payload_copies,
            "lost": self.lost,
            "failed": self.failed,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "by_type": self.by_type,
        }

    def __repr__(self) -> str:
        return f"Traffic({self.snapshot()})"


class Network:
    """Links between simulated hosts, with faults, partitions and counters."""

    def __init__(
        self,
        sim: Simulator,
        config: NetConfig,
        rng: random.Random,
        *,
        size_of: Callable[[Any], int],
        carries_payload: Callable[[Any], bool],
    ) -> None:
        self.sim = sim
        self.config = config  # also sets _faulty
        self.rng = rng
        self.size_of = size_of
        self.carries_payload = carries_payload
        self.traffic = Traffic()
        self._rows = self.traffic.rows
        self._last_msg: Any = None
        self._last_size = 0
        self._by_id = sim.by_id
        self._calendar = sim._calendar
        self._times = sim._times
        self._bits = rng.getrandbits
        self._groups: dict[int, int] | None = None  # host idx -> side; None: no partition
        # Per-link FIFO: each sending host keeps dst idx -> last delivery time
        # (``Host.fifo``): a small map next to the host being processed, where
        # one fleet-wide map of a million links would be mostly cache misses.
        mu = math.log(config.latency_median_ms)
        table_rng = random.Random(rng.getrandbits(64))
        self._latency = [
            max(1, min(MAX_LATENCY_MS, round(table_rng.lognormvariate(mu, config.latency_sigma))))
            for _ in range(1 << LATENCY_TABLE_BITS)
        ]

    @property
    def config(self) -> NetConfig:
        return self._config

    @config.setter
    def config(self, config: NetConfig) -> None:
        self._config = config
        # Whether any random fault is on: the send path of a fault-free run
        # then skips three probability checks per message.
        self._faulty = bool(config.loss or config.reorder or config.duplicate)

    # -- faults that scenarios switch on and off ---------------------------

    def set_faults(self, *, loss: float | None = None, duplicate: float | None = None,
                   reorder: float | None = None) -> None:
        """Change the random fault probabilities from now on."""
        changes = {k: v for k, v in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)) if v is not None}
        self.config = replace(self.config, **changes)
        log.info("network faults now %s", changes)

    def partition(self, sides: dict[int, int]) -> None:
        """Cut the fleet: hosts (by index) on different sides cannot talk.

        Hosts missing from ``sides`` (nodes that join later) are on side 0.
        """
        self._groups = dict(sides)
        log.info("partition: %d hosts split into %d sides", len(sides), len(set(sides.values())))

    def heal(self) -> None:
        self._groups = None
        log.info("partition healed")

    def side_of(self, idx: int) -> int:
        return 0 if self._groups is None else self._groups.get(idx, 0)

    def reachable(self, a: int, b: int) -> bool:
        g = self._groups
        return g is None or g.get(a, 0) == g.get(b, 0)

    def latency(self) -> int:
        return self._latency[self.rng.getrandbits(LATENCY_TABLE_BITS)]

    # -- the send path -----------------------------------------------------

    def _new_row(self, cls: type, msg: Any) -> list[int]:
        row = self.traffic.rows[cls] = [0, 0, 0, 1 if self.carries_payload(msg) else 0]
        return row

    def send(self, src: Host, peer: str, msg: Any, now: int) -> None:
        """Carry ``msg`` from ``src`` to the host named ``peer``, or fail.

        This is the hottest path of a run, so it is written flat.
        """
        row = self._rows.get(msg.__class__)
        if row is None:
            row = self._new_row(msg.__class__, msg)
        if msg is self._last_msg:  # one payload fanned out to several peers
            size = self._last_size
        else:
            size = self._last_size = self.size_of(msg)
            self._last_msg = msg
        row[0] += 1
        row[1] += size
        if row[3]:
            row[2] += 1
        dst = self._by_id.get(peer)
        if dst is None or not dst.alive:
            self.traffic.failed += 1
            self.sim.schedule_failure(now + self.config.refused_ms, src, peer)
            return
        groups = self._groups
        if groups is not None and groups.get(src.idx, 0) != groups.get(dst.idx, 0):
            self.traffic.failed += 1
            self.sim.schedule_failure(now + self.config.cut_timeout_ms, src, peer)
            return
        if self._faulty:
            self._send_with_faults(src, dst, msg, now)
            return
        at = now + self._latency[self._bits(LATENCY_TABLE_BITS)]
        fifo = src.fifo
        last = fifo.get(dst.idx)
        if last is not None and at < last:
            at = last
        fifo[dst.idx] = at
        if len(fifo) > src.fifo_limit:
            self._trim_fifo(src, now)
        event = (DELIVER, dst, dst.incarnation, src.node_id, msg)
        bucket = self._calendar.get(at)  # Simulator.schedule, inlined on the hottest path
        if bucket is None:
            self._calendar[at] = [event]
            heappush(self._times, at)
        else:
            bucket.append(event)

    def send_all(self, src: Host, effects: list[Any], now: int, send_type: type,
                 other: Callable[[Host, Any, int], None]) -> None:
        """``send`` for every ``send_type`` effect of one event, ``other`` for the rest.

        The same steps as ``send``, in the same order (so the same random
        draws), with the lookups done once per event instead of once per
        message: most events fan one message out to several peers.
        """
        rows = self._rows
        by_id = self._by_id
        calendar = self._calendar
        times = self._times
        bits = self._bits
        table = self._latency
        groups = self._groups
        faulty = self._faulty
        src_idx = src.idx
        src_id = src.node_id
        for e in effects:
            if type(e) is not send_type:
                other(src, e, now)
                continue
            msg = e.msg
            cls = msg.__class__
            row = rows.get(cls)
            if row is None:
                row = self._new_row(cls, msg)
            if msg is self._last_msg:
                size = self._last_size
            else:
                size = self._last_size = self.size_of(msg)
                self._last_msg = msg
            row[0] += 1
            row[1] += size
            if row[3]:
                row[2] += 1
            peer = e.peer
            dst = by_id.get(peer)
            if dst is None or not dst.alive:
                self.traffic.failed += 1
                self.sim.schedule_failure(now + self.config.refused_ms, src, peer)
                continue
            if groups is not None and groups.get(src_idx, 0) != groups.get(dst.idx, 0):
                self.traffic.failed += 1
                self.sim.schedule_failure(now + self.config.cut_timeout_ms, src, peer)
                continue
            if faulty:
                self._send_with_faults(src, dst, msg, now)
                continue
            at = now + table[bits(LATENCY_TABLE_BITS)]
            fifo = src.fifo
            dst_idx = dst.idx
            last = fifo.get(dst_idx)
            if last is not None and at < last:
                at = last
            fifo[dst_idx] = at
            if len(fifo) > src.fifo_limit:
                self._trim_fifo(src, now)
            event = (DELIVER, dst, dst.incarnation, src_id, msg)
            bucket = calendar.get(at)
            if bucket is None:
                calendar[at] = [event]
                heappush(times, at)
            else:
                bucket.append(event)

    def _send_with_faults(self, src: Host, dst: Host, msg: Any, now: int) -> None:
        """The rest of ``send`` while loss, duplication or reordering is on."""
        cfg = self.config
        if cfg.loss and self.rng.random() < cfg.loss:
            self.traffic.lost += 1
            return
        if cfg.reorder:
            self._deliver_later(src, dst, msg, now)
        else:
            at = self._fifo_time(src, dst, now + self._latency[self._bits(LATENCY_TABLE_BITS)], now)
            self.sim.schedule_delivery(at, dst, src.node_id, msg)
        if cfg.duplicate and self.rng.random() < cfg.duplicate:
            self.traffic.duplicated += 1
            self._deliver_later(src, dst, msg, now)

    def _deliver_later(self, src: Host, dst: Host, msg: Any, now: int) -> None:
        cfg = self.config
        at = now + self._latency[self.rng.getrandbits(LATENCY_TABLE_BITS)]
        if cfg.reorder and self.rng.random() < cfg.reorder:
            self.traffic.reordered += 1
            at += 1 + self.rng.randrange(cfg.reorder_extra_ms)
        else:
            at = self._fifo_time(src, dst, at, now)
        self.sim.schedule_delivery(at, dst, src.node_id, msg)

    def _fifo_time(self, src: Host, dst: Host, at: int, now: int) -> int:
        """The delivery time of a message on the link src -> dst: not before the previous one."""
        fifo = src.fifo
        last = fifo.get(dst.idx)
        if last is not None and at < last:
            at = last
        fifo[dst.idx] = at
        if len(fifo) > src.fifo_limit:
            self._trim_fifo(src, now)
        return at

    @staticmethod
    def _trim_fifo(src: Host, now: int) -> None:
        # A delivery time not after ``now`` cannot hold back a message sent
        # now (every latency is at least 1 ms): such links are dropped. If
        # most are still in flight the limit doubles, so trimming stays
        # linear over a burst.
        fifo = src.fifo = {d: t for d, t in src.fifo.items() if t > now}
        src.fifo_limit = max(FIFO_LINKS, 2 * len(fifo))

    def arrival_blocked(self, src_id: str, dst: Host) -> bool:
        """True when a message in flight meets a cut installed after it left."""
        if self._groups is None:
            return False
        src = self.sim.by_id.get(src_id)
        return src is not None and not self.reachable(src.idx, dst.idx)
