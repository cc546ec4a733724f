"""Epidemic broadcast trees over the active view (Plumtree), one per publisher.

A link is EAGER for a broadcast (the payload is pushed over it) or LAZY
(only ``IHave`` announcements travel). Which links are eager depends on the
publisher: a message travels the tree of the origin it names
(``Push.origin``, ``Ephemeral.origin``). One tree shared by every publisher
is shaped around one root, and a message from elsewhere climbs toward that
root and down the far side, about twice the depth; a tree per publisher is
as deep as the fewest-hops distance from it.

Each node keeps, per origin, the set of links eager for that origin (its
parent and its children), for at most ``MAX_ORIGINS`` origins, least
recently used dropped first (a forgotten origin is treated as new):

    first message of an origin     -> within ``flood_hops`` of the publisher:
       (no tree here yet)              pushed on every link (all eager);
                                      beyond: ``IHave(pull=True)`` on every
                                      link, pushed nowhere
    pull announcement received     -> after ``pull_wait_ms``, graft the announcer
                                      with the fewest hops
    payload received               -> the link it came by joins the tree
    graft received                 -> the link joins the tree (of the origin it
                                      names, or of the messages it asks for)
    later messages of the origin   -> pushed on the tree's links, announced
                                      on the others
    duplicate received             -> the link leaves the tree, a ``Prune``
                                      naming the message tells the other side
                                      (unless the copy came by fewer hops: then
                                      it becomes the parent and the old parent
                                      link is pruned instead)
    ``Prune`` received             -> the link leaves the tree of the message
                                      it names (ignored, and answered with a
                                      graft, when it is stale: the sender is
                                      this node's parent for that message)
    link gone                      -> it leaves every tree

So a publisher's first broadcast costs one payload per node, as every later
one does; beyond the first hops each hop costs a round trip more (announce,
graft, push). Because each node waits a moment and grafts the closest
announcer, the tree it leaves is close to a fewest-hops tree from that
publisher, and later broadcasts of that publisher are pushed down it. A
node whose distance to the source shrinks (a shorter duplicate or
announcement) announces the new distance; when an announcement shows a path
``hop_optimization_threshold`` hops shorter than the one the message came
by, the node grafts the shorter link and prunes the longer one.

Announcements of a message that does not arrive within ``graft_timeout_ms``
(``pull_wait_ms`` for pull announcements) trigger a ``Graft`` to the
announcer with the fewest hops, then to the next one every
``graft_retry_ms``, cycling through the announcers still linked for up to
``MAX_GRAFTS`` grafts; after that anti-entropy repairs it. When a node's
parent link fails nothing is grafted at once: that publisher's next
broadcast reaches the node by announcement and repairs the tree.

Messages that name no publisher here travel the tree of the pseudo-origin
``REPAIR_ORIGIN``: items that arrived by anti-entropy (they are offered for
pulling on every link, so a healed partition does not flood) and pushes
from an older sender, whose frames have no origin field.

Announcements are queued per peer and leave as one ``IHave`` per peer (two
when some are pull announcements) at the end of each entry point
(``flush``), so a burst of items costs one announcement message per link,
not one per item. At most ``MAX_SEEN`` message ids are remembered at once.

This module only knows message ids, origins, hops and links; the node
decides what a message is (an item to admit, an ephemeral broadcast to
deliver) and hands a ``resolve`` function to answer grafts. What the node
uses: ``record``, ``forward``, ``announce``, ``duplicate``, ``is_seen``,
``ref``, ``release``, ``flush`` (and ``pending``, to skip it when empty),
``tick``, ``next_deadline``, ``peer_down`` and the three message handlers.
"""

from __future__ import annotations

import heapq
import logging
from typing import Callable

from .config import GossipConfig
from .effects import Effect, Send
from .messages import Graft, IHave, Message, Prune, Push
from .wire import MAX_IDS as MAX_IHAVE_ENTRIES

log = logging.getLogger("grapevine.gossip")

NEVER = 1 << 62
MAX_MISSING = 10_000  # announced-but-missing ids tracked at once; floods beyond that wait for anti-entropy
# Message ids remembered at once (dedupe, grafts), about 250 bytes each with their heap entry:
# 12 MiB. A config mesh sees a few ids per minute; only a flood of ephemerals reaches this, and
# then the ids due to expire first are forgotten early (a stored item is still recognised by
# ``holds``; an ephemeral forgotten early may be delivered a second time).
MAX_SEEN = 50_000
MAX_GRAFTS = 6  # grafts per missing message before anti-entropy is left to repair it: at 5 % loss a graft round trip fails about 1 time in 10, six in a row about 1 in a million
MAX_ORIGINS = 64  # publishers whose trees a node keeps: a config mesh publishes from a handful of nodes; each tree is a few peer ids
# Tree of messages that name no publisher here: items re-spread after
# anti-entropy found them (a healed partition, a restart) and pushes from an
# older sender. Not a node id in either id scheme ("n12", "name@host:port").
REPAIR_ORIGIN = "*repair"

# resolve(msg_id, ref, hops) -> the message to send to a grafting peer, or None
Resolver = Callable[[bytes, object, int], "Message | None"]


class Broadcast:
    """Plumtree link states per publisher, message-id cache and graft timers of one node."""

    __slots__ = ("node_id", "holds", "config", "active", "resolve", "trees", "_flood_hops", "_seen", "_expiry",
                 "missing", "_timers", "pending", "_announced", "_closer")

    def __init__(
        self, node_id: str, config: GossipConfig, active: list[str], resolve: Resolver, holds: Callable[[bytes], bool]
    ) -> None:
        self.node_id = node_id
        self.holds = holds  # whether the node holds a message its id cache has forgotten (a stored item)
        self.config = config
        self.active = active  # the membership's live list, read-only here
        self.resolve = resolve
        # origin -> links eager for that origin's messages; dict order is recency (LRU first)
        self.trees: dict[str, set[str]] = {}
        self._flood_hops = config.flood_hops
        # msg_id -> [hops it arrived with, peer it came from (None: local), ref for grafts, origin ("" until forwarded)]
        self._seen: dict[bytes, list] = {}
        self._expiry: list[tuple[int, bytes]] = []  # heap of (forget_at, msg_id)
        # msg_id -> [graft deadline, [(announcer, hops) not grafted yet], grafts sent, [(grafted announcer, hops)]]
        self.missing: dict[bytes, list] = {}
        self._timers: list[tuple[int, bytes]] = []  # heap of (deadline, msg_id); stale entries skipped
        # lazy announcements not yet sent: peer -> [(msg_id, hops, pull), ...]; ``flush`` sends
        # them. Read-only outside: a driver may skip ``flush`` while it is empty.
        self.pending: dict[str, list[tuple[bytes, int, bool]]] = {}
        self._announced: list[str] | tuple = ()  # peers that announced the message just recorded
        self._closer: tuple[str, int] | None = None  # the closest announcer of the message just recorded

    # --- links -----------------------------------------------------------

    def peer_down(self, peer: str) -> None:
        for tree in self.trees.values():
            tree.discard(peer)
        self.pending.pop(peer, None)

    def eager_for(self, origin: str) -> list[str] | None:
        """Links eager for ``origin``'s messages, or None when no tree is kept for it."""
        tree = self.trees.get(origin)
        if tree is None:
            return None
        return [p for p in self.active if p in tree]

    def _tree(self, origin: str) -> set[str]:
        """The tree of ``origin``, created empty if none is kept; now the most recent."""
        trees = self.trees
        tree = trees.pop(origin, None)
        if tree is None:
            tree = set()
            while len(trees) >= MAX_ORIGINS:
                del trees[next(iter(trees))]
        trees[origin] = tree
        return tree

    def on_prune(self, peer: str, msg: Prune, now: int, out: list[Effect]) -> None:
        known = self._seen.get(msg.cause) if msg.cause else None
        if known is None or not known[3]:
            return  # names no message of a tree kept here: nothing to prune
        origin = known[3]
        if known[1] == peer:
            # Stale: this node has since taken ``peer`` as its parent for
            # that message. Graft again, in case the prune overtook ours.
            out.append(Send(peer=peer, msg=Graft(msg_ids=(), origin=origin)))
            return
        tree = self.trees.get(origin)
        if tree is not None:
            tree.discard(peer)

    # --- messages ----------------------------------------------------------

    def is_seen(self, msg_id: bytes) -> bool:
        return msg_id in self._seen

    def ref(self, msg_id: bytes) -> object:
        """What ``record`` kept to answer grafts for ``msg_id`` (None: nothing, or forgotten)."""
        known = self._seen.get(msg_id)
        return known[2] if known is not None else None

    def release(self, msg_id: bytes) -> None:
        """Stop answering grafts for ``msg_id`` (its payload is dropped); its id stays known."""
        known = self._seen.get(msg_id)
        if known is not None:
            known[2] = None

    def record(self, msg_id: bytes, peer: str | None, hops: int, ref: object, forget_at: int, now: int, out: list[Effect]) -> None:
        """A message arrived (or was published) for the first time.

        The tree it belongs to is known at ``forward`` (the message names its
        origin); the link it came by and a closer announcer are applied there.
        """
        seen = self._seen
        seen[msg_id] = [hops, peer, ref, ""]
        expiry = self._expiry
        heapq.heappush(expiry, (forget_at, msg_id))
        if len(seen) > MAX_SEEN:
            while len(seen) > MAX_SEEN and expiry:
                seen.pop(heapq.heappop(expiry)[1], None)
        self._closer = None
        entry = self.missing.pop(msg_id, None)
        if entry is None:
            self._announced = ()
            return
        self._announced = [a[0] for a in entry[1]]  # they have it: the next forward skips them
        if peer is not None and entry[1]:
            best_peer, best_hops = min(entry[1], key=lambda a: a[1])
            if hops - (best_hops + 1) >= self.config.hop_optimization_threshold:
                self._closer = (best_peer, best_hops)

    def duplicate(self, msg_id: bytes, peer: str, hops: int, out: list[Effect]) -> None:
        """``peer`` pushed something this node already had.

        Normally the link leaves the message's tree (``Prune``). If the copy
        came by a path with fewer hops than the first one, the node re-parents
        instead: it keeps this link eager and prunes the one the first copy
        came by, and tells its neighbours its shorter distance, so the tree
        the first broadcast leaves behind is a fewest-hops tree.
        """
        known = self._seen.get(msg_id)
        if known is not None:
            if hops < known[0] and known[1] is not None and known[1] != peer:
                if self._reparent(msg_id, known[1], peer, out):
                    self._improved(msg_id, hops, peer)
                    return
            if known[3]:
                tree = self.trees.get(known[3])
                if tree is not None:
                    tree.discard(peer)
        # The sender holds this link eager for the message's origin: prune it there.
        if peer in self.active:
            out.append(Send(peer=peer, msg=Prune(cause=msg_id)))

    def _improved(self, msg_id: bytes, hops: int, parent: str) -> None:
        """This node is now ``hops`` from the source via ``parent``: tell the others.

        The announcement costs an ``IHave`` entry per neighbour; a neighbour
        that hangs below this node learns its own shorter distance, and one
        that is now farther than a path through this node re-parents to it.
        """
        known = self._seen[msg_id]
        known[0] = hops
        known[1] = parent
        queue = self.pending
        for p in self.active:
            if p != parent:
                q = queue.get(p)
                if q is None:
                    queue[p] = [(msg_id, hops, False)]
                else:
                    q.append((msg_id, hops, False))

    def forward(self, msg_id: bytes, msg: Message, hops: int, exclude: str | None, out: list[Effect]) -> None:
        """Push ``msg`` down its origin's tree; announce it on the other links.

        Skips ``exclude`` (it came from there) and the peers that announced
        the message just ``record``-ed (they have it already). Without a tree
        for the origin here yet, the payload is pushed on every link within
        ``flood_hops`` of the publisher, and beyond that on none: the other
        links get pull announcements and graft it.
        """
        origin = getattr(msg, "origin", "") or REPAIR_ORIGIN
        known = self._seen.get(msg_id)
        if known is not None:
            known[3] = origin
        active = self.active
        fresh = origin not in self.trees
        tree = self._tree(origin)
        if exclude is None and not fresh and tree.isdisjoint(active):
            # The publisher's own tree has no live link (it was formed before
            # this node had peers, e.g. by a broadcast at start, or every link
            # of it has gone): nobody would get an eager copy, and every
            # neighbour would wait a graft timeout. Start the tree again.
            fresh = True
        if fresh and hops < self._flood_hops:
            # Near the publisher the payload is pushed on every link: each of
            # these nodes saves the pull round trip, and the rare duplicate
            # prunes its link as usual.
            tree.update(active)
        closer = self._closer
        self._closer = None
        if exclude is not None:
            tree.add(exclude)  # the parent for this origin
            if closer is not None and self._reparent(msg_id, exclude, closer[0], out):
                self._improved(msg_id, closer[1] + 1, closer[0])
        skip = self._announced
        self._announced = ()
        queue = self.pending
        for p in active:
            if p == exclude or p in skip:
                continue
            if p in tree:
                out.append(Send(peer=p, msg=msg))
            else:
                q = queue.get(p)
                if q is None:
                    queue[p] = [(msg_id, hops, fresh)]
                else:
                    q.append((msg_id, hops, fresh))

    def announce(self, msg_id: bytes, hops: int, exclude: str | None) -> None:
        """Offer a message on every link for pulling (no payload pushed).

        Used for items that arrived by anti-entropy: they have no publisher
        here, so they travel the tree of ``REPAIR_ORIGIN``, which the first
        repair forms by pulling, as a publisher's first broadcast does.
        """
        known = self._seen.get(msg_id)
        if known is not None and not known[3]:
            known[3] = REPAIR_ORIGIN
        queue = self.pending
        for p in self.active:
            if p != exclude:
                q = queue.get(p)
                if q is None:
                    queue[p] = [(msg_id, hops, True)]
                else:
                    q.append((msg_id, hops, True))

    def flush(self, out: list[Effect]) -> None:
        """Send the queued announcements, one ``IHave`` per peer."""
        if not self.pending:
            return
        for peer, entries in self.pending.items():
            for pull in (False, True):
                batch = [(e[0], e[1]) for e in entries if e[2] is pull]
                for start in range(0, len(batch), MAX_IHAVE_ENTRIES):
                    out.append(Send(peer=peer, msg=IHave(entries=tuple(batch[start : start + MAX_IHAVE_ENTRIES]), pull=pull)))
        self.pending.clear()

    def on_ihave(self, peer: str, msg: IHave, now: int, out: list[Effect]) -> None:
        seen = self._seen
        missing = self.missing
        threshold = self.config.hop_optimization_threshold
        pull = msg.pull
        wait = self.config.pull_wait_ms if pull else self.config.graft_timeout_ms
        for msg_id, hops in msg.entries:
            known = seen.get(msg_id)
            if known is not None:
                via = hops + 1
                if via < known[0]:
                    if known[1] == peer:
                        self._improved(msg_id, via, peer)  # our parent got closer to the source
                    elif known[1] is not None and known[0] - via >= threshold:
                        if self._reparent(msg_id, known[1], peer, out):
                            self._improved(msg_id, via, peer)
                continue
            entry = missing.get(msg_id)
            if entry is None:
                if len(missing) >= MAX_MISSING or self.holds(msg_id):
                    continue
                deadline = now + wait
                missing[msg_id] = [deadline, [(peer, hops)], 0, []]
                heapq.heappush(self._timers, (deadline, msg_id))
            else:
                entry[1].append((peer, hops))
                if pull and not entry[2] and entry[0] > now + wait:
                    entry[0] = now + wait  # nothing is pushed toward this node: graft soon
                    heapq.heappush(self._timers, (entry[0], msg_id))

    def _reparent(self, msg_id: bytes, old: str, new: str, out: list[Effect]) -> bool:
        """Take ``new`` (a shorter path) as the eager link instead of ``old``.

        The graft goes out even when ``new`` already looks eager from here:
        the other end may have pruned this link meanwhile.
        """
        active = self.active
        if new not in active or old == new:
            return False
        known = self._seen.get(msg_id)
        origin = known[3] if known is not None else ""
        if not origin:
            return False  # not forwarded (refused here): no tree to re-parent in
        tree = self._tree(origin)
        tree.add(new)
        out.append(Send(peer=new, msg=Graft(msg_ids=(), origin=origin)))
        if old in active and old in tree:
            tree.discard(old)
            out.append(Send(peer=old, msg=Prune(cause=msg_id)))
        return True

    def on_graft(self, peer: str, msg: Graft, now: int, out: list[Effect]) -> None:
        active = peer in self.active
        if msg.origin and active:
            self._tree(msg.origin).add(peer)
        seen = self._seen
        for msg_id in msg.msg_ids:
            known = seen.get(msg_id)
            if known is None:
                continue
            origin = known[3]
            if active and origin:
                self._tree(origin).add(peer)
            reply = self.resolve(msg_id, known[2], known[0] + 1)
            if reply is not None:
                if origin and type(reply) is Push and reply.origin != origin:
                    reply = Push(hops=reply.hops, item=reply.item, origin=origin)
                out.append(Send(peer=peer, msg=reply))

    # --- timers -------------------------------------------------------------

    def next_deadline(self) -> int:
        """The next graft due, or the next id to forget (an ephemeral's end)."""
        timers = self._timers
        missing = self.missing
        forget = self._expiry[0][0] if self._expiry else NEVER
        while timers:
            deadline, msg_id = timers[0]
            entry = missing.get(msg_id)
            if entry is not None and entry[0] == deadline:
                return deadline if deadline < forget else forget
            heapq.heappop(timers)
        return forget

    def tick(self, now: int, out: list[Effect]) -> None:
        timers = self._timers
        missing = self.missing
        grafts: dict[str, list[bytes]] = {}
        while timers and timers[0][0] <= now:
            deadline, msg_id = heapq.heappop(timers)
            entry = missing.get(msg_id)
            if entry is None or entry[0] != deadline:
                continue
            announcers = entry[1]
            tried = entry[3]
            if not announcers:
                # Every announcer grafted, nothing came: a graft or its answer
                # was lost. Try the ones still linked again, a bounded number
                # of times; after that anti-entropy repairs it.
                if entry[2] < MAX_GRAFTS:
                    announcers.extend(a for a in tried if a[0] in self.active)
                    tried.clear()
                if not announcers:
                    del missing[msg_id]
                    continue
            closest = min(range(len(announcers)), key=lambda i: announcers[i][1])
            peer, _hops = announcers.pop(closest)
            tried.append((peer, _hops))
            entry[2] += 1  # grafted: later announcements wait for the retry, not graft at once
            grafts.setdefault(peer, []).append(msg_id)
            entry[0] = now + self.config.graft_retry_ms
            heapq.heappush(timers, (entry[0], msg_id))
        for peer, ids in grafts.items():
            for start in range(0, len(ids), MAX_IHAVE_ENTRIES):
                out.append(Send(peer=peer, msg=Graft(msg_ids=tuple(ids[start : start + MAX_IHAVE_ENTRIES]))))
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            self._seen.pop(heapq.heappop(expiry)[1], None)
