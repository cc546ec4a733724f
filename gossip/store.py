"""The replicated map: a last-writer-wins register per key, plus a hash tree.

``ItemStore.put`` keeps an item only if it is newer than the one held for its
key. "Newer" is ``(version, digest)``: the version decides, and the content
digest breaks the (rare) tie of two different items under one version, so
every node keeps the same winner and two stores holding the same keys always
end up byte-identical.

The hash tree serves anti-entropy. Each key falls into one of ``LEAVES``
(256) leaves by a hash of the key; 16 leaves make one of ``TOP`` (16) top
nodes; the top nodes make the root. A node's digest is the XOR of the item
digests below it, so ``put`` updates the leaf, its top node and the root in
O(1) and the tree never needs rebuilding. Two stores have the same root iff
they hold the same items (up to a 2**-128 accident). The root is kept from
the first item on; the leaves and top nodes are built the first time
anti-entropy asks for them (two roots differed), and kept up to date from
then on. Most stores of a converged fleet are never asked, so a million
simulated stores hold a map and a root each, not a tree.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterator

from .item import SignedItem, Version
from .messages import KeyEntry
from .wire import DIGEST_LEN

TOP = 16  # top-level nodes: a SyncTop reply is 16 digests (~260 bytes)
LEAVES_PER_TOP = 16  # leaves under each top node: a SyncLeaves group is 16 digests
LEAVES = TOP * LEAVES_PER_TOP  # 256 leaves: ~4 keys each at 1,000 items, so a diff ships few entries
_ZERO = bytes(DIGEST_LEN)


@lru_cache(maxsize=1 << 16)
def leaf_of(key: str) -> int:
    """The leaf (0..255) that ``key`` belongs to; the same on every node."""
    return hashlib.blake2b(key.encode(), digest_size=2).digest()[0]


def _as_int(digest: bytes) -> int:
    return int.from_bytes(digest, "big")


def _as_bytes(value: int) -> bytes:
    return value.to_bytes(DIGEST_LEN, "big") if value else _ZERO


def is_newer(candidate: SignedItem, current: SignedItem | None) -> bool:
    """Whether ``candidate`` wins over ``current`` for the same key."""
    if current is None:
        return True
    cv, ov = candidate.version, current.version
    if cv != ov:
        return cv > ov
    return candidate.digest() > current.digest()


def entry_is_newer(entry: KeyEntry, current: SignedItem | None) -> bool:
    """Like ``is_newer`` for a summarised version (a ``SyncKeys`` entry)."""
    if current is None:
        return True
    _, wall, counter, author, digest = entry
    ev = Version(wall, counter, author)
    if ev != current.version:
        return ev > current.version
    return digest > current.digest()


class ItemStore:
    """In-memory LWW map ``key -> SignedItem`` with an incremental hash tree."""

    __slots__ = ("_items", "_tree", "_root", "_digests")

    def __init__(self, items: Iterator[SignedItem] | list[SignedItem] | tuple[SignedItem, ...] = ()) -> None:
        self._items: dict[str, SignedItem] = {}
        self._root = 0
        self._digests: set[bytes] = set()  # digests of the stored items: "do I hold this one?"
        # (leaf index -> XOR of item digests (absent: 0), top index -> XOR of its leaves,
        #  leaf index -> keys), or None until anti-entropy first needs it
        self._tree: tuple[dict[int, int], dict[int, int], dict[int, set[str]]] | None = None
        for item in items:
            self.put(item)

    def _built(self) -> tuple[dict[int, int], dict[int, int], dict[int, set[str]]]:
        tree = self._tree
        if tree is None:
            leaf_xor: dict[int, int] = {}
            top_xor: dict[int, int] = {}
            leaf_keys: dict[int, set[str]] = {}
            for key, item in self._items.items():
                change = _as_int(item.digest())
                leaf = leaf_of(key)
                keys = leaf_keys.get(leaf)
                if keys is None:
                    keys = leaf_keys[leaf] = set()
                keys.add(key)
                leaf_xor[leaf] = leaf_xor.get(leaf, 0) ^ change
                top = leaf // LEAVES_PER_TOP
                top_xor[top] = top_xor.get(top, 0) ^ change
            tree = self._tree = (leaf_xor, top_xor, leaf_keys)
        return tree

    # --- the map ----------------------------------------------------------

    def get(self, key: str) -> SignedItem | None:
        return self._items.get(key)

    def items(self) -> list[SignedItem]:
        return list(self._items.values())

    def keys(self) -> list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[SignedItem]:
        return iter(list(self._items.values()))

    def has_digest(self, digest: bytes) -> bool:
        """Whether the item with this digest is the one stored under its key."""
        return digest in self._digests

    def would_accept(self, item: SignedItem) -> bool:
        return is_newer(item, self._items.get(item.key))

    def put(self, item: SignedItem) -> bool:
        """Store ``item`` if it is newer than what the key holds; say whether it was."""
        key = item.key
        current = self._items.get(key)
        if not is_newer(item, current):
            return False
        digest = item.digest()
        change = _as_int(digest)
        self._digests.add(digest)
        if current is not None:
            old = current.digest()
            self._digests.discard(old)
            change ^= _as_int(old)
        self._items[key] = item
        self._root ^= change
        tree = self._tree
        if tree is not None:
            leaf_xor, top_xor, leaf_keys = tree
            leaf = leaf_of(key)
            if current is None:
                keys = leaf_keys.get(leaf)
                if keys is None:
                    keys = leaf_keys[leaf] = set()
                keys.add(key)
            leaf_xor[leaf] = leaf_xor.get(leaf, 0) ^ change
            top = leaf // LEAVES_PER_TOP
            top_xor[top] = top_xor.get(top, 0) ^ change
        return True

    # --- the hash tree ----------------------------------------------------

    def root_digest(self) -> bytes:
        return _as_bytes(self._root)

    def store_digest(self) -> bytes:
        """Equal on two nodes iff they hold the same items."""
        return _as_bytes(self._root)

    def top_digests(self) -> tuple[bytes, ...]:
        top = self._built()[1]
        return tuple(_as_bytes(top.get(i, 0)) for i in range(TOP))

    def leaf_digests(self, top: int) -> tuple[bytes, ...]:
        """The 16 leaf digests under top node ``top``."""
        base = top * LEAVES_PER_TOP
        leaf = self._built()[0]
        return tuple(_as_bytes(leaf.get(base + i, 0)) for i in range(LEAVES_PER_TOP))

    def leaf_digest(self, leaf: int) -> bytes:
        return _as_bytes(self._built()[0].get(leaf, 0))

    def leaf_keys(self, leaf: int) -> list[str]:
        return sorted(self._built()[2].get(leaf, ()))

    def leaf_entries(self, leaf: int) -> list[KeyEntry]:
        """Summaries ``(key, wall_ms, counter, author, digest)`` of one leaf, sorted by key."""
        out = []
        items = self._items
        for key in self.leaf_keys(leaf):
            item = items[key]
            v = item.version
            out.append((key, v.wall_ms, v.counter, v.author, item.digest()))
        return out

    def leaf_size(self, leaf: int) -> int:
        return len(self._built()[2].get(leaf, ()))

    def __repr__(self) -> str:
        return f"ItemStore({len(self._items)} items, root={self.root_digest().hex()[:12]})"
