"""Anti-entropy reaches past an island: nodes whose active views hold only each other."""

from __future__ import annotations

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.mesh import Mesh
from grapevine.gossip.messages import ShuffleReply

# Short intervals; a node with a full active view never picks a passive peer
# for anti-entropy in this test (every 1000th exchange), so only the rule for
# short views can carry the item across.
CFG = GossipConfig.local(antientropy_passive_every=1_000)
ISLAND = ("i0", "i1", "i2")


def _mesh_with_island(seed: int) -> tuple[Mesh, list[str]]:
    mesh = Mesh(config=CFG, seed=seed, wire=False)
    main = mesh.build(8)
    mesh.run_for(5_000)
    full = [n for n in main if len(mesh.nodes[n].active_view) == CFG.active_view_size]
    assert len(full) >= 3
    mesh.add("i0")
    mesh.add("i1", join=["i0"])
    mesh.add("i2", join=["i0"])
    mesh.run_for(200)
    for i in ISLAND:
        # Spare peers from the main mesh, all with full views: they refuse to
        # become neighbours, as after a boot storm, so the island stays one.
        mesh.send(full[0], i, ShuffleReply(peers=tuple(full)))
    mesh.run_for(3_000)
    for i in ISLAND:
        assert sorted(mesh.nodes[i].active_view) == sorted(set(ISLAND) - {i})
        assert set(mesh.nodes[i].passive_view) >= set(full)
    return mesh, main


def test_island_of_three_gets_a_new_item_within_a_few_antientropy_rounds():
    mesh, main = _mesh_with_island(seed=7)
    item = SignedItem(key="bundle/news", version=Version(mesh.now, 0, "alice"), payload=b"news")
    mesh.publish(main[0], item)
    mesh.run_for(500)
    assert all(mesh.nodes[n].store.get("bundle/news") == item for n in main)
    # A short active view sends every 2nd exchange to a passive peer.
    rounds = 4
    mesh.run_for(rounds * CFG.antientropy_interval_ms)
    assert [i for i in ISLAND if mesh.nodes[i].store.get("bundle/news") != item] == []
    for i in ISLAND:
        assert sorted(mesh.nodes[i].active_view) == sorted(set(ISLAND) - {i})  # still an island
