"""The target side of a preview (node/preview.py) with the real parts it runs on: an Admission on a
real trust root, the agent's Convergence over a real item store, the engine on a temporary root."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest

from grapevine.gossip.store import ItemStore
from grapevine.node.convergence import ConvergeSettings, Convergence
from grapevine.node.ports import ConvergeLink
from grapevine.node.preview import Previewer
from grapevine.policy.admission import Admission
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.grants import Grant
from grapevine.policy.keys import SigningKey
from grapevine.policy.secrets import seal
from grapevine.policy.trust_files import build_root, init_root

ALICE, BOB, NODE = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def packed(doc: dict, key=ALICE, at: int | None = None, **extra):
    b = Bundle.from_document(doc, "test")
    if extra:
        b = dataclasses.replace(b, **extra)
    return pack(b, key, at or now_ms())


def motd(content: str, name="site/motd", target=None):
    doc = {"bundle": name, "resources": [{"file": "/etc/motd", "content": content}]}
    if target:
        doc["target"] = target
    return doc


@pytest.fixture
def node(tmp_path):
    t = now_ms() - 60_000
    root = build_root(serial=1, now_ms=t, expires_days=1, admins=[ALICE.public], threshold=1,
                      publishers=[(ALICE.public, "*"), (BOB.public, Grant.parse("web/;paths=/etc/web/**"))])
    admission = Admission(init_root(root, [ALICE], t))
    store = ItemStore()
    facts = {"name": "n1", "role": "web"}
    conv = Convergence(node_id="n1@127.0.0.1:1", settings=ConvergeSettings(root=tmp_path), admission=admission,
                       facts=facts, store=None, host=ConvergeLink(items=store.items, drain=None, spawn=None),
                       metrics=None, rng=random.Random(1))
    prev = Previewer(admission=admission, convergence=conv, stored=store.get, facts=facts, root=tmp_path,
                     node_key=NODE, wall=now_ms)
    return prev, store, tmp_path


def run(prev, items):
    return asyncio.run(prev.preview(items, timeout_s=30))


def snapshot(store, root):
    return ([(i.key, tuple(i.version)) for i in store.items()],
            sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*")))


def test_the_candidate_stands_in_for_the_stored_version_and_nothing_changes(node):
    prev, store, root = node
    v1 = packed(motd("v1\n"), at=now_ms() - 5000)
    store.put(v1)
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("v1\n")
    before = snapshot(store, root)
    plan = run(prev, [packed(motd("v2\n"))])
    assert plan["targeted"] == ["site/motd"] and plan["refused"] == [] and plan["error"] == ""
    (r,) = plan["resources"]
    assert r["id"] == "file:/etc/motd" and r["status"] == "changed" and "-v1" in r["diff"] and "+v2" in r["diff"]
    assert snapshot(store, root) == before  # no item stored, no file touched


def test_a_candidate_not_newer_than_the_stored_version_is_refused_as_stale(node):
    prev, store, _ = node
    at = now_ms() - 5000
    store.put(packed(motd("v1\n"), at=at))
    plan = run(prev, [packed(motd("v2\n"), at=at - 1)])
    assert [x["reason"] for x in plan["refused"]] == ["Stale"] and plan["resources"] == []


def test_a_candidate_outside_its_publishers_grant_is_refused_and_not_planned(node):
    prev, _, root = node
    evil = packed({"bundle": "web/keys", "resources": [{"file": "/root/.ssh/authorized_keys", "content": "k\n"}]}, BOB)
    plan = run(prev, [evil])
    (x,) = plan["refused"]
    assert x["reason"] == "OutOfScope" and "file:/root/.ssh/authorized_keys" in x["detail"]
    assert plan["resources"] == [] and not (root / "root").exists()


def test_other_bundles_stay_so_requires_across_bundles_resolve(node):
    prev, store, _ = node
    store.put(packed({"bundle": "base", "resources": [{"directory": "/etc/app"}]}, at=now_ms() - 5000))
    app = packed({"bundle": "app", "resources": [
        {"file": "/etc/app/app.conf", "content": "x\n", "require": ["directory:/etc/app"]}]})
    plan = run(prev, [app])
    assert plan["error"] == "" and [r["id"] for r in plan["resources"]] == ["file:/etc/app/app.conf"]
    assert plan["resources"][0]["status"] in ("changed", "skipped")


def test_a_candidate_claiming_an_earlier_bundles_resource_is_refused_as_a_conflict(node):
    prev, store, _ = node
    store.put(packed(motd("first\n", name="first"), at=now_ms() - 5000))
    plan = run(prev, [packed(motd("later\n", name="later"))])
    (x,) = plan["refused"]
    assert x["reason"] == "Conflict" and x["bundle"] == "later"


def test_a_candidate_that_does_not_target_this_node_plans_nothing(node):
    prev, _, _ = node
    plan = run(prev, [packed(motd("v2\n", target="role=db"))])
    assert plan == {"targeted": [], "refused": [], "error": "", "resources": []}


def test_secrets_sealed_to_this_node_open_with_its_key_and_stay_hidden(node):
    prev, _, _ = node
    doc = {"bundle": "db", "files": {"db.conf.j2": "password={{ secrets.pw }}\n"},
           "resources": [{"file": "/etc/db.conf", "source": "db.conf.j2"}]}
    cand = packed(doc, secrets={"pw": {NODE.key_id: seal("hunter2-plaintext", NODE.public)}})
    plan = run(prev, [cand])
    assert plan["error"] == "" and plan["resources"][0]["status"] == "changed"
    assert "hunter2-plaintext" not in repr(plan)
