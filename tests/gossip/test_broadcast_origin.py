"""Broadcast trees per publisher: short from every publisher, one payload per node, bounded state."""

from __future__ import annotations

import random
from collections import deque

import pytest

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.broadcast import MAX_GRAFTS, MAX_ORIGINS, MAX_SEEN, NEVER, REPAIR_ORIGIN, Broadcast
from grapevine.gossip.config import GossipConfig
from grapevine.gossip.effects import Send
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.mesh import Mesh
from grapevine.gossip.node import GossipNode

NOW = 1_000_000
COPIES_LIMIT = 1.3  # payload copies per node allowed for one broadcast
HOP_SLACK = 3  # hops allowed beyond the publisher's eccentricity in the overlay (first copy wins races)


def item(key: str = "bundle/web", wall: int = NOW, author: str = "alice") -> SignedItem:
    return SignedItem(key=key, version=Version(wall, 0, author), payload=b"body")


def linked(name: str = "a", peers: tuple[str, ...] = ("b", "c", "d"), **cfg: object) -> GossipNode:
    n = GossipNode(name, config=GossipConfig(**cfg), rng=random.Random(7))  # type: ignore[arg-type]
    for p in peers:
        n.on_message(p, m.Welcome(), NOW)
    return n


def sends(effects: list, cls: type | None = None) -> list[Send]:
    return [e for e in effects if type(e) is Send and (cls is None or type(e.msg) is cls)]


def eccentricity(mesh: Mesh, origin: str) -> int:
    """Fewest hops from ``origin`` to the farthest node over the active views."""
    dist = {origin: 0}
    todo = deque([origin])
    while todo:
        u = todo.popleft()
        for v in mesh.nodes[u].active_view:
            if v not in dist and v in mesh.nodes and v not in mesh.dead:
                dist[v] = dist[u] + 1
                todo.append(v)
    assert len(dist) == len(mesh.live), "the overlay is not connected"
    return max(dist.values())


def spread(mesh: Mesh, origin: str, key: str) -> tuple[int, float, int]:
    """Publish at ``origin``; (max hops, payload copies per node, grafts sent)."""
    mesh.payload_copies = 0
    grafts = mesh.sent["Graft"]
    mesh.publish(origin, SignedItem(key=key, version=Version(mesh.now, 0, "alice"), payload=bytes(100)))
    mesh.run_for(3_000)
    hops = [a.hops for n in mesh.live for a in mesh.accepted(n) if a.item.key == key]
    assert len(hops) == len(mesh.live), f"{key} reached {len(hops)} of {len(mesh.live)} nodes"
    return max(hops), mesh.payload_copies / (len(mesh.live) - 1), mesh.sent["Graft"] - grafts


@pytest.fixture(scope="module")
def big_mesh() -> Mesh:
    mesh = Mesh(config=GossipConfig.for_fleet(400), seed=11, latency_ms=(1, 6))
    mesh.build(400)
    mesh.run_for(15_000)
    return mesh


def test_broadcast_from_a_new_publisher_is_short_and_costs_one_payload_per_node(big_mesh):
    mesh = big_mesh
    warm, other = "n5", "n321"
    spread(mesh, warm, "bundle/warm-up")  # shapes the tree of n5, and only that one
    hops, copies, _ = spread(mesh, other, "bundle/inject")
    assert hops <= eccentricity(mesh, other) + HOP_SLACK, hops
    assert copies <= COPIES_LIMIT, copies
    # The same publisher again: pushed down the tree the first broadcast left.
    hops2, copies2, grafts2 = spread(mesh, other, "bundle/inject-2")
    assert hops2 <= eccentricity(mesh, other) + HOP_SLACK, hops2
    assert copies2 <= COPIES_LIMIT, copies2
    assert grafts2 <= len(mesh.live) // 20, grafts2  # nearly nothing left to pull
    eager = sum(len(mesh.nodes[n].tree.eager_for(other) or ()) for n in mesh.live)
    assert eager <= 2 * (len(mesh.live) - 1) * COPIES_LIMIT  # about a spanning tree, not a mesh


def test_ephemeral_broadcast_uses_its_origins_tree_too(big_mesh):
    mesh = big_mesh
    msg_id = mesh.broadcast("n77", b"run order", ttl_ms=10_000)
    mesh.run_for(3_000)
    got = [d for n in mesh.live for d in mesh.delivered(n) if d.msg_id == msg_id]
    assert len(got) == len(mesh.live)
    assert max(d.hops for d in got) <= eccentricity(mesh, "n77") + HOP_SLACK
    assert mesh.nodes["n78"].tree.eager_for("n77") is not None


def test_trees_are_kept_for_a_bounded_number_of_publishers_most_recent_first():
    n = linked(flood_hops=3)
    origins = [f"pub{i}" for i in range(MAX_ORIGINS + 10)]
    for i, origin in enumerate(origins):
        n.on_message("b", m.Push(hops=5, item=item(key=f"bundle/{i}"), origin=origin), NOW + i)
    assert len(n.tree.trees) == MAX_ORIGINS
    assert n.tree.eager_for("pub0") is None  # least recently used: forgotten
    assert n.tree.eager_for(origins[-1]) == ["b"]  # the link it came by is its parent


def test_first_message_of_a_publisher_is_offered_for_pulling_then_pushed_down_its_tree():
    n = linked(flood_hops=3)  # beyond 3 hops from the publisher
    first = n.on_message("b", m.Push(hops=4, item=item(key="bundle/1"), origin="p"), NOW)
    assert not sends(first, m.Push)
    assert sorted(e.peer for e in sends(first, m.IHave) if e.msg.pull) == ["c", "d"]
    it = item(key="bundle/1")
    (reply,) = sends(n.on_message("c", m.Graft(msg_ids=(it.digest(),)), NOW + 1), m.Push)
    assert reply.peer == "c" and reply.msg.origin == "p" and reply.msg.hops == 5
    second = n.on_message("b", m.Push(hops=4, item=item(key="bundle/2"), origin="p"), NOW + 2)
    assert [e.peer for e in sends(second, m.Push)] == ["c"]
    assert [(e.peer, e.msg.pull) for e in sends(second, m.IHave)] == [("d", False)]


def test_pulled_message_is_grafted_from_the_closest_announcer_after_the_wait():
    n = linked(pull_wait_ms=3, graft_timeout_ms=500)
    d = item().digest()
    assert not sends(n.on_message("b", m.IHave(entries=((d, 6),), pull=True), NOW))
    assert not sends(n.on_message("c", m.IHave(entries=((d, 2),), pull=True), NOW + 1))
    assert n.next_deadline() == NOW + 3
    grafts = sends(n.on_tick(NOW + 3), m.Graft)
    assert [(e.peer, e.msg.msg_ids) for e in grafts] == [("c", (d,))]
    # A later announcement waits for the retry instead of grafting a second copy.
    assert not sends(n.on_message("d", m.IHave(entries=((d, 1),), pull=True), NOW + 4))
    assert not sends(n.on_tick(NOW + 10), m.Graft)


def test_lost_graft_is_retried_on_the_same_announcers_a_bounded_number_of_times():
    n = linked(pull_wait_ms=2, graft_retry_ms=100)
    d = item().digest()
    n.on_message("b", m.IHave(entries=((d, 1),), pull=True), NOW)
    grafted = []
    t = NOW
    for _ in range(MAX_GRAFTS + 3):
        t = n.next_deadline()
        if t >= NEVER:
            break
        grafted += [e.peer for e in sends(n.on_tick(t), m.Graft)]
    assert grafted == ["b"] * MAX_GRAFTS
    assert d not in n.tree.missing  # left to anti-entropy


def test_plain_announcement_still_waits_for_the_graft_timeout():
    n = linked(pull_wait_ms=3, graft_timeout_ms=500)
    d = item().digest()
    n.on_message("b", m.IHave(entries=((d, 6),)), NOW)
    assert not sends(n.on_tick(NOW + 3), m.Graft)
    assert [e.peer for e in sends(n.on_tick(NOW + 500), m.Graft)] == ["b"]


def test_duplicate_prunes_the_link_in_that_publishers_tree_only():
    n = linked(peers=("b", "c"), flood_hops=0)
    n.on_message("b", m.Push(hops=2, item=item(key="bundle/1"), origin="p"), NOW)
    n.on_message("c", m.Graft(msg_ids=(), origin="p"), NOW)
    assert n.tree.eager_for("p") == ["b", "c"]
    effects = n.on_message("c", m.Push(hops=5, item=item(key="bundle/1"), origin="p"), NOW + 1)
    assert [e.peer for e in sends(effects, m.Prune)] == ["c"]
    assert n.tree.eager_for("p") == ["b"]


def test_prune_naming_a_message_removes_the_link_from_its_publishers_tree():
    n = linked(peers=("b", "c"), flood_hops=0)
    it = item(key="bundle/1")
    n.on_message("b", m.Push(hops=2, item=it, origin="p"), NOW)
    n.on_message("c", m.Graft(msg_ids=(it.digest(),)), NOW)
    assert n.tree.eager_for("p") == ["b", "c"]
    n.on_message("c", m.Prune(cause=it.digest()), NOW + 1)
    assert n.tree.eager_for("p") == ["b"]


def test_near_the_publisher_the_first_message_is_pushed_on_every_link():
    n = linked(flood_hops=3)
    effects = n.on_message("b", m.Push(hops=2, item=item(), origin="p"), NOW)
    assert sorted(e.peer for e in sends(effects, m.Push)) == ["c", "d"] and not sends(effects, m.IHave)
    assert n.tree.eager_for("p") == ["b", "c", "d"]  # duplicates prune them later


def test_item_from_antientropy_is_offered_for_pulling_and_travels_the_repair_tree():
    n = linked(peers=("b", "c"))
    it = item()
    effects = n.on_message("x", m.SyncItems(items=(it,), want=()), NOW)
    assert sorted((e.peer, e.msg.pull) for e in sends(effects, m.IHave)) == [("b", True), ("c", True)]
    (reply,) = sends(n.on_message("b", m.Graft(msg_ids=(it.digest(),)), NOW + 1), m.Push)
    assert reply.msg.origin == REPAIR_ORIGIN and n.tree.eager_for(REPAIR_ORIGIN) == ["b"]


def test_lost_link_leaves_every_publishers_tree():
    n = linked(peers=("b", "c"), flood_hops=0)
    n.on_message("b", m.Push(hops=2, item=item(key="bundle/1"), origin="p"), NOW)
    n.on_message("c", m.Push(hops=2, item=item(key="bundle/2"), origin="q"), NOW)
    n.on_send_failed("b", NOW + 1)
    assert n.tree.eager_for("p") == [] and n.tree.eager_for("q") == ["c"]


@pytest.mark.parametrize(
    "msg",
    [
        m.Push(hops=3, item=item(), origin="web-1@10.0.0.1:7946"),
        m.IHave(entries=((bytes(16), 3),), pull=True),
        m.Graft(msg_ids=(), origin="web-1@10.0.0.1:7946"),
        m.Graft(msg_ids=(bytes(16),), origin="p"),
    ],
)
def test_new_trailing_fields_round_trip_and_are_sized_exactly(msg):
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert codec.encoded_size(msg) == len(data)


@pytest.mark.parametrize(
    "old, new",
    [
        (m.Push(hops=3, item=item()), m.Push(hops=3, item=item(), origin="")),
        (m.IHave(entries=((bytes(16), 3),)), m.IHave(entries=((bytes(16), 3),), pull=False)),
        (m.Graft(msg_ids=(bytes(16),)), m.Graft(msg_ids=(bytes(16),), origin="")),
    ],
)
def test_frames_without_the_new_fields_decode_with_their_defaults(old, new):
    import msgpack

    frame = msgpack.unpackb(codec.encode(old), raw=False)
    assert len(frame) == 2 + len(codec.SCHEMAS[type(old)]) - 1  # the default is left off the wire
    assert codec.decode(codec.encode(old)) == new


@pytest.mark.parametrize(
    "frame, error",
    [
        ([1, 11, 3], "Push needs 2..3 fields, got 1"),
        ([1, 14, [], "p", "extra"], "Graft needs 1..2 fields, got 3"),
        ([1, 13, [], 1], "IHave.pull"),
        ([1, 11, 3, None, 5], "Push.item"),
    ],
)
def test_bad_frames_with_optional_fields_are_refused(frame, error):
    import msgpack

    with pytest.raises(m.ProtocolError, match=error):
        codec.decode(msgpack.packb(frame, use_bin_type=True))


def test_seen_ids_are_capped_and_the_soonest_to_expire_go_first():
    b = Broadcast("a", GossipConfig(), [], lambda msg_id, ref, hops: None, lambda msg_id: False)
    ids = [i.to_bytes(16, "big") for i in range(MAX_SEEN + 10)]
    for i, msg_id in enumerate(ids):
        # the first ten expire last: they outlive the cap's evictions
        b.record(msg_id, "b", 1, None, NOW + (10**9 if i < 10 else 60_000 + i), NOW, [])
    assert all(b.is_seen(i) for i in ids[:10])
    assert not any(b.is_seen(i) for i in ids[10:20])
    assert all(b.is_seen(i) for i in ids[20:])
