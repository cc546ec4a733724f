"""Push-pull anti-entropy: compare hash trees, ship only the differences.

Every ``antientropy_interval_ms`` (jittered) a node opens an exchange with a
random active peer (every ``antientropy_passive_every``-th time a passive
one, which also reaches across a healed partition; every 2nd time while the
active view is below its target size, so a few nodes whose views hold only
each other are not left out of news for long):

    initiator                              responder
    SyncRoot(root, count)          ->
                                   <-      SyncTop(16 digests, or () if equal)
    SyncLeaves(for each differing
      top node, its 16 leaf digests) ->
                                   <-      SyncKeys(differing leaves, their
                                             (key, version, digest) entries)
    SyncItems(items the responder
      lacks or holds older, keys
      it holds newer)              ->
                                   <-      SyncItems(the wanted items)

When the stores agree, an exchange costs one ``SyncRoot`` and one empty
``SyncTop`` (about 50 bytes), whatever the item count and fleet size. The
tree is only descended where digests differ. Batches are bounded
(``max_sync_items``, ``max_sync_bytes``, ``MAX_KEY_ENTRIES``); when a batch
was cut short the initiator runs another exchange with the same peer soon
after, so a fresh node catches up in a few quick rounds.

The module is stateless between messages apart from its timer: each message
carries what the next step needs. Admission of received items is the node's
job (``admit``), which also re-broadcasts accepted items through the tree:
it announces them on every link, neighbours that lack them graft them, and
from there they travel eagerly.
"""

from __future__ import annotations

from typing import Callable, Collection

from .config import GossipConfig
from .effects import Effect, Send
from .item import SignedItem
from .messages import SyncItems, SyncKeys, SyncLeaves, SyncRoot, SyncTop
from .store import LEAVES_PER_TOP, TOP, ItemStore, entry_is_newer
from .wire import MAX_KEY_ENTRIES

NEVER = 1 << 62
# While the active view is below its target size, at least every 2nd
# exchange goes to a passive peer: a few nodes whose views hold only each
# other (an island after a boot storm) still hear news within seconds.
SHORT_VIEW_PASSIVE_EVERY = 2
FOLLOW_UP_MS = 100  # a cut-short exchange continues after 0.1 s, not a full interval
_IN_SYNC = SyncTop(digests=())

# admit(item, source, now, out) -> whether it was accepted
Admit = Callable[[SignedItem, str, int, list], bool]


class AntiEntropy:
    def __init__(self, node_id: str, config: GossipConfig, rng, store: ItemStore, admit: Admit) -> None:
        self.node_id = node_id
        self.config = config
        self.rng = rng
        self.store = store
        self.admit = admit
        self.next_sync = NEVER
        self.rounds = 0
        self._follow_up: str | None = None
        self._item_limit = min(config.max_sync_items, 256)

    def _jitter(self, period: int) -> int:
        j = self.config.jitter
        return max(1, int(period * (1.0 + j * (2.0 * self.rng.random() - 1.0)))) if j else period

    def start(self, now: int) -> None:
        self.next_sync = now + self._jitter(self.config.antientropy_interval_ms)

    def next_deadline(self) -> int:
        return self.next_sync

    def tick(self, now: int, active: list[str], passive: Collection[str], out: list[Effect]) -> None:
        if now < self.next_sync:
            return
        self.next_sync = now + self._jitter(self.config.antientropy_interval_ms)
        peer = self._follow_up
        self._follow_up = None
        if peer is None:
            self.rounds += 1
            every = self.config.antientropy_passive_every
            if every and len(active) < self.config.active_view_size:
                every = min(every, SHORT_VIEW_PASSIVE_EVERY)
            pool = passive if (passive and (not active or (every and self.rounds % every == 0))) else active
            if not pool:
                return
            peer = list(pool)[self.rng.randrange(len(pool))]  # the passive view is a dict (an ordered set)
        self.open(peer, out)

    def open(self, peer: str, out: list[Effect]) -> None:
        """Start an exchange with ``peer`` now."""
        store = self.store
        out.append(Send(peer=peer, msg=SyncRoot(root=store.root_digest(), count=len(store))))

    # --- responder ----------------------------------------------------------

    def on_root(self, peer: str, msg: SyncRoot, now: int, out: list[Effect]) -> None:
        if msg.root == self.store.root_digest():
            out.append(Send(peer=peer, msg=_IN_SYNC))
        else:
            out.append(Send(peer=peer, msg=SyncTop(digests=self.store.top_digests())))

    def on_leaves(self, peer: str, msg: SyncLeaves, now: int, out: list[Effect]) -> None:
        store = self.store
        leaves: list[int] = []
        entries: list = []
        for top, theirs in msg.groups:
            if top >= TOP or len(theirs) != LEAVES_PER_TOP:
                continue
            mine = store.leaf_digests(top)
            for j in range(LEAVES_PER_TOP):
                if mine[j] == theirs[j]:
                    continue
                leaf = top * LEAVES_PER_TOP + j
                size = store.leaf_size(leaf)
                if leaves and len(entries) + size > MAX_KEY_ENTRIES:
                    break
                leaves.append(leaf)
                entries.extend(store.leaf_entries(leaf)[:MAX_KEY_ENTRIES])
        if leaves:
            out.append(Send(peer=peer, msg=SyncKeys(leaves=tuple(leaves), entries=tuple(entries))))

    # --- initiator ----------------------------------------------------------

    def on_top(self, peer: str, msg: SyncTop, now: int, out: list[Effect]) -> None:
        if not msg.digests or len(msg.digests) != TOP:
            return
        store = self.store
        mine = store.top_digests()
        groups = tuple((i, store.leaf_digests(i)) for i in range(TOP) if mine[i] != msg.digests[i])
        if groups:
            out.append(Send(peer=peer, msg=SyncLeaves(groups=groups)))

    def on_keys(self, peer: str, msg: SyncKeys, now: int, out: list[Effect]) -> None:
        store = self.store
        theirs = {e[0]: e for e in msg.entries}
        push: list[SignedItem] = []
        budget = self.config.max_sync_bytes
        cut_short = False
        for leaf in msg.leaves:
            for key in store.leaf_keys(leaf):
                mine = store.get(key)
                entry = theirs.get(key)
                if mine is None or (entry is not None and not _beats(mine, entry)):
                    continue
                if len(push) >= self._item_limit or (push and len(mine.payload) > budget):
                    cut_short = True
                    break
                budget -= len(mine.payload)
                push.append(mine)
            if cut_short:
                break
        want = [key for key, entry in theirs.items() if entry_is_newer(entry, store.get(key))]
        if len(want) > self._item_limit:
            want = want[: self._item_limit]
            cut_short = True
        if push or want:
            out.append(Send(peer=peer, msg=SyncItems(items=tuple(push), want=tuple(want))))
        if cut_short or len(msg.entries) >= MAX_KEY_ENTRIES:
            self._follow_up = peer
            self.next_sync = min(self.next_sync, now + FOLLOW_UP_MS)

    # --- both ---------------------------------------------------------------

    def on_items(self, peer: str, msg: SyncItems, now: int, out: list[Effect]) -> None:
        for item in msg.items:
            self.admit(item, peer, now, out)
        if msg.want:
            store = self.store
            items: list[SignedItem] = []
            budget = self.config.max_sync_bytes
            for key in msg.want[: self._item_limit]:
                item = store.get(key)
                if item is None:
                    continue
                if items and len(item.payload) > budget:
                    break
                budget -= len(item.payload)
                items.append(item)
            if items:
                out.append(Send(peer=peer, msg=SyncItems(items=tuple(items), want=())))


def _beats(item: SignedItem, entry: tuple) -> bool:
    """Whether our ``item`` is newer than the summarised ``entry`` for its key."""
    return not entry_is_newer(entry, item) and not (
        entry[1] == item.version.wall_ms
        and entry[2] == item.version.counter
        and entry[3] == item.version.author
        and entry[4] == item.digest()
    )

