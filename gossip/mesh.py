"""``Mesh``: a handful of gossip nodes linked in memory, on a virtual clock.

For tests and examples. Every ``Send`` effect becomes a delivery after a
random latency; ``run_for`` advances virtual time, delivering messages and
ticking nodes exactly when their ``next_deadline`` comes. By default every
message goes through ``codec.encode``/``decode`` on the way, so the real
wire format is exercised. Links can be cut (silently dropped, like a
partition, or failing, like refused connections) and restored; nodes can be
killed (sends to them fail after the latency, as a refused connection would).

One seed drives everything: the per-node random generators and the network
latency are derived from it, so a run is replayed exactly by its seed.
Effects other than ``Send`` are kept per node in ``events``.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import Iterable, Sequence

from . import codec
from .config import GossipConfig
from .effects import Delivered, Effect, ItemAccepted, Send
from .item import SignedItem
from .messages import Message
from .node import GossipNode, Validator

NEVER = 1 << 62
_TICK, _MSG, _FAIL = 0, 1, 2


class Mesh:
    def __init__(
        self,
        *,
        config: GossipConfig | None = None,
        seed: int = 0,
        latency_ms: tuple[int, int] = (2, 20),
        wire: bool = True,
        validator: Validator | None = None,
    ) -> None:
        self.config = config if config is not None else GossipConfig()
        self.seed = seed
        self._master = random.Random(seed)
        self._net = random.Random(self._master.getrandbits(64))
        self.latency_ms = latency_ms
        self.wire = wire
        self.validator = validator
        self.now = 0
        self.nodes: dict[str, GossipNode] = {}
        self.dead: set[str] = set()
        self.events: dict[str, list[Effect]] = {}
        self.sent: Counter[str] = Counter()  # message type name -> count
        self.payload_copies = 0
        self._cut: set[frozenset[str]] = set()
        self._cut_fails = False
        self._queue: list[tuple] = []
        self._seq = 0
        self._deadline: dict[str, int] = {}

    # --- building --------------------------------------------------------------

    def add(self, node_id: str, *, join: Sequence[str] = ()) -> GossipNode:
        node = GossipNode(
            node_id,
            config=self.config,
            rng=random.Random(self._master.getrandbits(64)),
            validator=self.validator,
        )
        self.nodes[node_id] = node
        self.events[node_id] = []
        self._apply(node_id, node.join(list(join), self.now))
        return node

    def build(self, count: int, *, prefix: str = "n", settle_ms: int = 200) -> list[str]:
        """Add ``count`` nodes, each joining through a random earlier one."""
        ids = []
        for i in range(count):
            nid = f"{prefix}{i}"
            contacts = [ids[self._net.randrange(len(ids))]] if ids else []
            self.add(nid, join=contacts)
            ids.append(nid)
            self.run_for(settle_ms)
        return ids

    @property
    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.dead]

    # --- faults ----------------------------------------------------------------

    def cut(self, side_a: Iterable[str], side_b: Iterable[str], *, fail: bool = False) -> None:
        """Cut every link between the two sides. ``fail``: sends fail instead of vanishing."""
        b = list(side_b)
        for x in side_a:
            for y in b:
                self._cut.add(frozenset((x, y)))
        self._cut_fails = fail

    def restore(self) -> None:
        self._cut.clear()

    def kill(self, node_id: str) -> None:
        """The node stops: it ticks no more and sends to it fail."""
        self.dead.add(node_id)

    def _blocked(self, a: str, b: str) -> bool:
        return bool(self._cut) and frozenset((a, b)) in self._cut

    # --- driving -----------------------------------------------------------------

    def _push(self, at: int, kind: int, payload: tuple) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, payload))

    def _schedule_tick(self, node_id: str) -> None:
        node = self.nodes[node_id]
        d = max(node.next_deadline(), self.now)
        if self._deadline.get(node_id) != d:
            self._deadline[node_id] = d
            if d < NEVER:
                self._push(d, _TICK, (node_id, d))

    def _latency(self) -> int:
        lo, hi = self.latency_ms
        return self._net.randint(lo, hi)

    def _apply(self, src: str, effects: list[Effect]) -> None:
        for e in effects:
            if type(e) is Send:
                msg = e.msg
                self.sent[type(msg).__name__] += 1
                if msg.carries_payload:
                    self.payload_copies += 1
                if self.wire:
                    msg = codec.decode(codec.encode(msg))
                self._push(self.now + self._latency(), _MSG, (src, e.peer, msg))
            else:
                self.events[src].append(e)
        self._schedule_tick(src)

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    def run_until(self, t: int) -> None:
        q = self._queue
        while q and q[0][0] <= t:
            at, _, kind, payload = heapq.heappop(q)
            self.now = max(self.now, at)
            if kind == _TICK:
                node_id, d = payload
                if self._deadline.get(node_id) != d or node_id in self.dead:
                    continue
                self._deadline.pop(node_id, None)
                self._apply(node_id, self.nodes[node_id].on_tick(self.now))
            elif kind == _MSG:
                src, dst, msg = payload
                if dst not in self.nodes or dst in self.dead:
                    if src in self.nodes and src not in self.dead:
                        self._push(self.now + self._latency(), _FAIL, (src, dst))
                    continue
                if self._blocked(src, dst):
                    if self._cut_fails and src not in self.dead:
                        self._push(self.now + self._latency(), _FAIL, (src, dst))
                    continue
                self._apply(dst, self.nodes[dst].on_message(src, msg, self.now))
            else:
                src, dst = payload
                if src not in self.dead:
                    self._apply(src, self.nodes[src].on_send_failed(dst, self.now))
        self.now = max(self.now, t)

    # --- workload ----------------------------------------------------------------

    def publish(self, node_id: str, item: SignedItem) -> list[Effect]:
        effects = self.nodes[node_id].publish(item, self.now)
        self._apply(node_id, effects)
        return [e for e in effects if type(e) is not Send]

    def broadcast(self, node_id: str, payload: bytes, ttl_ms: int) -> bytes:
        msg_id, effects = self.nodes[node_id].broadcast(payload, self.now, ttl_ms)
        self._apply(node_id, effects)
        return msg_id

    def send(self, src: str, dst: str, msg: Message) -> None:
        """Inject one message as if ``src`` had sent it."""
        self._apply(src, [Send(peer=dst, msg=msg)])

    # --- observations ------------------------------------------------------------

    def accepted(self, node_id: str) -> list[ItemAccepted]:
        return [e for e in self.events[node_id] if type(e) is ItemAccepted]

    def delivered(self, node_id: str) -> list[Delivered]:
        return [e for e in self.events[node_id] if type(e) is Delivered]

    def digests(self) -> dict[str, bytes]:
        return {n: self.nodes[n].store.store_digest() for n in self.live}

    def converged(self) -> bool:
        return len(set(self.digests().values())) == 1

    def asymmetric_links(self) -> list[tuple[str, str]]:
        """Active links held by one side only, among live nodes."""
        bad = []
        for n in self.live:
            for p in self.nodes[n].active_view:
                if p in self.dead or n not in self.nodes[p].active_view:
                    bad.append((n, p))
        return bad

    def components(self) -> list[set[str]]:
        """Connected components of the active overlay among live nodes."""
        seen: set[str] = set()
        parts = []
        for start in self.live:
            if start in seen:
                continue
            part = {start}
            todo = [start]
            while todo:
                n = todo.pop()
                for p in self.nodes[n].active_view:
                    if p not in part and p not in self.dead:
                        part.add(p)
                        todo.append(p)
            seen |= part
            parts.append(part)
        return parts
