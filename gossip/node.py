"""``GossipNode``: one node of the mesh, composed of the three state machines.

The node wires membership (``membership.py``), the broadcast tree
(``broadcast.py``) and anti-entropy (``antientropy.py``) around one item
store and one hybrid logical clock, and owns item admission:

1. a version not newer than the stored one is refused as ``Stale``;
2. a stamp more than ``config.max_skew_ms`` ahead of ``now`` is refused as
   ``FromTheFuture``;
3. the injected validator decides the rest (``None`` admits, a string is
   the refusal reason).

Entry points take ``now`` (ms) and return a list of effects; nothing else
leaves the node. ``next_deadline()`` says when ``on_tick`` next has work, so
a driver wakes a node only then. Logging is per event only at DEBUG level,
decided once at construction so the hot path pays nothing otherwise.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Callable, Sequence

from .antientropy import AntiEntropy
from .broadcast import Broadcast
from .config import GossipConfig
from .effects import Delivered, Effect, ItemAccepted, ItemRefused
from .errors import ProtocolError
from .hlc import HybridClock
from .item import SignedItem
from .membership import Membership
from .messages import (
    Disconnect,
    Ephemeral,
    ForwardJoin,
    Graft,
    IHave,
    Join,
    Message,
    Neighbor,
    NeighborReply,
    Ping,
    Pong,
    Prune,
    Push,
    Shuffle,
    ShuffleReply,
    SyncItems,
    SyncKeys,
    SyncLeaves,
    SyncRoot,
    SyncTop,
    Welcome,
)
from .store import ItemStore, is_newer
from .wire import DIGEST_LEN

log = logging.getLogger("grapevine.gossip")

# (candidate, currently stored or None, now) -> refusal reason, or None to admit
Validator = Callable[[SignedItem, "SignedItem | None", int], "str | None"]


class GossipNode:
    """Sans-I/O gossip node: feed it messages and time, carry out its effects."""

    def __init__(
        self,
        node_id: str,
        *,
        config: GossipConfig,
        rng: random.Random,
        validator: Validator | None = None,
        store: ItemStore | None = None,
        clock: HybridClock | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ProtocolError("node id must be a non-empty string")
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.validator = validator
        self.store = store if store is not None else ItemStore()
        self.clock = clock if clock is not None else HybridClock(max_drift_ms=config.max_skew_ms)
        self.membership = Membership(
            node_id, config, rng, on_up=self._peer_up, on_down=self._peer_down, on_revive=self._revived
        )
        self.tree = Broadcast(node_id, config, self.membership.active, self._resolve, self.store.has_digest)
        self._announcements = self.tree.pending  # flushed after a message only when not empty
        self.antientropy = AntiEntropy(node_id, config, rng, self.store, self._admit_synced)
        self._last_heard = self.membership.last_heard
        self._graveyard = self.membership.graveyard
        self._kept: collections.deque[tuple[bytes, int]] = collections.deque()  # ephemerals kept for grafts, oldest first
        self._kept_bytes = 0
        self._started = False
        self._now = 0
        self._debug = log.isEnabledFor(logging.DEBUG)
        # The parts that handle messages, indexed by the first field of _DISPATCH.
        self._parts = (self, self.membership, self.tree, self.antientropy)

    # --- views -------------------------------------------------------------

    @property
    def active_view(self) -> list[str]:
        return list(self.membership.active)

    @property
    def passive_view(self) -> list[str]:
        return list(self.membership.passive)

    def __repr__(self) -> str:
        return f"GossipNode({self.node_id!r}, active={self.membership.active}, items={len(self.store)})"

    # --- entry points --------------------------------------------------------

    def _begin(self, now: int) -> None:
        self._now = now
        if not self._started:
            self._started = True
            self.membership.start(now)
            self.antientropy.start(now)

    def join(self, contacts: Sequence[str], now: int) -> list[Effect]:
        """Join through ``contacts``; they are remembered and retried while isolated."""
        self._begin(now)
        out: list[Effect] = []
        self.membership.join(contacts, now, out)
        return out

    def on_message(self, peer: str, msg: Message, now: int) -> list[Effect]:
        # The hot path of a large simulation: kept free of avoidable calls.
        entry = _DISPATCH.get(type(msg))
        if entry is None:  # refused before anything changes
            raise ProtocolError(f"not a gossip message: {type(msg).__name__}")
        self._now = now
        if not self._started:
            self._begin(now)
        out: list[Effect] = []
        if peer == self.node_id:
            return out
        if self._debug:
            log.debug("%s <- %s %s", self.node_id, peer, type(msg).__name__)
        entry[1](self._parts[entry[0]], peer, msg, now, out)
        last_heard = self._last_heard
        if peer in last_heard:
            last_heard[peer] = now
        elif peer in self._graveyard:
            self.membership.heard(peer, now, out)
        if self._announcements:
            self.tree.flush(out)
        return out

    def on_send_failed(self, peer: str, now: int) -> list[Effect]:
        """The transport could not deliver to ``peer``, or its link closed."""
        self._begin(now)
        out: list[Effect] = []
        if self._debug:
            log.debug("%s: send to %s failed", self.node_id, peer)
        self.membership.failed(peer, now, out)
        self.tree.flush(out)
        return out

    def on_tick(self, now: int) -> list[Effect]:
        self._now = now
        if not self._started:
            self._begin(now)
        out: list[Effect] = []
        self.membership.tick(now, out)
        self.tree.tick(now, out)
        self.antientropy.tick(now, self.membership.active, self.membership.passive, out)
        self.tree.flush(out)
        return out

    def next_deadline(self) -> int:
        # Asked by the driver after every event: the membership keeps its
        # deadline cached.
        if not self._started:
            return 0
        m = self.membership
        t = m._deadline
        if t is None:
            t = m.next_deadline()
        b = self.tree.next_deadline()
        if b < t:
            t = b
        a = self.antientropy.next_sync
        return a if a < t else t

    def publish(self, item: SignedItem, now: int) -> list[Effect]:
        """Admit ``item`` locally (version, skew, validator), then broadcast it."""
        self._begin(now)
        out: list[Effect] = []
        if self._admit(item, None, 0, now, out):
            msg_id = item.digest()
            self.tree.record(msg_id, None, 0, item.key, now + self.config.message_cache_ms, now, out)
            self.tree.forward(msg_id, Push(hops=1, item=item, origin=self.node_id), 0, None, out)
            self.tree.flush(out)
        return out

    def broadcast(self, payload: bytes, now: int, ttl_ms: int) -> tuple[bytes, list[Effect]]:
        """Ephemeral broadcast: delivered once per node (here too, hops 0), never stored."""
        self._begin(now)
        if not isinstance(payload, bytes):
            raise ProtocolError("broadcast payload must be bytes")
        if not isinstance(ttl_ms, int) or ttl_ms <= 0:
            raise ProtocolError("broadcast ttl_ms must be a positive integer")
        ttl_ms = min(ttl_ms, self.config.max_ephemeral_ttl_ms)
        msg_id = self.rng.getrandbits(8 * DIGEST_LEN).to_bytes(DIGEST_LEN, "big")
        deadline = now + ttl_ms
        msg = Ephemeral(msg_id=msg_id, origin=self.node_id, deadline_ms=deadline, hops=1, payload=payload)
        out: list[Effect] = [Delivered(msg_id=msg_id, origin=self.node_id, payload=payload, hops=0)]
        self.tree.record(msg_id, None, 0, msg, deadline, now, out)
        self._keep_ephemeral(msg_id, len(payload))
        self.tree.forward(msg_id, msg, 0, None, out)
        self.tree.flush(out)
        return msg_id, out

    def leave(self, now: int) -> list[Effect]:
        """Say goodbye to every active peer; the node is then isolated."""
        self._begin(now)
        out: list[Effect] = []
        self.membership.leave(now, out)
        return out

    # --- items ---------------------------------------------------------------

    def _admit(self, item: SignedItem, source: str | None, hops: int, now: int, out: list[Effect]) -> bool:
        current = self.store.get(item.key)
        if current is not None and not is_newer(item, current):
            out.append(
                ItemRefused(
                    key=item.key,
                    reason="Stale",
                    source=source,
                    detail=f"version {tuple(item.version)} is not newer than the stored {tuple(current.version)}",
                )
            )
            return False
        if item.version.wall_ms > now + self.config.max_skew_ms:
            out.append(
                ItemRefused(
                    key=item.key,
                    reason="FromTheFuture",
                    source=source,
                    detail=f"stamped {item.version.wall_ms - now} ms ahead of this clock (limit {self.config.max_skew_ms} ms)",
                )
            )
            return False
        if self.validator is not None:
            try:
                reason = self.validator(item, current, now)
            except Exception as exc:  # a validator bug must not take the node down
                log.warning("%s: validator failed on %s: %r", self.node_id, item.key, exc)
                reason = "ValidatorError"
            if reason is not None:
                out.append(ItemRefused(key=item.key, reason=str(reason), source=source, detail="refused by the validator"))
                return False
        self.store.put(item)
        v = item.version
        self.clock.observe(v.wall_ms, v.counter, now)
        out.append(ItemAccepted(item=item, previous=current.version if current is not None else None, source=source, hops=hops))
        if self._debug:
            log.debug("%s: accepted %s %s from %s", self.node_id, item.key, tuple(v), source or "local")
        return True

    def _admit_synced(self, item: SignedItem, peer: str, now: int, out: list[Effect]) -> bool:
        """An item from anti-entropy: admit it, then announce it on every link.

        Announced, not pushed: a node catching up after a restart mostly
        receives items its neighbours hold already, and they ignore the
        announcement; neighbours that lack it (the other side of a healed
        partition) graft it, and from them on it travels eagerly down the tree.
        """
        if not self.store.would_accept(item):
            return False
        if not self._admit(item, peer, 1, now, out):
            return False
        msg_id = item.digest()
        if not self.tree.is_seen(msg_id):
            self.tree.record(msg_id, None, 1, item.key, now + self.config.message_cache_ms, now, out)
        self.tree.announce(msg_id, 1, peer)
        return True

    def _on_push(self, peer: str, msg: Push, now: int, out: list[Effect]) -> None:
        item = msg.item
        msg_id = item.digest()
        tree = self.tree
        if tree.is_seen(msg_id) or not self.store.would_accept(item):
            tree.duplicate(msg_id, peer, msg.hops, out)
            return
        forget_at = now + self.config.message_cache_ms
        if not self._admit(item, peer, msg.hops, now, out):
            tree.record(msg_id, peer, msg.hops, None, forget_at, now, out)
            return
        tree.record(msg_id, peer, msg.hops, item.key, forget_at, now, out)
        tree.forward(msg_id, Push(hops=msg.hops + 1, item=item, origin=msg.origin), msg.hops, peer, out)

    def _keep_ephemeral(self, msg_id: bytes, size: int) -> None:
        """Account an ephemeral kept to answer grafts; past the byte cap the oldest keep only their id."""
        kept, tree = self._kept, self.tree
        kept.append((msg_id, size))
        self._kept_bytes += size
        while kept and (self._kept_bytes > self.config.max_ephemeral_bytes or not tree.is_seen(kept[0][0])):
            old_id, old_size = kept.popleft()
            self._kept_bytes -= old_size
            if type(tree.ref(old_id)) is Ephemeral:
                tree.release(old_id)  # a graft for it now goes unanswered: the asker tries its next announcer

    def _on_ephemeral(self, peer: str, msg: Ephemeral, now: int, out: list[Effect]) -> None:
        tree = self.tree
        msg_id = msg.msg_id
        if tree.is_seen(msg_id):
            tree.duplicate(msg_id, peer, msg.hops, out)
            return
        if msg.deadline_ms < now:
            return  # expired: dropped, never delivered
        if msg.deadline_ms > now + self.config.max_ephemeral_ttl_ms + self.config.max_skew_ms:
            if self._debug:
                log.debug("%s: ephemeral from %s lives too long, dropped", self.node_id, msg.origin)
            return
        tree.record(msg_id, peer, msg.hops, msg, msg.deadline_ms, now, out)
        self._keep_ephemeral(msg_id, len(msg.payload))
        out.append(Delivered(msg_id=msg_id, origin=msg.origin, payload=msg.payload, hops=msg.hops))
        fwd = Ephemeral(msg_id=msg_id, origin=msg.origin, deadline_ms=msg.deadline_ms, hops=msg.hops + 1, payload=msg.payload)
        tree.forward(msg_id, fwd, msg.hops, peer, out)

    def _resolve(self, msg_id: bytes, ref: object, hops: int) -> Message | None:
        """The message a grafting peer asked for, with our hop count."""
        if ref is None:
            return None
        if type(ref) is str:
            item = self.store.get(ref)
            return Push(hops=hops, item=item) if item is not None else None
        if type(ref) is Ephemeral:
            if ref.deadline_ms < self._now:
                return None
            return Ephemeral(msg_id=ref.msg_id, origin=ref.origin, deadline_ms=ref.deadline_ms, hops=hops, payload=ref.payload)
        return None

    # --- wiring --------------------------------------------------------------

    def _peer_up(self, peer: str) -> None:
        pass  # a new link carries announcements until a graft or a push puts it in a tree

    def _peer_down(self, peer: str) -> None:
        self.tree.peer_down(peer)

    def _revived(self, peer: str, now: int, out: list[Effect]) -> None:
        self.antientropy.open(peer, out)


# Message class -> (handling part: 0 node, 1 membership, 2 tree, 3 anti-entropy,
# handler function). One table for all nodes: a dict of bound methods per node
# would cost about 2 KiB each, 200 MiB in a simulated fleet of 100,000.
_DISPATCH: dict[type, tuple[int, Callable[..., None]]] = {
    Join: (1, Membership.on_join),
    ForwardJoin: (1, Membership.on_forward_join),
    Welcome: (1, Membership.on_welcome),
    Neighbor: (1, Membership.on_neighbor),
    NeighborReply: (1, Membership.on_neighbor_reply),
    Disconnect: (1, Membership.on_disconnect),
    Shuffle: (1, Membership.on_shuffle),
    ShuffleReply: (1, Membership.on_shuffle_reply),
    Ping: (1, Membership.on_ping),
    Pong: (1, Membership.on_pong),
    Push: (0, GossipNode._on_push),
    Ephemeral: (0, GossipNode._on_ephemeral),
    IHave: (2, Broadcast.on_ihave),
    Graft: (2, Broadcast.on_graft),
    Prune: (2, Broadcast.on_prune),
    SyncRoot: (3, AntiEntropy.on_root),
    SyncTop: (3, AntiEntropy.on_top),
    SyncLeaves: (3, AntiEntropy.on_leaves),
    SyncKeys: (3, AntiEntropy.on_keys),
    SyncItems: (3, AntiEntropy.on_items),
}
