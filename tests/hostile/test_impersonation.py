"""A network-key holder cannot get a frame accepted as another node.

Three honest agents on loopback and ``HostilePeer``: the fleet network key and
a node key of its own. Every frame it sends in an honest node's name (a join,
a goodbye, a link, a peer-route request; at the node's address or another) is
signed with its own key, or carries the honest node's real public key with a
signature it cannot make: each is refused by name and counted, and the
honest mesh goes on converging. Pins survive a restart; an operator can
remove one to accept a re-keyed node.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import msgpack

from grapevine.cli.localfleet import wait_for
from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.node.frames import pack_envelope
from tests.hostile.hostile_peer import HostilePeer, scrape_metrics


def refused_as(world, port: int, reason: str) -> float:
    return scrape_metrics(port).get(("grapevine_bad_frames", reason), 0.0)


def members(world, agent) -> set[str]:
    doc = agent.client().get("/v1/members")
    return set(doc["active"]) | set(doc["passive"])


def test_a_join_in_another_nodes_name_is_refused(world):
    h = world.hostile
    target, victim = world.agents[0], world.agents[1]
    before = refused_as(world, target.port, "NodeKeyChanged")
    assert h.gossip(target.port, m.Join(), "join as an honest node", sender=victim.node_id) == 403
    assert h.attempts[-1][2] == "NodeKeyChanged"
    assert refused_as(world, target.port, "NodeKeyChanged") == before + 1


def test_the_same_name_at_another_address_is_refused(world):
    """Keys are pinned to the name, so claiming it from a new address does not start afresh."""
    h = world.hostile
    target, victim = world.agents[0], world.agents[1]
    moved = f"{victim.name}@127.0.0.1:1"
    assert h.gossip(target.port, m.Join(), "join as an honest name at a new address", sender=moved) == 403
    assert h.attempts[-1][2] == "NodeKeyChanged"
    assert moved not in members(world, target)


def test_a_goodbye_in_another_nodes_name_is_refused(world):
    h = world.hostile
    target, victim = world.agents[0], world.agents[2]
    wait_for(lambda: victim.node_id in members(world, target), 20, "the victim in the target's views")
    assert h.gossip(target.port, m.Disconnect(leaving=True), "goodbye as an honest node", sender=victim.node_id) == 403
    assert victim.node_id in members(world, target)


def test_the_honest_public_key_without_its_private_key_is_refused(world):
    """The attacker copies the victim's pinned public key into the envelope: the signature gives it away."""
    h = world.hostile
    target, victim = world.agents[0], world.agents[1]
    pins = {p["name"]: p for p in target.client().get("/v1/pins")["pins"]}
    real = bytes.fromhex(pins[victim.name]["key"])
    body = codec.encode(m.Join())
    env = msgpack.unpackb(pack_envelope(h.node_key, victim.node_id, target.node_id, body), raw=False)
    env[2] = real  # the victim's key, the hostile's signature
    frame = h.ring.seal(msgpack.packb(env, use_bin_type=True))
    assert h.post_raw(target.port, frame, "join as an honest node with its public key") == 403
    assert h.attempts[-1][2] == "BadNodeSignature"


def test_a_frame_addressed_to_another_node_is_refused(world):
    h = world.hostile
    target, other = world.agents[0], world.agents[1]
    frame = h.frame(codec.encode(m.Ping()), dest=other.node_id)  # in its own name, but meant for another node
    assert h.post_raw(target.port, frame, "frame addressed to another node") == 403
    assert h.attempts[-1][2] == "WrongDestination"


def test_a_link_in_another_nodes_name_is_refused_before_the_upgrade(world):
    h = world.hostile
    target, victim = world.agents[0], world.agents[1]

    async def dial(headers) -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            try:
                async with s.ws_connect(f"http://127.0.0.1:{target.port}/v1/link", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(dial(h.link_headers(target.node_id, sender=victim.node_id))) == 403
    assert asyncio.run(dial({})) == 401  # no token at all: not even upgraded
    headers = h.link_headers(target.node_id)  # its own name: a key holder may link
    assert asyncio.run(dial(headers)) == 101
    assert asyncio.run(dial(headers)) == 403  # the same token again is a replay


def test_a_peer_route_request_in_another_nodes_name_is_refused(world):
    h = world.hostile
    target, victim = world.agents[0], world.agents[1]
    assert h.route(target.port, "hello", {}, "hello as an honest node", sender=victim.node_id) is None
    assert h.attempts[-1][1:] == (403, "NodeKeyChanged")
    assert h.route(target.port, "hello", {}, "hello in its own name") == {"id": target.node_id}


def test_pins_survive_a_restart(world):
    h = world.hostile
    node, victim = world.agents[2], world.agents[1]
    world.mesh.stop(node)
    world.mesh.start(node)
    world.mesh.wait_ready(node)
    names = {p["name"] for p in node.client().get("/v1/pins")["pins"]}
    assert {a.name for a in world.agents} <= names
    assert h.gossip(node.port, m.Join(), "join as an honest node after a restart", sender=victim.node_id) == 403
    assert h.attempts[-1][2] == "NodeKeyChanged"


def test_forgetting_a_pin_lets_a_rekeyed_node_in(world):
    """``grapevine pins forget NAME`` is the operator's way to accept a node that really was re-keyed."""
    target = world.agents[0]
    old = HostilePeer(world.mesh.keys.netkey, name="rekeyed", port=9)
    old.ids = dict(world.hostile.ids)
    assert old.gossip(target.port, m.Ping(), "first key for a new name") == 204  # pinned on first sight
    new = HostilePeer(world.mesh.keys.netkey, name="rekeyed", port=9)
    new.ids = dict(world.hostile.ids)
    before = scrape_metrics(target.port)
    assert new.gossip(target.port, m.Ping(), "new key for the name") == 403
    changes = scrape_metrics(target.port)
    assert changes.get(("grapevine_bad_frames", "NodeKeyChanged"), 0) > before.get(("grapevine_bad_frames", "NodeKeyChanged"), 0)
    cli = subprocess.run([sys.executable, "-m", "grapevine.cli.main", "pins", "forget", "rekeyed", "--agent", target.socket],
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    assert new.gossip(target.port, m.Ping(), "new key after the pin was removed") == 204
    pins = {p["name"]: p for p in target.client().get("/v1/pins")["pins"]}
    assert pins["rekeyed"]["key"] == new.node_key.public.raw.hex()
    gone = subprocess.run([sys.executable, "-m", "grapevine.cli.main", "pins", "forget", "nobody", "--agent", target.socket],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode != 0 and "NotPinned" in gone.stdout + gone.stderr


def test_the_honest_mesh_still_converges_after_the_impersonation_attempts(world):
    world.inject(2, via=1)
    world.wait_applied(2)
    assert all(a.alive() for a in world.agents)
