"""Failure detection on active links: a live neighbour is never declared failed."""

from __future__ import annotations

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.effects import PeerDown
from grapevine.gossip.mesh import Mesh
from grapevine.gossip.messages import Pong

# Anti-entropy and shuffles far apart, so the probes are the only traffic the
# smaller end has a reason to send.
QUIET = GossipConfig(active_view_size=3, passive_view_size=12, antientropy_interval_ms=120_000, shuffle_interval_ms=120_000)


def test_neighbour_that_only_listens_is_not_declared_failed():
    # "a" < "b": a is the probing end of the link, b watches for silence. b
    # keeps talking to a, so a never finds the link quiet and never pings;
    # b must still learn that a is alive before its probe timeout.
    mesh = Mesh(config=QUIET, seed=1, wire=False)
    mesh.add("a")
    mesh.add("b", join=["a"])
    mesh.run_for(100)
    assert mesh.nodes["a"].active_view == ["b"] and mesh.nodes["b"].active_view == ["a"]
    for _ in range(4 * QUIET.probe_timeout_ms // 1_000):
        mesh.send("b", "a", Pong())  # one-way traffic b -> a, nothing a answers
        mesh.run_for(1_000)
    assert mesh.nodes["b"].active_view == ["a"]
    assert mesh.nodes["a"].active_view == ["b"]
    assert not [e for n in ("a", "b") for e in mesh.events[n] if type(e) is PeerDown]
    assert mesh.sent["Ping"] >= 1  # b asked
