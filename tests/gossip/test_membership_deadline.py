"""The node's next deadline: cached where it can be, never later than the work due."""

from __future__ import annotations

import random

from grapevine.gossip.config import GossipConfig
from grapevine.gossip.mesh import Mesh
from grapevine.gossip.node import GossipNode


class CheckedMesh(Mesh):
    """A mesh that compares each node's cached membership deadline with a fresh one after every step."""

    checks = 0

    def _apply(self, src, effects):
        m = self.nodes[src].membership
        assert m.next_deadline() == m._compute_deadline(), src
        CheckedMesh.checks += 1
        super()._apply(src, effects)


def test_cached_membership_deadline_equals_a_fresh_one_through_joins_failures_and_repairs():
    mesh = CheckedMesh(config=GossipConfig(active_view_size=4, passive_view_size=12), seed=11, wire=False)
    mesh.build(16)
    mesh.run_for(10_000)
    mesh.kill("n3")
    mesh.kill("n9")
    mesh.cut(mesh.live[:6], mesh.live[6:])
    mesh.run_for(20_000)
    mesh.restore()
    mesh.run_for(20_000)
    assert CheckedMesh.checks > 1_000


def test_node_wakes_when_an_ephemeral_broadcast_is_to_be_forgotten():
    node = GossipNode("a", config=GossipConfig(), rng=random.Random(1))
    node.join(["b"], 0)
    _, _ = node.broadcast(b"run uptime", 0, ttl_ms=1_000)
    # Membership and anti-entropy timers are seconds away; the id is to be
    # forgotten after 1 s, so the node must be woken by then.
    assert node.next_deadline() <= 1_000
