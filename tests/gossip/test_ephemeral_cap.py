"""Ephemeral broadcasts kept for grafts are capped in bytes; every one is still delivered once."""

from __future__ import annotations

import random

from grapevine.gossip import messages as m
from grapevine.gossip.config import GossipConfig
from grapevine.gossip.effects import Delivered, Send
from grapevine.gossip.node import GossipNode

NOW = 1_000_000
MIB = 1024 * 1024


def test_a_flood_of_large_ephemerals_keeps_at_most_the_byte_cap_for_grafts():
    n = GossipNode("a", config=GossipConfig(max_ephemeral_bytes=4 * MIB), rng=random.Random(1))
    for p in ("b", "c"):
        n.on_message(p, m.Welcome(), NOW)
    ids, delivered = [], 0
    for i in range(40):  # 40 MiB from one peer, each alive for a minute
        msg_id = i.to_bytes(16, "big")
        ids.append(msg_id)
        eff = n.on_message("b", m.Ephemeral(msg_id=msg_id, origin="z", deadline_ms=NOW + 60_000, hops=1,
                                              payload=bytes([i]) * MIB), NOW + i)
        delivered += sum(1 for e in eff if type(e) is Delivered)
    assert delivered == 40
    kept = sum(len(n.tree.ref(i).payload) for i in ids if type(n.tree.ref(i)) is m.Ephemeral)
    assert kept <= 4 * MIB
    # the newest still answer grafts; the oldest are remembered by id only: not delivered again, not served
    newest = n.on_message("c", m.Graft(msg_ids=(ids[-1],)), NOW + 100)
    assert [e.msg.payload[:1] for e in newest if type(e) is Send and type(e.msg) is m.Ephemeral] == [bytes([39])]
    oldest = n.on_message("c", m.Graft(msg_ids=(ids[0],)), NOW + 100)
    assert not [e for e in oldest if type(e) is Send and type(e.msg) is m.Ephemeral]
    again = n.on_message("c", m.Ephemeral(msg_id=ids[0], origin="z", deadline_ms=NOW + 60_000, hops=2,
                                          payload=b"\x00" * MIB), NOW + 200)
    assert not [e for e in again if type(e) is Delivered]
