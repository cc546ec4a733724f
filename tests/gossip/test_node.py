"""One GossipNode driven by hand: admission rules, effects, entry points."""

from __future__ import annotations

import random

import pytest

from grapevine.gossip import messages as m
from grapevine.gossip.broadcast import REPAIR_ORIGIN
from grapevine.gossip.config import GossipConfig
from grapevine.gossip.effects import Delivered, ItemAccepted, ItemRefused, PeerDown, PeerUp, Send
from grapevine.gossip.errors import ProtocolError
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.node import GossipNode

NOW = 1_000_000


def item(key="bundle/web", wall=NOW, counter=0, author="alice", payload=b"body"):
    return SignedItem(key=key, version=Version(wall, counter, author), payload=payload)


def node(name="a", validator=None, **cfg):
    return GossipNode(name, config=GossipConfig(**cfg), rng=random.Random(7), validator=validator)


def sends(effects, cls=None):
    return [e for e in effects if type(e) is Send and (cls is None or type(e.msg) is cls)]


def linked(name="a", peers=("b", "c"), **kw):
    """A node that has taken ``peers`` into its active view (they welcomed it)."""
    n = node(name, **kw)
    for p in peers:
        n.on_message(p, m.Welcome(), NOW)
    return n


def test_publish_accepts_and_pushes_to_every_neighbour():
    n = linked()
    it = item()
    effects = n.publish(it, NOW)
    assert [e for e in effects if type(e) is ItemAccepted] == [ItemAccepted(item=it, previous=None, source=None, hops=0)]
    pushes = sends(effects, m.Push)
    assert sorted(e.peer for e in pushes) == ["b", "c"] and all(e.msg.hops == 1 for e in pushes)
    assert n.store.get("bundle/web") == it


def test_stale_item_is_refused_and_store_unchanged():
    n = linked()
    new, old = item(counter=5), item(counter=1)
    n.publish(new, NOW)
    effects = n.publish(old, NOW)
    assert [(e.reason, e.source) for e in effects if type(e) is ItemRefused] == [("Stale", None)]
    assert not sends(effects)
    assert n.store.get("bundle/web") == new


def test_item_from_the_future_is_refused():
    n = linked(max_skew_ms=60_000)
    effects = n.on_message("b", m.Push(hops=1, item=item(wall=NOW + 60_001)), NOW)
    assert [(e.reason, e.source) for e in effects if type(e) is ItemRefused] == [("FromTheFuture", "b")]
    assert len(n.store) == 0 and not sends(effects, m.Push)
    ok = n.on_message("b", m.Push(hops=1, item=item(wall=NOW + 60_000)), NOW)
    assert any(type(e) is ItemAccepted for e in ok)


def test_validator_refusal_leaves_store_unchanged():
    seen = []

    def validator(candidate, current, now):
        seen.append((candidate.key, current, now))
        return "UnknownAuthor" if candidate.author == "mallory" else None

    n = linked(validator=validator)
    good = item()
    n.publish(good, NOW)
    digest = n.store.store_digest()
    effects = n.on_message("b", m.Push(hops=1, item=item(counter=9, author="mallory")), NOW)
    refused = [e for e in effects if type(e) is ItemRefused]
    assert [(e.reason, e.key, e.source) for e in refused] == [("UnknownAuthor", "bundle/web", "b")]
    assert n.store.store_digest() == digest and n.store.get("bundle/web") == good
    assert not sends(effects, m.Push)  # a refused item is not forwarded
    assert seen[-1] == ("bundle/web", good, NOW)


def test_validator_that_raises_refuses_instead_of_crashing():
    def broken(candidate, current, now):
        raise RuntimeError("bug")

    n = linked(validator=broken)
    effects = n.publish(item(), NOW)
    assert [e.reason for e in effects if type(e) is ItemRefused] == ["ValidatorError"]
    assert len(n.store) == 0


def test_near_the_publisher_every_link_carries_the_first_payload_and_a_prune_ends_that():
    n = linked(peers=("b", "c", "d"), flood_hops=2)
    first = item()
    effects = n.on_message("b", m.Push(hops=1, item=first, origin="p"), NOW)
    assert sorted(e.peer for e in sends(effects, m.Push)) == ["c", "d"]
    assert n.tree.eager_for("p") == ["b", "c", "d"]
    n.on_message("c", m.Prune(cause=first.digest()), NOW)
    effects = n.on_message("b", m.Push(hops=2, item=item(key="bundle/far"), origin="p"), NOW)
    assert [e.peer for e in sends(effects, m.Push)] == ["d"] and [e.peer for e in sends(effects, m.IHave)] == ["c"]


def test_received_item_is_forwarded_but_not_back_to_its_sender():
    n = linked(peers=("b", "c", "d"))
    effects = n.on_message("b", m.Push(hops=2, item=item(), origin="p"), NOW)
    accepted = [e for e in effects if type(e) is ItemAccepted]
    assert accepted[0].hops == 2 and accepted[0].source == "b"
    assert sorted(e.peer for e in sends(effects, m.Push)) == ["c", "d"]
    assert all(e.msg.hops == 3 for e in sends(effects, m.Push))


def test_duplicate_push_prunes_the_link_and_then_only_announcements_flow():
    n = linked(peers=("b", "c"))  # hops beyond flood_hops (3): the tree rules apply
    n.on_message("b", m.Push(hops=3, item=item(), origin="p"), NOW)
    effects = n.on_message("c", m.Push(hops=4, item=item(), origin="p"), NOW)
    assert [e.peer for e in sends(effects, m.Prune)] == ["c"]
    assert n.tree.eager_for("p") == ["b"]
    effects = n.on_message("b", m.Push(hops=3, item=item(key="bundle/other"), origin="p"), NOW)
    assert [e.peer for e in sends(effects, m.IHave)] == ["c"] and not sends(effects, m.Push)


def test_announced_message_is_grafted_when_it_does_not_arrive():
    n = linked(peers=("b", "c"), graft_timeout_ms=500)
    it = item()
    effects = n.on_message("c", m.IHave(entries=((it.digest(), 2),)), NOW)
    assert not sends(effects)
    assert n.next_deadline() <= NOW + 500
    effects = n.on_tick(NOW + 500)
    grafts = sends(effects, m.Graft)
    assert [(e.peer, e.msg.msg_ids) for e in grafts] == [("c", (it.digest(),))]


def test_graft_is_answered_with_the_message():
    n = linked(peers=("b", "c"))
    it = item()
    n.on_message("b", m.Push(hops=1, item=it), NOW)
    effects = n.on_message("c", m.Graft(msg_ids=(it.digest(),)), NOW)
    assert [(e.peer, e.msg.item) for e in sends(effects, m.Push)] == [("c", it)]


def test_ephemeral_broadcast_is_delivered_once_and_expires():
    n = linked(peers=("b", "c"))
    msg_id = bytes(range(16))
    eph = m.Ephemeral(msg_id=msg_id, origin="z", deadline_ms=NOW + 1_000, hops=2, payload=b"run")
    first = n.on_message("b", eph, NOW)
    assert [e for e in first if type(e) is Delivered] == [Delivered(msg_id=msg_id, origin="z", payload=b"run", hops=2)]
    again = n.on_message("c", eph, NOW + 10)
    assert not [e for e in again if type(e) is Delivered]
    late = m.Ephemeral(msg_id=bytes(16), origin="z", deadline_ms=NOW + 1_000, hops=2, payload=b"late")
    assert not [e for e in n.on_message("b", late, NOW + 1_001) if type(e) is Delivered]


def test_local_broadcast_returns_an_id_and_delivers_here_too():
    n = linked(peers=("b",))
    msg_id, effects = n.broadcast(b"query", NOW, ttl_ms=5_000)
    assert len(msg_id) == 16
    assert [e for e in effects if type(e) is Delivered] == [Delivered(msg_id=msg_id, origin="a", payload=b"query", hops=0)]
    (push,) = sends(effects, m.Ephemeral)
    assert push.peer == "b" and push.msg.deadline_ms == NOW + 5_000
    with pytest.raises(ProtocolError):
        n.broadcast(b"x", NOW, ttl_ms=0)


def test_join_sends_join_and_the_contact_adopts_the_joiner():
    joiner, contact = node("j"), linked("c", peers=("x", "y"))
    effects = joiner.join(["c"], NOW)
    assert [(e.peer, type(e.msg)) for e in sends(effects)] == [("c", m.Join)]
    effects = contact.on_message("j", m.Join(), NOW)
    assert PeerUp(peer="j") in effects
    walks = sends(effects, m.ForwardJoin)
    assert sorted(e.peer for e in walks) == ["x", "y"] and all(e.msg.joiner == "j" for e in walks)
    assert [e.peer for e in sends(effects, m.Welcome)] == ["j"]


def test_isolated_node_keeps_retrying_its_contacts():
    n = node("j", join_retry_ms=1_000, jitter=0.0)
    n.join(["c1", "c2"], NOW)
    targets = set()
    t = NOW
    for _ in range(20):
        t = n.next_deadline()
        targets |= {e.peer for e in sends(n.on_tick(t), m.Join)}
    assert targets == {"c1", "c2"}
    assert t <= NOW + 21 * 1_000


def test_send_failure_removes_the_peer_and_asks_a_spare():
    n = linked(peers=("b",))
    n.on_message("s", m.ShuffleReply(peers=("spare",)), NOW)
    assert n.passive_view == ["spare"]
    effects = n.on_send_failed("b", NOW + 5)
    assert PeerDown(peer="b") in effects
    asks = sends(effects, m.Neighbor)
    assert [(e.peer, e.msg.high_priority) for e in asks] == [("spare", True)]
    effects = n.on_message("spare", m.NeighborReply(accepted=True), NOW + 10)
    assert PeerUp(peer="spare") in effects and n.active_view == ["spare"]


def test_silent_neighbour_is_probed_then_declared_failed():
    n = linked(peers=("b",), probe_interval_ms=1_000, probe_timeout_ms=3_000, jitter=0.0)
    pings = sends(n.on_tick(NOW + 1_000), m.Ping)
    assert [e.peer for e in pings] == ["b"]
    effects = n.on_tick(NOW + 3_000)
    assert PeerDown(peer="b") in effects and n.active_view == []


def test_leave_says_goodbye_to_every_neighbour():
    n = linked(peers=("b", "c"))
    effects = n.leave(NOW)
    assert sorted(e.peer for e in sends(effects, m.Disconnect) if e.msg.leaving) == ["b", "c"]
    assert n.active_view == []


def test_node_ignores_messages_from_itself_and_refuses_non_messages():
    n = linked()
    assert n.on_message("a", m.Join(), NOW) == []
    with pytest.raises(ProtocolError):
        n.on_message("b", "hello", NOW)  # type: ignore[arg-type]


def test_next_deadline_is_far_when_idle_and_tick_before_it_does_nothing():
    n = node(jitter=0.0)
    assert n.next_deadline() == 0  # not started yet: tick me now
    n.on_tick(NOW)
    d = n.next_deadline()
    assert d > NOW
    assert n.on_tick(d - 1) == []


def test_ping_over_a_link_the_receiver_does_not_hold_gets_a_disconnect():
    n = linked(peers=("b",))
    assert [type(e.msg) for e in sends(n.on_message("b", m.Ping(), NOW))] == [m.Pong]
    assert [type(e.msg) for e in sends(n.on_message("x", m.Ping(), NOW))] == [m.Disconnect]


def test_buried_peer_that_answers_is_revived_and_synced():
    n = linked(peers=("b", "c"), rejoin_interval_ms=5_000, jitter=0.0)
    n.on_send_failed("b", NOW)  # b is declared dead and buried
    assert "b" not in n.active_view and "b" not in n.passive_view
    pings = []
    t = NOW
    for _ in range(10):
        t = n.next_deadline()
        pings += [e.peer for e in sends(n.on_tick(t), m.Ping)]
        if "b" in pings:
            break
    assert "b" in pings and t <= NOW + 5_000 + 2_000
    effects = n.on_message("b", m.Disconnect(), t + 5)  # b had dropped us too, but it is alive
    assert "b" in n.passive_view or "b" in n.active_view
    assert [e.peer for e in sends(effects, m.SyncRoot)] == ["b"]


def test_shorter_duplicate_reparents_and_announces_the_shorter_distance():
    n = linked(peers=("b", "c", "d"))
    it = item()
    n.on_message("b", m.Push(hops=9, item=it, origin="p"), NOW)
    effects = n.on_message("c", m.Push(hops=4, item=it, origin="p"), NOW + 1)
    assert [(e.peer, e.msg.origin) for e in sends(effects, m.Graft)] == [("c", "p")]
    assert [e.peer for e in sends(effects, m.Prune)] == ["b"]
    announced = {e.peer: e.msg.entries for e in sends(effects, m.IHave)}
    assert announced == {"b": ((it.digest(), 4),), "d": ((it.digest(), 4),)}
    assert n.tree.eager_for("p") == ["c"]


def test_stale_prune_from_the_new_parent_is_ignored():
    n = linked(peers=("b", "c"))
    it = item()
    n.on_message("b", m.Push(hops=9, item=it, origin="p"), NOW)
    n.on_message("c", m.Push(hops=4, item=it, origin="p"), NOW + 1)  # c is the parent now
    effects = n.on_message("c", m.Prune(cause=it.digest()), NOW + 2)  # sent by c before it learned that
    assert n.tree.eager_for("p") == ["c"]
    assert [(e.peer, e.msg.origin) for e in sends(effects, m.Graft)] == [("c", "p")]  # in case it overtook ours
    n.on_message("c", m.Prune(cause=bytes(16)), NOW + 3)  # names nothing known here: ignored
    assert n.tree.eager_for("p") == ["c"]


def test_push_without_an_origin_travels_the_repair_tree():
    n = linked(peers=("b", "c", "d"))
    it = item()
    effects = n.on_message("b", m.Push(hops=5, item=it), NOW)  # an older sender's frame
    assert not sends(effects, m.Push)
    assert sorted((e.peer, e.msg.pull) for e in sends(effects, m.IHave)) == [("c", True), ("d", True)]
    assert n.tree.eager_for(REPAIR_ORIGIN) == ["b"]


@pytest.mark.parametrize(
    "msg, walk",
    [
        (m.ForwardJoin(joiner="j", ttl=2**40), m.ForwardJoin),
        (m.Shuffle(origin="o", ttl=2**40, peers=("o",)), m.Shuffle),
    ],
)
def test_forged_huge_ttl_is_clamped_to_the_configured_walk(msg, walk):
    n = linked(peers=("b", "c", "d"), active_walk_length=6, shuffle_walk_length=3)
    (fwd,) = sends(n.on_message("b", msg, NOW), walk)
    assert fwd.msg.ttl == (5 if walk is m.ForwardJoin else 2)


def test_node_that_left_refuses_new_links_until_it_joins_again():
    n = linked(peers=("b",))
    n.leave(NOW)
    effects = n.on_message("c", m.Join(), NOW + 1)
    assert not [e for e in effects if type(e) is PeerUp]
    assert [(e.peer, e.msg.leaving) for e in sends(effects, m.Disconnect)] == [("c", True)]
    n.join(["c"], NOW + 2)
    assert PeerUp(peer="c") in n.on_message("c", m.Welcome(), NOW + 3)


def test_item_from_antientropy_is_announced_not_pushed():
    n = linked(peers=("b", "c", "d"))
    it = item()
    effects = n.on_message("x", m.SyncItems(items=(it,), want=()), NOW)
    assert [(e.source, e.hops) for e in effects if type(e) is ItemAccepted] == [("x", 1)]
    assert not sends(effects, m.Push)
    assert sorted(e.peer for e in sends(effects, m.IHave)) == ["b", "c", "d"]


def test_announcement_of_a_held_item_is_ignored_even_after_its_id_is_forgotten():
    n = linked(peers=("b", "c"), message_cache_ms=1_000)
    it = item()
    n.on_message("b", m.Push(hops=3, item=it), NOW)
    n.on_tick(NOW + 5_000)  # the id cache has forgotten it
    assert not n.tree.is_seen(it.digest()) and n.store.has_digest(it.digest())
    n.on_message("c", m.IHave(entries=((it.digest(), 2),)), NOW + 5_001)
    assert not n.tree.missing
