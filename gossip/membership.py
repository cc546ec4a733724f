"""Peer membership with partial views (HyParView), and every peer transition.

Everything that moves a peer between the views lives here. A peer is in at
most one place:

    ACTIVE    a neighbour: symmetric link, probed, carries the broadcast tree
    PASSIVE   a spare, refreshed by shuffles, promoted to repair the active view
    BURIED    recently failed: remembered (bounded, with a TTL) and pinged now
              and then, so a partition that made both sides bury each other
              still has paths back once the links return
    UNKNOWN   none of the above

Allowed moves are listed in ``TRANSITIONS``; anything else is a bug and
raises ``ProtocolError`` naming it. A neighbour request in flight is tracked
apart (``pending``), with a timeout.

Protocol, in short: a joiner sends ``Join`` to a contact, which adopts it
(``Welcome``) and sends ``ForwardJoin`` walks to its other neighbours; a walk
adopts the joiner where its TTL ends and leaves it in a passive view at
``passive_walk_length``. When a neighbour fails (``on_send_failed``, a probe
timeout, a ``Disconnect``), a passive peer is asked to take its place
(``Neighbor``, high priority, which the receiver may not refuse, when this
node has no neighbour left or, with at most half its view, after four
refusals in a row). ``Shuffle`` walks exchange samples of the views.
Probes (``Ping``) go only to neighbours that have been silent for a probe
interval, so a busy link costs nothing extra, and from the end of the link
with the smaller id: the other end hears the pings and watches for silence
(past half the probe timeout it asks too: the smaller end may be hearing
its traffic and have nothing to send). A ping over a link the receiver no
longer holds is answered with ``Disconnect``, which closes half-open links.

Work per tick is O(view size); per message O(1) apart from scans of the
active view (about 5 entries).
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Callable, Sequence

from .config import GossipConfig
from .effects import Effect, PeerDown, PeerUp, Send
from .errors import ProtocolError
from .messages import Disconnect, ForwardJoin, Join, Neighbor, NeighborReply, Ping, Pong, Shuffle, ShuffleReply, Welcome

log = logging.getLogger("grapevine.gossip")

NEVER = 1 << 62  # "no deadline": later than any simulated or real millisecond clock

UNKNOWN, PASSIVE, ACTIVE, BURIED = "unknown", "passive", "active", "buried"
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (UNKNOWN, ACTIVE),  # join, welcome, accepted neighbour request
        (UNKNOWN, PASSIVE),  # forward-join, shuffle sample
        (UNKNOWN, BURIED),  # a one-off send (shuffle reply, rejoin) failed
        (PASSIVE, ACTIVE),  # repair
        (PASSIVE, BURIED),  # a neighbour request to it failed
        (PASSIVE, UNKNOWN),  # evicted by a fuller sample, or left for good
        (ACTIVE, PASSIVE),  # dropped to make room, or it disconnected
        (ACTIVE, BURIED),  # send failure or probe timeout
        (ACTIVE, UNKNOWN),  # it left for good
        (BURIED, PASSIVE),  # it answered again (revived)
        (BURIED, ACTIVE),  # it joined or asked to be a neighbour again
        (BURIED, UNKNOWN),  # remembered too long, or evicted by newer failures
    }
)

_JOIN = Join()
_WELCOME = Welcome()
_PING = Ping()
_PONG = Pong()
_ACCEPT = NeighborReply(accepted=True)
_REFUSE = NeighborReply(accepted=False)
_DISCONNECT = Disconnect(leaving=False)
_LEAVING = Disconnect(leaving=True)
_MAX_REPAIR_BACKOFF = 5  # repair attempts slow down to 2**5 intervals when every spare refuses
# A node left with at most half its active view, whose last 4 neighbour requests were all
# refused, sends one request with high priority (the receiver makes room). Full nodes refuse
# low-priority requests, so without this two or three nodes linked only to each other (after
# a partition heals, or a boot storm) could stay an island that broadcasts never reach.
_ESCALATE_AFTER_REFUSALS = 4


class Membership:
    """HyParView active/passive views of one node."""

    def __init__(
        self,
        node_id: str,
        config: GossipConfig,
        rng,
        *,
        on_up: Callable[[str], None],
        on_down: Callable[[str], None],
        on_revive: Callable[[str, int, list], None],
    ) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self._on_up = on_up
        self._on_down = on_down
        self._on_revive = on_revive
        self.active: list[str] = []
        # Spare peers in arrival order. A dict used as an ordered set: the
        # views are checked for a peer on every walk hop and shuffle entry,
        # and a list scan compares (and so touches) every id in it.
        self.passive: dict[str, None] = {}
        self.last_heard: dict[str, int] = {}  # active peer -> last time anything arrived from it
        self.pending: dict[str, int] = {}  # neighbour request in flight -> timeout
        self.graveyard: dict[str, int] = {}  # buried peer -> when it failed (insertion order = age)
        self.contacts: list[str] = []  # join addresses, kept for retries while isolated
        self.left = False  # said goodbye (leave): takes no neighbour until it joins again
        self._shuffle_sample: tuple[str, ...] = ()
        self._repair_backoff = 0
        self._refusals = 0  # neighbour requests refused since the active view last grew
        self.next_probe = NEVER
        self.next_shuffle = NEVER
        self.next_repair = NEVER
        self.next_join = NEVER
        self.next_rejoin = NEVER
        # next_deadline() cached: None after anything it depends on changed
        # (views, pending requests, graveyard, contacts, timers). The driver
        # asks after every event, and most events change none of these.
        self._deadline: int | None = None

    # --- timers ----------------------------------------------------------

    def _jitter(self, period: int) -> int:
        j = self.config.jitter
        if not j:
            return period
        return max(1, int(period * (1.0 + j * (2.0 * self.rng.random() - 1.0))))

    def start(self, now: int) -> None:
        """Arm the periodic timers (a node's first moment)."""
        self._deadline = None
        self.next_probe = now + self._jitter(self.config.probe_interval_ms)
        self.next_shuffle = now + self._jitter(self.config.shuffle_interval_ms)

    def next_deadline(self) -> int:
        t = self._deadline
        if t is None:
            t = self._deadline = self._compute_deadline()
        return t

    def _compute_deadline(self) -> int:
        active = self.active
        if active:
            t = self.next_probe if self.next_probe < self.next_shuffle else self.next_shuffle
            if len(active) < self.config.active_view_size and self.passive and self.next_repair < t:
                t = self.next_repair
        else:
            t = NEVER
            if self.passive and self.next_repair < t:
                t = self.next_repair
            if self.contacts and self.next_join < t:
                t = self.next_join
        if self.graveyard and self.next_rejoin < t:
            t = self.next_rejoin
        if self.pending:
            for deadline in self.pending.values():
                if deadline < t:
                    t = deadline
        return t

    # --- state and transitions ------------------------------------------

    def state_of(self, peer: str) -> str:
        if peer in self.last_heard:
            return ACTIVE
        if peer in self.graveyard:
            return BURIED
        if peer in self.passive:
            return PASSIVE
        return UNKNOWN

    def _leave_state(self, peer: str, new: str, out: list[Effect]) -> str:
        self._deadline = None
        old = self.state_of(peer)
        if (old, new) not in TRANSITIONS:
            raise ProtocolError(f"peer {peer!r}: no transition from {old} to {new}")
        if old == ACTIVE:
            self.active.remove(peer)
            del self.last_heard[peer]
            out.append(PeerDown(peer=peer))
            self._on_down(peer)
        elif old == PASSIVE:
            del self.passive[peer]
        elif old == BURIED:
            del self.graveyard[peer]
        return old

    def _to_active(self, peer: str, now: int, out: list[Effect]) -> None:
        if peer == self.node_id or peer in self.last_heard:
            return
        if len(self.active) >= self.config.active_view_size:
            self._drop_random_active(out)
        self._leave_state(peer, ACTIVE, out)
        self.active.append(peer)
        self.last_heard[peer] = now
        self.pending.pop(peer, None)
        self._repair_backoff = 0
        self._refusals = 0
        out.append(PeerUp(peer=peer))
        self._on_up(peer)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s joins the active view %s", self.node_id, peer, self.active)

    def _to_passive(self, peer: str, out: list[Effect]) -> None:
        if peer == self.node_id or peer in self.passive:
            return
        self._leave_state(peer, PASSIVE, out)
        self._make_room_in_passive(())
        self.passive[peer] = None

    def _make_room_in_passive(self, prefer: Sequence[str]) -> None:
        passive = self.passive
        if len(passive) < self.config.passive_view_size:
            return
        for p in prefer:
            if p in passive:
                del passive[p]
                return
        del passive[next(islice(passive, self.rng.randrange(len(passive)), None))]

    def _bury(self, peer: str, now: int, out: list[Effect]) -> None:
        if peer == self.node_id or peer in self.graveyard:
            return
        self._leave_state(peer, BURIED, out)
        if not self.graveyard:
            self.next_rejoin = now + self._jitter(self.config.rejoin_interval_ms)
        self.graveyard[peer] = now
        while len(self.graveyard) > self.config.graveyard_size:
            del self.graveyard[next(iter(self.graveyard))]

    def _forget(self, peer: str, out: list[Effect]) -> None:
        self._deadline = None
        if self.state_of(peer) != UNKNOWN:
            self._leave_state(peer, UNKNOWN, out)
        self.pending.pop(peer, None)

    def _drop_random_active(self, out: list[Effect]) -> None:
        peer = self.active[self.rng.randrange(len(self.active))]
        out.append(Send(peer=peer, msg=_DISCONNECT))
        self._leave_state(peer, PASSIVE, out)
        self._make_room_in_passive(())
        self.passive[peer] = None

    # --- entry points used by the node ------------------------------------

    def join(self, contacts: Sequence[str], now: int, out: list[Effect]) -> None:
        self._deadline = None
        self.left = False
        for c in contacts:
            if c != self.node_id and c not in self.contacts:
                self.contacts.append(c)
        pool = [c for c in contacts if c != self.node_id] or self.contacts
        if pool:
            out.append(Send(peer=pool[self.rng.randrange(len(pool))], msg=_JOIN))
            self.next_join = now + self._jitter(self.config.join_retry_ms)

    def heard(self, peer: str, now: int, out: list[Effect]) -> None:
        """Anything arrived from ``peer``: it is alive."""
        if peer in self.last_heard:
            self.last_heard[peer] = now
        elif peer in self.graveyard:
            self._to_passive(peer, out)
            if len(self.active) < self.config.active_view_size or self.rng.random() < self.config.rejoin_link_probability:
                self._ask_neighbor(peer, True, now, out)
            self._on_revive(peer, now, out)

    def failed(self, peer: str, now: int, out: list[Effect]) -> None:
        """``peer`` could not be reached: bury it, repair the view if it was a neighbour."""
        if peer == self.node_id or self.left:
            return
        self._deadline = None
        self.pending.pop(peer, None)
        was_active = peer in self.last_heard
        self._bury(peer, now, out)
        if was_active or len(self.active) < self.config.active_view_size:
            self._repair_backoff = 0
            self._repair(now, out)

    def leave(self, now: int, out: list[Effect]) -> None:
        self._deadline = None
        for peer in list(self.active):
            out.append(Send(peer=peer, msg=_LEAVING))
            self._leave_state(peer, UNKNOWN, out)
        self.passive.clear()
        self.pending.clear()
        self.graveyard.clear()
        self.contacts.clear()
        self.left = True

    def _refuse_if_left(self, peer: str, out: list[Effect]) -> bool:
        """After ``leave``, whoever offers a link is told that this node is leaving."""
        if self.left:
            out.append(Send(peer=peer, msg=_LEAVING))
        return self.left

    def _ask_neighbor(self, peer: str, high: bool, now: int, out: list[Effect]) -> None:
        if peer in self.pending or peer in self.last_heard:
            return
        self._deadline = None
        self.pending[peer] = now + self.config.neighbor_timeout_ms
        out.append(Send(peer=peer, msg=Neighbor(high_priority=high)))

    def _repair(self, now: int, out: list[Effect]) -> None:
        self._deadline = None
        deficit = self.config.active_view_size - len(self.active) - len(self.pending)
        if deficit > 0:
            pending = self.pending
            candidates = [p for p in self.passive if p not in pending] if pending else list(self.passive)
            if candidates:
                high = not self.active or (
                    self._refusals >= _ESCALATE_AFTER_REFUSALS and 2 * len(self.active) <= self.config.active_view_size
                )
                if high:
                    self._refusals = 0
                for peer in self.rng.sample(candidates, min(deficit, len(candidates))):
                    self._ask_neighbor(peer, high, now, out)
                    high = not self.active  # at most one escalated request per repair
        backoff = min(self._repair_backoff, _MAX_REPAIR_BACKOFF)
        self.next_repair = now + self._jitter(self.config.repair_interval_ms << backoff)

    # --- message handlers -------------------------------------------------

    def on_join(self, peer: str, msg: Join, now: int, out: list[Effect]) -> None:
        if peer == self.node_id or self._refuse_if_left(peer, out):
            return
        fresh = peer not in self.last_heard
        self._to_active(peer, now, out)
        out.append(Send(peer=peer, msg=_WELCOME))
        if fresh:
            walk = ForwardJoin(joiner=peer, ttl=self.config.active_walk_length)
            for other in self.active:
                if other != peer:
                    out.append(Send(peer=other, msg=walk))

    def on_welcome(self, peer: str, msg: Welcome, now: int, out: list[Effect]) -> None:
        if self._refuse_if_left(peer, out):
            return
        self._to_active(peer, now, out)

    def on_forward_join(self, peer: str, msg: ForwardJoin, now: int, out: list[Effect]) -> None:
        joiner = msg.joiner
        if joiner == self.node_id or joiner in self.last_heard or self.left:
            return
        ttl = min(msg.ttl, self.config.active_walk_length)  # a forged huge TTL must not walk forever
        if ttl == 0 or len(self.active) <= 1:
            self._to_active(joiner, now, out)
            out.append(Send(peer=joiner, msg=_WELCOME))
            return
        if ttl == self.config.passive_walk_length:
            self._to_passive(joiner, out)
        nxt = self._next_hop(peer, joiner)
        if nxt is None:
            self._to_active(joiner, now, out)
            out.append(Send(peer=joiner, msg=_WELCOME))
            return
        out.append(Send(peer=nxt, msg=ForwardJoin(joiner=joiner, ttl=ttl - 1)))

    def _next_hop(self, a: str, b: str) -> str | None:
        """A random neighbour other than ``a`` and ``b`` (None if there is none).

        The same pick, from the same draw, as
        ``choices[rng.randrange(len(choices))]`` over the neighbours in view
        order minus ``a`` and ``b``, but without building that list in the
        common case (at most one of them is a neighbour): this runs for every
        hop of every join walk and shuffle.
        """
        active = self.active
        last_heard = self.last_heard
        if a in last_heard:
            if b in last_heard and b != a:
                choices = [p for p in active if p != a and p != b]
                return choices[self.rng.randrange(len(choices))] if choices else None
            skip = active.index(a)
        elif b in last_heard:
            skip = active.index(b)
        else:
            skip = -1
        count = len(active) if skip < 0 else len(active) - 1
        if not count:
            return None
        i = self.rng.randrange(count)
        return active[i + 1 if 0 <= skip <= i else i]

    def on_neighbor(self, peer: str, msg: Neighbor, now: int, out: list[Effect]) -> None:
        if peer == self.node_id or self._refuse_if_left(peer, out):
            return
        if peer in self.last_heard or msg.high_priority or len(self.active) < self.config.active_view_size:
            self._to_active(peer, now, out)
            out.append(Send(peer=peer, msg=_ACCEPT))
        else:
            self._to_passive(peer, out)
            out.append(Send(peer=peer, msg=_REFUSE))

    def on_neighbor_reply(self, peer: str, msg: NeighborReply, now: int, out: list[Effect]) -> None:
        self._deadline = None
        self.pending.pop(peer, None)
        if msg.accepted and self._refuse_if_left(peer, out):
            return
        if msg.accepted:
            # Also when our request had timed out: it holds us as a neighbour, so hold it too.
            self._to_active(peer, now, out)
        else:
            self._repair_backoff += 1
            self._refusals += 1
            self._to_passive(peer, out)

    def on_disconnect(self, peer: str, msg: Disconnect, now: int, out: list[Effect]) -> None:
        self._deadline = None
        self.pending.pop(peer, None)
        if msg.leaving:
            self._forget(peer, out)
        elif peer in self.last_heard:
            self._leave_state(peer, PASSIVE, out)
            self._make_room_in_passive(())
            self.passive[peer] = None
        if len(self.active) < self.config.active_view_size:
            self._repair_backoff = 0
            self.next_repair = min(self.next_repair, now)

    def on_shuffle(self, peer: str, msg: Shuffle, now: int, out: list[Effect]) -> None:
        if msg.origin == self.node_id:
            return
        ttl = min(msg.ttl, self.config.shuffle_walk_length)  # a forged huge TTL must not walk forever
        if ttl > 0 and len(self.active) > 1:
            nxt = self._next_hop(peer, msg.origin)
            if nxt is not None:
                out.append(Send(peer=nxt, msg=Shuffle(origin=msg.origin, ttl=ttl - 1, peers=msg.peers)))
                return
        passive = self.passive
        pool = [p for p in passive if p != msg.origin] if msg.origin in passive else list(passive)
        reply = tuple(self.rng.sample(pool, min(len(pool), len(msg.peers))))
        out.append(Send(peer=msg.origin, msg=ShuffleReply(peers=reply)))
        self._integrate(msg.peers, reply, out)

    def on_shuffle_reply(self, peer: str, msg: ShuffleReply, now: int, out: list[Effect]) -> None:
        self._integrate(msg.peers, self._shuffle_sample, out)
        self._shuffle_sample = ()

    def _integrate(self, peers: Sequence[str], sent: Sequence[str], out: list[Effect]) -> None:
        if self.left:
            return  # an empty passive view keeps a node that left from repairing its way back
        self._deadline = None
        me, last_heard, passive, graveyard = self.node_id, self.last_heard, self.passive, self.graveyard
        room = self.config.passive_view_size
        for p in peers:
            if p == me or p in last_heard or p in passive or p in graveyard:
                continue
            if len(passive) >= room:
                self._make_room_in_passive(sent)
            passive[p] = None

    def on_ping(self, peer: str, msg: Ping, now: int, out: list[Effect]) -> None:
        # A ping over a link this node no longer holds gets a Disconnect, so a
        # half-open link (our Disconnect was lost) is closed on the other side too.
        out.append(Send(peer=peer, msg=_PONG if peer in self.last_heard else _DISCONNECT))

    def on_pong(self, peer: str, msg: Pong, now: int, out: list[Effect]) -> None:
        pass  # heard() already noted that it is alive

    # --- periodic work ------------------------------------------------------

    def tick(self, now: int, out: list[Effect]) -> None:
        if now < self.next_deadline():
            return  # nothing is due (a timer of another part woke the node)
        self._deadline = None
        cfg = self.config
        if self.pending:
            for peer, deadline in list(self.pending.items()):
                if now >= deadline:
                    del self.pending[peer]
                    self.failed(peer, now, out)
        if self.active and now >= self.next_probe:
            quiet = now - cfg.probe_interval_ms
            silent = now - cfg.probe_timeout_ms // 2
            dead = now - cfg.probe_timeout_ms
            me = self.node_id
            for peer in list(self.active):
                heard = self.last_heard[peer]
                if heard <= dead:
                    self.failed(peer, now, out)
                elif heard <= quiet and (me < peer or heard <= silent):
                    # One end of each link probes (the smaller id); the other
                    # hears the pings and watches for silence. But the smaller
                    # end pings only when it hears nothing, and it hears the
                    # other end's traffic while it may have nothing to send
                    # itself: so past half the timeout the watching end asks
                    # too, rather than declare a live neighbour failed.
                    out.append(Send(peer=peer, msg=_PING))
            self.next_probe = now + self._jitter(cfg.probe_interval_ms)
        if len(self.active) < cfg.active_view_size and self.passive and now >= self.next_repair:
            if self.pending:
                self.next_repair = now + self._jitter(cfg.repair_interval_ms)
            else:
                self._repair_backoff += 1
                self._repair(now, out)
        if not self.active and self.contacts and now >= self.next_join:
            out.append(Send(peer=self.contacts[self.rng.randrange(len(self.contacts))], msg=_JOIN))
            self.next_join = now + self._jitter(cfg.join_retry_ms)
        if self.active and now >= self.next_shuffle:
            self._shuffle(out)
            self.next_shuffle = now + self._jitter(cfg.shuffle_interval_ms)
        if self.graveyard and now >= self.next_rejoin:
            self._rejoin(now, out)
            self.next_rejoin = now + self._jitter(cfg.rejoin_interval_ms)

    def _shuffle(self, out: list[Effect]) -> None:
        cfg = self.config
        target = self.active[self.rng.randrange(len(self.active))]
        others = [p for p in self.active if p != target]
        sample = [self.node_id]
        sample += self.rng.sample(others, min(cfg.shuffle_active_count, len(others)))
        sample += self.rng.sample(list(self.passive), min(cfg.shuffle_passive_count, len(self.passive)))
        self._shuffle_sample = tuple(sample[1:])
        out.append(Send(peer=target, msg=Shuffle(origin=self.node_id, ttl=cfg.shuffle_walk_length, peers=tuple(sample))))

    def _rejoin(self, now: int, out: list[Effect]) -> None:
        """Ping one buried peer: if it answers, ``heard`` revives it."""
        horizon = now - self.config.graveyard_ttl_ms
        while self.graveyard:
            oldest = next(iter(self.graveyard))
            if self.graveyard[oldest] > horizon:
                break
            del self.graveyard[oldest]
        if self.graveyard:
            buried = list(self.graveyard)
            out.append(Send(peer=buried[self.rng.randrange(len(buried))], msg=_PING))
