"""Admission inside the real gossip core: a rotation spreads and revokes with no node touched."""

from __future__ import annotations

from collections import Counter

from grapevine.gossip.effects import ItemAccepted
from grapevine.gossip.mesh import Mesh
from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust_files import build_root, init_root, rotate

ADMIN, WEB, BOB = (SigningKey(bytes([i]) * 32) for i in (41, 42, 43))
NODES = 8


class TrustedMesh(Mesh):
    """Each node has its own Admission; accepted items reach ``on_accepted`` as in the daemon."""

    def _apply(self, src, effects):
        node = self.nodes.get(src)
        if node is not None and isinstance(node.validator, Admission):
            for e in effects:
                if type(e) is ItemAccepted:
                    node.validator.on_accepted(e.item)
        super()._apply(src, effects)


def root(serial, now, publishers):
    return build_root(serial=serial, now_ms=now, expires_days=30, admins=[ADMIN.public], threshold=1,
                      publishers=[(k.public, "web/") for k in publishers])


def holders(mesh, key):
    return sorted(n for n in mesh.live if mesh.nodes[n].store.get(key) is not None)


def test_rotation_spreads_through_gossip_and_revoked_publishers_are_refused_everywhere():
    first = init_root(root(1, 0, [WEB, BOB]), [ADMIN], 0)
    mesh = TrustedMesh(seed=7)
    for i in range(NODES):
        nid = f"n{i}"
        mesh.add(nid, join=[f"n{i - 1}"] if i else [])
        mesh.nodes[nid].validator = Admission(first, node=nid)
        mesh.run_for(200)
    mesh.run_for(2_000)
    everyone = sorted(mesh.live)

    mesh.publish("n3", pack(Bundle(name="web/bob"), BOB, mesh.now))
    mesh.run_for(5_000)
    assert holders(mesh, "bundle/web/bob") == everyone

    second = rotate(first, root(2, mesh.now, [WEB]), [ADMIN], mesh.now)
    mesh.publish("n5", second)
    mesh.run_for(5_000)
    assert {mesh.nodes[n].validator.root.serial for n in everyone} == {2}

    # a node that admits anything (compromised) stores and offers a bundle by the revoked key
    rogue = mesh.nodes["n2"]
    rogue.validator = None
    mesh.publish("n2", pack(Bundle(name="web/evil"), BOB, mesh.now))
    mesh.publish("n6", pack(Bundle(name="web/good"), WEB, mesh.now))
    mesh.run_for(10_000)  # broadcast plus a few anti-entropy rounds
    assert holders(mesh, "bundle/web/evil") == ["n2"]
    assert holders(mesh, "bundle/web/good") == everyone
    refusals = Counter()
    for n in everyone:
        if n != "n2":
            refusals.update(mesh.nodes[n].validator.refusals)
    assert refusals["UnknownKey"] >= 1

    # bundles stored before the rotation no longer pass the re-check
    for n in everyone:
        if n == "n2":
            continue
        stored = mesh.nodes[n].store.get("bundle/web/bob")
        assert mesh.nodes[n].validator.still_valid(stored, mesh.now) == "UnknownKey"


def test_a_node_cut_off_during_two_rotations_catches_up_after_the_heal():
    admin2, admin3 = SigningKey(b"\x45" * 32), SigningKey(b"\x46" * 32)
    first = init_root(root(1, 0, [WEB]), [ADMIN], 0)
    mesh = TrustedMesh(seed=11)
    for i in range(6):
        nid = f"n{i}"
        mesh.add(nid, join=[f"n{i - 1}"] if i else [])
        mesh.nodes[nid].validator = Admission(first, node=nid)
        mesh.run_for(200)
    mesh.run_for(2_000)
    others = [n for n in mesh.live if n != "n5"]
    mesh.cut(["n5"], others)

    def new_root(serial, admin):
        return build_root(serial=serial, now_ms=mesh.now, expires_days=30, admins=[admin.public], threshold=1,
                          publishers=[(BOB.public, "web/")])

    second = rotate(first, new_root(2, admin2), [ADMIN], mesh.now)
    mesh.publish("n0", second)
    mesh.run_for(3_000)
    third = rotate(second, new_root(3, admin3), [admin2], mesh.now)
    mesh.publish("n1", third)
    mesh.run_for(3_000)
    assert {mesh.nodes[n].validator.root.serial for n in others} == {3}
    assert mesh.nodes["n5"].validator.root.serial == 1

    mesh.restore()
    mesh.run_for(30_000)  # anti-entropy brings the newest root; its proof carries serial 2
    assert mesh.nodes["n5"].validator.root.serial == 3
    mesh.publish("n0", pack(Bundle(name="web/after"), BOB, mesh.now))
    mesh.run_for(5_000)
    assert holders(mesh, "bundle/web/after") == sorted(mesh.live)
