"""`grapevine inject --preview` on real agents: processes on loopback, files under their roots.

The root names alice (admin, publisher of every name, operator with run and
converge), bob (publisher of ``web/`` limited to files under /etc/web, and an
operator who may converge) and carol (an operator who may only run commands).
Four role=web nodes hold site/motd v1; then n0 already has the candidate's
content, n1 and n2 hold v1 (the same drift), and on n3 /etc/motd is a
directory, so the candidate would fail there.
"""

from __future__ import annotations

import json
import time

import pytest

from grapevine.cli.localfleet import FAST_ENV, FleetKeys, LocalFleet, free_ports, wait_for
from grapevine.cli.preview import fleet_plan
from grapevine.cli.run import build_order
from grapevine.node.netkey import generate_key, write_key_file
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.grants import Grant
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root, init_root, write_item_file
from tests.node.bundles import write_bundle

NAME, FILE = "site/motd", "/etc/motd"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    base = tmp_path_factory.mktemp("preview")
    d = base / "keys"
    d.mkdir()
    alice, bob, carol = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    for name, key in (("alice", alice), ("bob", bob), ("carol", carol)):
        key.save(d / f"{name}.key")
    now = time.time_ns() // 1_000_000
    root = build_root(serial=1, now_ms=now - 1000, expires_days=1, admins=[alice.public], threshold=1,
                      publishers=[(alice.public, "*"), (bob.public, Grant.parse("web/;paths=/etc/web/**"))],
                      operators=[(alice.public, OperatorScope(selector=None, actions=("run", "converge"))),
                                 (bob.public, OperatorScope(selector=None, actions=("converge",))),
                                 (carol.public, OperatorScope(selector=None, actions=("run",)))])
    write_item_file(d / "root.gv", init_root(root, [alice], now - 1000))
    write_key_file(d / "fleet.netkey", generate_key())
    keys = FleetKeys(dir=d, author=d / "alice.key", trust=d / "root.gv", netkey=d / "fleet.netkey", author_key=alice)
    fleet = LocalFleet(base / "fleet", keys=keys, preset=None, env=FAST_ENV)
    try:
        ports = free_ports(4)
        agents = [fleet.add(f"n{i}", port=p, join=[f"127.0.0.1:{ports[0]}"] if i else [], tags={"role": "web"})
                  for i, p in enumerate(ports)]
        fleet.up(*agents)
        ids = {a.node_id for a in agents}

        def knows_all(a) -> bool:  # a node answers a query only from an origin it knows as a member
            m = a.client().get("/v1/members")
            return ids - {a.node_id} <= set(m["active"]) | set(m["passive"])

        wait_for(lambda: all(knows_all(a) for a in agents), 60, "every node knows every other")
        v1 = write_bundle(base / "v1.yaml", NAME, "role=web", {FILE: "v1\n"})
        fleet.cli("inject", str(v1), "--key", str(keys.author), agent=agents[0])
        for a in agents:
            wait_for(lambda a=a: (a.root / "etc/motd").is_file() and a.client().get("/v1/bundles")["bundles"][0]["applied"],
                     60, f"v1 applied on {a.name}")
        (agents[0].root / "etc/motd").write_text("v2\n")  # n0: already in the candidate's state
        (agents[3].root / "etc/motd").unlink()
        (agents[3].root / "etc/motd").mkdir()  # n3: the candidate would fail here
        yield fleet, agents, base, d
    finally:
        fleet.close(grace=0)


def snapshot(agents) -> dict:
    """Everything a preview must leave alone: files, items, applied versions, history, converge reports."""
    out = {}
    for a in agents:
        c = a.client()
        files = sorted((str(p.relative_to(a.root)), p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
                       for p in a.root.rglob("*"))
        status = c.get("/v1/status")
        out[a.name] = {"files": files, "bundles": c.get("/v1/bundles"), "history": c.get(f"/v1/history?name={NAME}"),
                       "items": status["items"], "last_converge": status.get("last_converge")}
    return out


def preview_cli(fleet, agent, policy, key, *extra):
    return fleet.cli("inject", str(policy), "--key", str(key), "--preview", *extra, agent=agent, check=False)


def test_preview_groups_the_fleets_plan_and_changes_nothing(mesh):
    fleet, agents, base, keys_dir = mesh
    v2 = write_bundle(base / "v2.yaml", NAME, "role=web", {FILE: "v2\n"})
    before = snapshot(agents)
    res = preview_cli(fleet, agents[1], v2, keys_dir / "alice.key", "--json")
    assert res.returncode == 1, res.stderr  # n3 would fail
    doc = json.loads(res.stdout)
    ids = [a.node_id for a in agents]
    assert doc["targets"] == sorted(ids)
    (group,) = doc["groups"]  # n1 and n2 share one change, its diff shown once
    assert group["resource"] == "file:/etc/motd" and group["nodes"] == [ids[1], ids[2]] and group["count"] == 2
    assert "-v1" in group["diff"] and "+v2" in group["diff"]
    assert doc["unchanged"] == [ids[0]]
    (failed,) = doc["failed"]
    assert failed["node"] == ids[3] and "is a directory" in failed["error"]
    assert set(failed) == {"node", "error"}
    assert snapshot(agents) == before  # no file, item, applied version, history or report changed
    # the audit trail of the origin records who previewed what
    runs = agents[1].client().get("/v1/runs/history")["runs"]
    assert runs[0]["command"] == f"preview {NAME}" and runs[0]["refused"] is None


def test_the_text_view_counts_and_names_and_exits_0_when_only_changes_are_planned(mesh):
    fleet, agents, base, keys_dir = mesh
    v2 = write_bundle(base / "v2-web-only.yaml", NAME, "role=web and name!=n3", {FILE: "v2\n"})
    res = preview_cli(fleet, agents[2], v2, keys_dir / "alice.key")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "preview of 3 target(s): 2 would change, 1 already in the desired state, 0 would fail" in out
    assert f"file:/etc/motd: content" in out and f"on 2 node(s): {agents[1].node_id}, {agents[2].node_id}" in out
    assert "+v2" in out and f"unchanged: 1 node(s): {agents[0].node_id}" in out


def test_a_preview_outside_the_publishers_grant_is_refused(mesh):
    fleet, agents, base, keys_dir = mesh
    import yaml

    evil = base / "evil.yaml"
    evil.write_text(yaml.safe_dump({"bundle": "web/keys", "resources": [
        {"file": "/etc/web/index.html", "content": "hi\n"}, {"file": "/root/.ssh/authorized_keys", "content": "k\n"}]}))
    before = snapshot(agents)
    res = preview_cli(fleet, agents[0], evil, keys_dir / "bob.key", "--json")
    assert res.returncode == 2 and "OutOfScope" in res.stderr and "file:/root/.ssh/authorized_keys" in res.stderr
    # sent past the command line's check, straight to the agent: every node refuses the candidate itself
    bob = SigningKey.load(keys_dir / "bob.key")
    item = pack(Bundle.from_document(yaml.safe_load(evil.read_text()), "t"), bob, time.time_ns() // 1_000_000)
    signed = build_order(sock=agents[0].socket, key=bob, selector="", action=RunAction.preview([item]),
                         timeout_s=30, batched=False)
    events = list(agents[0].client().stream("POST", "/v1/run", {"order": signed.encode().hex(), "batch": None,
                                                           "max_failures": None}))
    doc = fleet_plan(events[-1]["summary"])
    assert doc["groups"] == [] and doc["unchanged"] == []
    assert sorted(f["node"] for f in doc["failed"]) == sorted(a.node_id for a in agents)
    assert all("web/keys: OutOfScope" in f["error"] for f in doc["failed"])
    assert snapshot(agents) == before
    for a in agents:
        assert not (a.root / "root").exists() and not (a.root / "etc/web").exists()


def test_an_operator_who_may_not_converge_may_not_preview(mesh):
    fleet, agents, base, keys_dir = mesh
    v2 = write_bundle(base / "v2-carol.yaml", NAME, "role=web", {FILE: "v2\n"})
    # carol publishes nothing either: sign the candidate with alice, the order with carol, as a forger would
    carol = SigningKey.load(keys_dir / "carol.key")
    item = pack(Bundle.from_document({"bundle": NAME, "resources": [{"file": FILE, "content": "v2\n"}]}, "t"),
                SigningKey.load(keys_dir / "alice.key"), time.time_ns() // 1_000_000)
    signed = build_order(sock=agents[0].socket, key=carol, selector="", action=RunAction.preview([item]),
                         timeout_s=30, batched=False)
    with pytest.raises(Exception, match="OutOfScope"):
        list(agents[0].client().stream("POST", "/v1/run", {"order": signed.encode().hex(), "batch": None,
                                                           "max_failures": None}))
    res = preview_cli(fleet, agents[0], v2, keys_dir / "carol.key")
    assert res.returncode == 2


def test_a_candidate_of_the_largest_size_a_node_admits_reaches_every_target(mesh):
    """The order carries the whole candidate: a bundle at the admission cap must fit the run-order and
    peer-route caps (with the route's old 1 MiB body cap every remote node answered BadRouteBody)."""
    fleet, agents, base, keys_dir = mesh
    import yaml

    from grapevine.node import frames
    from grapevine.policy.bundle import MAX_BUNDLE_BYTES

    def doc(n: int) -> dict:
        return {"bundle": "big/blob", "target": "role=web", "resources": [{"file": "/etc/blob", "content": "x" * n}]}

    fixed = len(Bundle.from_document(doc(70_000), "t").encode()) - 70_000
    path = base / "big.yaml"
    path.write_text(yaml.safe_dump(doc(MAX_BUNDLE_BYTES - fixed - 16), width=10 ** 9))  # 16 bytes under the cap
    size = len(Bundle.from_document(yaml.safe_load(path.read_text()), "t").encode())
    assert MAX_BUNDLE_BYTES - 64 < size <= MAX_BUNDLE_BYTES < frames.MAX_ROUTE_BODY_BYTES - 4096
    res = preview_cli(fleet, agents[0], path, keys_dir / "alice.key", "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["failed"] == [], res.stdout[-2000:] + res.stderr
    (group,) = out["groups"]
    assert group["resource"] == "file:/etc/blob" and group["nodes"] == sorted(a.node_id for a in agents)
    assert not any((a.root / "etc/blob").exists() for a in agents)


def test_the_bundles_of_one_policy_file_are_previewed_together_each_on_its_own_targets(mesh):
    """site/app (only n1) requires site/motd's file: both candidates are in one dry run, so it resolves."""
    fleet, agents, base, keys_dir = mesh
    import yaml

    path = base / "two.yaml"
    path.write_text(yaml.safe_dump([
        {"bundle": NAME, "target": "role=web", "resources": [{"file": FILE, "content": "v2\n"}]},
        {"bundle": "site/app", "target": "name=n1", "resources": [
            {"file": "/etc/app.conf", "content": "app\n", "require": [f"file:{FILE}"]}]}]))
    before = snapshot(agents)
    res = preview_cli(fleet, agents[2], path, keys_dir / "alice.key", "--json")
    out = json.loads(res.stdout)
    ids = [a.node_id for a in agents]
    assert res.returncode == 1 and out["selector"] == "(name=n1) or (role=web)"
    assert out["bundles"] == [NAME, "site/app"] and out["targets"] == sorted(ids)
    assert [(g["resource"], g["nodes"]) for g in out["groups"]] == [
        ("file:/etc/motd", [ids[1], ids[2]]), ("file:/etc/app.conf", [ids[1]])]
    assert out["unchanged"] == [ids[0]] and [f["node"] for f in out["failed"]] == [ids[3]]
    assert snapshot(agents) == before
