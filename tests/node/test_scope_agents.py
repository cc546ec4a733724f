"""Grants and conflicts on real agents: processes on loopback, files converged under their roots.

The root names alice (admin, publisher of every name, unrestricted) and bob,
a publisher of ``web/`` limited to files under /etc/web, on role=web nodes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from grapevine.cli.client import AgentRefused
from grapevine.cli.localfleet import FAST_ENV, FleetKeys, LocalFleet, free_ports, wait_for
from grapevine.node.netkey import generate_key, write_key_file
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.grants import Grant
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust_files import build_root, init_root, write_item_file

BOB_GRANT = "web/;paths=/etc/web/**;types=file;target=role=web"


@pytest.fixture
def scoped(tmp_path):
    d = tmp_path / "keys"
    d.mkdir()
    alice, bob = SigningKey.generate(), SigningKey.generate()
    alice.save(d / "alice.key")
    now = time.time_ns() // 1_000_000
    root = build_root(serial=1, now_ms=now, expires_days=30, admins=[alice.public], threshold=1,
                      publishers=[(alice.public, "*"), (bob.public, Grant.parse(BOB_GRANT))])
    write_item_file(d / "root.gv", init_root(root, [alice], now))
    write_key_file(d / "fleet.netkey", generate_key())
    keys = FleetKeys(dir=d, author=d / "alice.key", trust=d / "root.gv", netkey=d / "fleet.netkey", author_key=alice)
    fleet = LocalFleet(tmp_path / "fleet", keys=keys, preset=None, env=FAST_ENV)
    try:
        yield fleet, alice, bob
    finally:
        fleet.close(grace=0)


def start_web_nodes(fleet: LocalFleet, n: int):
    ports = free_ports(n)
    agents = [fleet.add(f"w{i}", port=p, join=[f"127.0.0.1:{ports[0]}"] if i else [], tags={"role": "web"})
              for i, p in enumerate(ports)]
    fleet.up(*agents)
    if n > 1:
        wait_for(lambda: all(a.status()["active"] > 0 for a in agents), 30, "every node linked")
    return agents


def item_of(doc: dict, key: SigningKey, now_ms: int | None = None):
    return pack(Bundle.from_document(doc, "test"), key, now_ms or time.time_ns() // 1_000_000)


def names_held(agent) -> set[str]:
    return {b["name"] for b in agent.client().get("/v1/bundles")["bundles"]}


def test_a_bundle_outside_its_publishers_grant_is_refused_by_every_node_and_writes_nothing(scoped):
    fleet, alice, bob = scoped
    agents = start_web_nodes(fleet, 3)
    evil = item_of({"bundle": "web/keys", "target": "role=web", "resources": [
        {"file": "/etc/web/index.html", "content": "hello\n"},
        {"file": "/root/.ssh/authorized_keys", "content": "ssh-ed25519 AAAA bob\n"},
    ]}, bob)
    for a in agents:  # straight into each node's local API, as a hostile operator could
        with pytest.raises(AgentRefused) as info:
            a.client().post("/v1/inject", data=evil.encode())
        assert info.value.error == "OutOfScope"
        assert "file:/root/.ssh/authorized_keys" in info.value.detail and "grant web/ [paths /etc/web/**" in info.value.detail
    # through the command line too: exit status 2, the reason printed
    path = fleet.base / "evil.gv"
    path.write_bytes(evil.encode())
    res = fleet.cli("inject", str(path), agent=agents[1], check=False)
    assert res.returncode != 0 and "OutOfScope" in res.stderr + res.stdout
    # a bundle inside the grant spreads and converges everywhere: the mesh works, the refusal was the grant
    good = item_of({"bundle": "web/site", "target": "role=web", "resources": [
        {"file": "/etc/web/index.html", "content": "hello\n"}]}, bob)
    agents[0].client().post("/v1/inject", data=good.encode())
    for a in agents:
        wait_for(lambda a=a: (a.root / "etc/web/index.html").is_file(), 60, f"web/site on {a.name}")
    for a in agents:
        assert not (a.root / "root").exists(), f"{a.name} wrote outside the grant"
        assert "web/keys" not in names_held(a) and "web/site" in names_held(a)
        assert a.metric("grapevine_refusals_total", 'reason="OutOfScope"') >= 1


def test_the_later_claim_on_a_resource_is_refused_and_the_earlier_bundle_keeps_converging(scoped):
    fleet, alice, bob = scoped
    agents = start_web_nodes(fleet, 2)
    first = item_of({"bundle": "app/first", "resources": [{"file": "/etc/shared.conf", "content": "first\n"}]}, alice)
    agents[0].client().post("/v1/inject", data=first.encode())
    for a in agents:
        wait_for(lambda a=a: (a.root / "etc/shared.conf").is_file(), 60, f"app/first on {a.name}")
    # a later bundle (newer stamp; its name sorts first, so no name order can explain the outcome)
    later = item_of({"bundle": "aaa/later", "resources": [
        {"file": "/etc/shared.conf", "content": "later\n"}, {"file": "/etc/later-only", "content": "x\n"}]}, alice,
        first.version.wall_ms + 1000)
    agents[1].client().post("/v1/inject", data=later.encode())
    wait_for(lambda: all("aaa/later" in names_held(a) for a in agents), 30, "aaa/later on every node")
    for a in agents:
        report = a.client(60).post("/v1/converge", {})
        (refused,) = report["refused"]
        assert refused["reason"] == "Conflict" and refused["bundle"] == "aaa/later" and refused["kept"] == "app/first"
        assert "'aaa/later'" in refused["detail"] and "'app/first'" in refused["detail"]
        assert report["failed"] == 0 and report["bundles"] == ["app/first"]
        assert (a.root / "etc/shared.conf").read_text() == "first\n"
        assert not (a.root / "etc/later-only").exists()
    # the earlier bundle still converges: drift is corrected
    victim: Path = agents[0].root / "etc/shared.conf"
    victim.write_text("drifted\n")
    report = agents[0].client(60).post("/v1/converge", {})
    assert report["changed"] == 1 and victim.read_text() == "first\n"


def test_inject_of_a_policy_file_with_one_bundle_outside_the_grant_injects_none_of_it(scoped):
    """The command checks every bundle against the agent's current root before sending any."""
    import yaml

    fleet, alice, bob = scoped
    (agent,) = start_web_nodes(fleet, 1)
    bob_key = fleet.base / "bob.key"
    bob.save(bob_key)
    docs = [
        {"bundle": "web/fine", "target": "role=web", "resources": [{"file": "/etc/web/fine", "content": "x\n"}]},
        {"bundle": "web/pkg", "target": "role=web", "resources": [{"package": "nmap"}]},
    ]
    policy = fleet.base / "two.yaml"
    policy.write_text(yaml.safe_dump_all(docs))
    res = fleet.cli("inject", str(policy), "--key", str(bob_key), agent=agent, check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "OutOfScope" in res.stderr and "package:nmap" in res.stderr and "type package is not granted" in res.stderr
    assert "web/fine" not in names_held(agent) and not (agent.root / "etc/web/fine").exists()
    docs.pop()
    policy.write_text(yaml.safe_dump_all(docs))
    fleet.cli("inject", str(policy), "--key", str(bob_key), agent=agent)
    wait_for(lambda: (agent.root / "etc/web/fine").is_file(), 30, "web/fine converged")
