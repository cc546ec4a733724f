"""Fixtures for the gossip core tests: items and small in-memory meshes."""

from __future__ import annotations

import pytest

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.mesh import Mesh


def make_item(key: str = "bundle/web", wall: int = 1_000, counter: int = 0, author: str = "alice", payload: bytes = b"body") -> SignedItem:
    return SignedItem(key=key, version=Version(wall, counter, author), payload=payload, signatures=((author, b"s" * 64),))


@pytest.fixture
def item_factory():
    return make_item


@pytest.fixture
def mesh_factory():
    """Build a joined mesh of ``n`` nodes that has settled for a while."""

    def build(n: int, *, seed: int = 1, config: GossipConfig | None = None, settle_ms: int = 15_000, **kw) -> Mesh:
        mesh = Mesh(config=config or GossipConfig(active_view_size=4, passive_view_size=24), seed=seed, **kw)
        mesh.build(n)
        mesh.run_for(settle_ms)
        return mesh

    return build
