"""Plugs the real gossip core (``grapevine.gossip``) into the engine.

Nothing of the protocol is re-implemented here: each simulated host runs a
``GossipNode`` with its own seeded ``random.Random`` and an ``ItemStore``
that outlives crashes. Messages travel as objects (the core never sees
bytes in the simulator), but every one is sized by the real codec's
``encoded_size``, so byte counts are what the daemon would put on the wire.
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from .engine import ACCEPTED, DELIVERED, PEER_DOWN, PEER_UP, REFUSED, SEND, Model


class PlumtreeModel(Model):
    """The gossip core as the engine sees it."""

    name = "plumtree"

    def __init__(self, config: Any = None, *, validator: Any = None) -> None:
        from grapevine.gossip import codec, effects
        from grapevine.gossip.config import GossipConfig
        from grapevine.gossip.node import GossipNode
        from grapevine.gossip.store import ItemStore

        self.config = config if config is not None else GossipConfig()
        self.validator = validator
        self._node_cls = GossipNode
        self._store_cls = ItemStore
        self.size_of = codec.encoded_size  # type: ignore[method-assign]
        self._payload_types: dict[type, bool] = {}
        self.effect_kinds = {
            effects.Send: SEND,
            effects.ItemAccepted: ACCEPTED,
            effects.ItemRefused: REFUSED,
            effects.Delivered: DELIVERED,
            effects.PeerUp: PEER_UP,
            effects.PeerDown: PEER_DOWN,
        }

    def make_node(self, node_id: str, *, rng: random.Random, store: Any) -> Any:
        return self._node_cls(node_id, config=self.config, rng=rng, validator=self.validator, store=store)

    def new_store(self, items: Iterable[Any] = ()) -> Any:
        store = self._store_cls()
        for item in items:
            store.put(item)
        return store

    def carries_payload(self, msg: Any) -> bool:
        cls = type(msg)
        flag = self._payload_types.get(cls)
        if flag is None:
            flag = self._payload_types[cls] = bool(getattr(cls, "carries_payload", False))
        return flag

    def store_get(self, store: Any, key: str) -> Any:
        return store.get(key)

    def store_items(self, store: Any) -> list[Any]:
        return list(store.items())

    def store_digest(self, store: Any) -> bytes:
        return store.store_digest()
