"""A publisher whose tree for itself has no live link starts it again."""

from __future__ import annotations

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.mesh import Mesh


def test_publisher_that_broadcast_before_it_had_peers_is_not_stuck_behind_graft_timeouts():
    """A node broadcasts while alone (as an agent publishes its trust root at start), then joins.

    Its next broadcast must reach its neighbours at once, not after each of
    them waited a graft timeout for a push that its empty tree never sends.
    """
    cfg = GossipConfig.lan(flood_hops=0)  # the daemon's setting: every hop of a first broadcast is pulled
    mesh = Mesh(config=cfg, seed=3, latency_ms=(1, 2))
    mesh.add("solo")
    mesh.publish("solo", SignedItem(key="trust/root", version=Version(mesh.now, 0, "admin"), payload=b"r"))
    mesh.run_for(100)
    for i in range(8):
        mesh.add(f"n{i}", join=["solo"] if i < 3 else [f"n{i - 1}"])
        mesh.run_for(300)
    mesh.run_for(3_000)
    assert len(mesh.nodes["solo"].active_view) >= 2
    key = "bundle/after-join"
    mesh.publish("solo", SignedItem(key=key, version=Version(mesh.now, 0, "alice"), payload=b"x" * 100))
    mesh.run_for(cfg.graft_timeout_ms // 2)
    holders = [n for n in mesh.live if mesh.nodes[n].store.get(key) is not None]
    assert sorted(holders) == sorted(mesh.live), f"only {len(holders)} of {len(mesh.live)} within half a graft timeout"
