"""Small meshes in memory on a virtual clock: membership, broadcast, repair, healing."""

from __future__ import annotations

import pytest

from grapevine.gossip import codec
from grapevine.gossip.config import GossipConfig
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.mesh import Mesh


def new_item(mesh: Mesh, key: str, author: str = "alice", size: int = 200) -> SignedItem:
    return SignedItem(key=key, version=Version(mesh.now, 0, author), payload=bytes(size))


def holders(mesh: Mesh, key: str) -> int:
    return sum(1 for n in mesh.live if mesh.nodes[n].store.get(key) is not None)


@pytest.mark.parametrize("count, seed", [(10, 1), (20, 2), (30, 3)])
def test_joined_views_are_symmetric_and_connected(mesh_factory, count, seed):
    mesh = mesh_factory(count, seed=seed)
    # A link can be one-sided for a moment (a reply in flight, a peer just
    # declared failed); the smaller end's next probe settles it.
    for _ in range(20):
        if not mesh.asymmetric_links():
            break
        mesh.run_for(500)
    assert mesh.asymmetric_links() == []
    assert len(mesh.components()) == 1
    cfg = mesh.config
    for n in mesh.live:
        node = mesh.nodes[n]
        assert 1 <= len(node.active_view) <= cfg.active_view_size
        assert len(node.passive_view) <= cfg.passive_view_size
        assert n not in node.active_view and n not in node.passive_view
        assert not set(node.active_view) & set(node.passive_view)


def test_publish_reaches_every_node(mesh_factory):
    mesh = mesh_factory(25)
    it = new_item(mesh, "bundle/web")
    mesh.publish("n7", it)
    mesh.run_for(2_000)
    assert holders(mesh, "bundle/web") == 25
    hops = [a.hops for n in mesh.live for a in mesh.accepted(n) if a.item.key == "bundle/web"]
    assert sorted(hops)[0] == 0 and max(hops) <= 8


def test_each_broadcast_costs_about_one_payload_per_node_and_the_second_is_pushed(mesh_factory):
    # The first broadcast of a publisher is pulled along the closest
    # announcers; the tree it leaves carries the next one without grafts.
    # flood_hops=0: in 30 nodes, two pushed hops would already cover most of the mesh.
    mesh = mesh_factory(30, config=GossipConfig(active_view_size=4, passive_view_size=24, flood_hops=0))
    mesh.run_for(30_000)  # views settle: nodes left short by the joins fill up (escalating if refused)
    costs, grafts = [], []
    for key in ("bundle/first", "bundle/second"):
        mesh.payload_copies = 0
        before = mesh.sent["Graft"]
        mesh.publish("n3", new_item(mesh, key))
        mesh.run_for(3_000)
        assert holders(mesh, key) == 30
        costs.append(mesh.payload_copies)
        grafts.append(mesh.sent["Graft"] - before)
    assert all(c <= 1.2 * 29 for c in costs), costs
    assert grafts[0] >= 29 and grafts[1] <= 2, grafts
    assert sum(len(mesh.nodes[n].tree.eager_for("n3") or ()) for n in mesh.live) == 2 * 29  # a spanning tree


def test_failed_node_is_replaced_from_the_passive_view(mesh_factory):
    mesh = mesh_factory(20, seed=4)
    victim = max(mesh.live, key=lambda n: len(mesh.nodes[n].active_view))
    neighbours = mesh.nodes[victim].active_view
    mesh.kill(victim)
    mesh.run_for(20_000)
    for n in mesh.live:
        assert victim not in mesh.nodes[n].active_view
    # At any instant a link may be one-sided for a moment (a neighbour reply
    # or a Disconnect in flight, a peer just revived); views must settle
    # symmetric within a few probe intervals.
    for _ in range(20):
        if not mesh.asymmetric_links():
            break
        mesh.run_for(500)
    assert mesh.asymmetric_links() == []
    assert len(mesh.components()) == 1
    full = mesh.config.active_view_size
    refilled = [n for n in neighbours if len(mesh.nodes[n].active_view) >= full - 1]
    assert len(refilled) == len(neighbours)
    mesh.publish(mesh.live[0], new_item(mesh, "bundle/after"))
    mesh.run_for(3_000)
    assert holders(mesh, "bundle/after") == 19


@pytest.mark.parametrize("fail", [False, True], ids=["dropped", "refused"])
def test_cut_mesh_heals_via_antientropy_after_restore(mesh_factory, fail):
    mesh = mesh_factory(24, seed=5)
    left, right = mesh.live[:12], mesh.live[12:]
    mesh.cut(left, right, fail=fail)
    mesh.run_for(30_000)  # long enough for both sides to declare the other dead
    for n in left:
        assert not set(mesh.nodes[n].active_view) & set(right)
    mesh.publish(left[0], new_item(mesh, "bundle/left", author="l"))
    mesh.publish(right[0], new_item(mesh, "bundle/right", author="r"))
    mesh.publish(left[1], new_item(mesh, "bundle/both", author="l"))
    mesh.publish(right[1], new_item(mesh, "bundle/both", author="r"))
    mesh.run_for(5_000)
    assert holders(mesh, "bundle/left") == 12 and holders(mesh, "bundle/right") == 12
    mesh.restore()
    healed_at = None
    for step in range(60):
        mesh.run_for(500)
        if mesh.converged() and holders(mesh, "bundle/left") == 24 and holders(mesh, "bundle/right") == 24:
            healed_at = (step + 1) * 500
            break
    assert healed_at is not None and healed_at <= 30_000
    winners = {mesh.nodes[n].store.get("bundle/both").author for n in mesh.live}
    assert winners == {"r"}  # same wall time: the larger author id wins everywhere
    mesh.run_for(30_000)
    assert len(mesh.components()) == 1  # the overlay itself is whole again


def test_ephemeral_broadcast_is_delivered_exactly_once_and_expires(mesh_factory):
    mesh = mesh_factory(20)
    msg_id = mesh.broadcast("n5", b"run uptime", ttl_ms=10_000)
    mesh.run_for(3_000)
    for n in mesh.live:
        got = [d for d in mesh.delivered(n) if d.msg_id == msg_id]
        assert len(got) == 1 and got[0].payload == b"run uptime" and got[0].origin == "n5"
    mesh.run_for(15_000)  # the TTL and one anti-entropy period (up to 4.8 s): each node has ticked since
    for n in mesh.live:
        assert not mesh.nodes[n].tree.is_seen(msg_id)  # forgotten after its TTL
        assert len(mesh.nodes[n].store) == 0  # never stored
    # A replay after the deadline is dropped, not delivered again.
    from grapevine.gossip.messages import Ephemeral

    mesh.send("n1", "n2", Ephemeral(msg_id=msg_id, origin="n5", deadline_ms=mesh.now - 1, hops=1, payload=b"run uptime"))
    mesh.run_for(1_000)
    assert len([d for d in mesh.delivered("n2") if d.msg_id == msg_id]) == 1


def test_late_joiner_catches_up_through_antientropy(mesh_factory):
    mesh = mesh_factory(10)
    for i in range(40):
        mesh.publish(f"n{i % 10}", new_item(mesh, f"bundle/app{i}"))
    mesh.run_for(3_000)
    mesh.add("late", join=["n3"])
    mesh.run_for(15_000)
    assert len(mesh.nodes["late"].store) == 40
    assert mesh.converged()


def test_same_seed_same_run(mesh_factory):
    def run(seed):
        mesh = mesh_factory(12, seed=seed, settle_ms=5_000)
        mesh.publish("n2", new_item(mesh, "bundle/x"))
        mesh.run_for(2_000)
        return dict(mesh.sent), {n: mesh.nodes[n].active_view for n in mesh.live}

    assert run(9) == run(9)
    assert run(9) != run(10)


def _idle_traffic(items: int) -> tuple[int, int]:
    mesh = Mesh(config=GossipConfig(active_view_size=4, passive_view_size=24), seed=3, wire=False)
    mesh.build(16)
    for i in range(items):
        mesh.publish(f"n{i % 16}", new_item(mesh, f"bundle/app{i:04d}", size=50))
    mesh.run_for(20_000)
    assert mesh.converged()
    before = sum(mesh.sent.values())
    sizes_before = dict(mesh.sent)
    mesh.run_for(60_000)
    count = sum(mesh.sent.values()) - before
    return count, sum(mesh.sent[k] - sizes_before.get(k, 0) for k in ("Push", "SyncItems", "SyncKeys"))


def test_idle_traffic_does_not_grow_with_item_count():
    few, few_heavy = _idle_traffic(10)
    many, many_heavy = _idle_traffic(400)
    assert few_heavy == 0 and many_heavy == 0  # in sync: no item or key list travels
    assert abs(many - few) <= 0.25 * few


def test_mesh_messages_survive_the_wire_codec(mesh_factory):
    mesh = mesh_factory(8, settle_ms=3_000)
    assert mesh.wire
    mesh.publish("n1", new_item(mesh, "bundle/wire"))
    mesh.run_for(2_000)
    assert holders(mesh, "bundle/wire") == 8
    assert codec.PROTOCOL_VERSION >= 1
