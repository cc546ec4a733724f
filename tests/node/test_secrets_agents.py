"""Secrets through real agents: sealed to one node's key at pack time, rendered there only,
never shown by the agent (API, CLI, reports, dry runs, its log), and never blocking other bundles."""

from __future__ import annotations

import json
import textwrap

import pytest

from grapevine.cli.localfleet import free_ports, wait_for
from grapevine.policy.keys import SigningKey

pytestmark = pytest.mark.slow

VALUE = "s3cret-db-password-7731"


def _report_of(agent, name: str) -> dict | None:
    """The newest converge report that includes bundle ``name``."""
    for r in agent.client().get("/v1/reports?limit=10")["reports"]:
        if name in r["bundles"]:
            return r
    return None


def test_a_secret_sealed_to_one_node_is_rendered_there_only_and_never_shown(fleet, tmp_path):
    pa, pb = free_ports(2)
    a = fleet.add("db1", port=pa, join=[])
    b = fleet.add("web1", port=pb, join=[f"127.0.0.1:{pa}"])
    # the node key exists before the agent starts, as after `grapevine agent` ran once
    a.data_dir.mkdir(parents=True)
    key = SigningKey.generate()
    key.save(a.data_dir / "node.key")
    key.public.save(tmp_path / "db1.node.pub")
    fleet.up(a, b)

    policy = tmp_path / "site.yaml"
    policy.write_text(textwrap.dedent(f"""\
        - bundle: app/db
          secrets:
            db_password:
              db1.node.pub: "{VALUE}"
          resources:
            - file: /etc/app/db.conf
              content: "password={{{{ secrets.db_password }}}}\\n"
              template: true
        - bundle: base/motd
          resources:
            - file: /etc/motd
              content: "hello\\n"
    """))
    out = fleet.cli_json("inject", str(policy), "--key", str(fleet.keys.author), agent=b)
    assert {i["key"] for i in out["injected"]} == {"bundle/app/db", "bundle/base/motd"}

    conf = a.root / "etc/app/db.conf"
    wait_for(lambda: conf.is_file(), 60, "db.conf rendered on db1")
    assert conf.read_text() == f"password={VALUE}\n"
    assert conf.stat().st_mode & 0o777 == 0o600
    # the other node: the bundle it cannot open fails alone, its other bundle is applied
    wait_for(lambda: (b.root / "etc/motd").is_file(), 60, "motd on web1")
    wait_for(lambda: (a.root / "etc/motd").is_file(), 60, "motd on db1")
    assert not (b.root / "etc/app/db.conf").exists()
    rb = wait_for(lambda: _report_of(b, "app/db"), 30, "a report on web1")["report"]
    by = {r["id"]: r for r in rb["resources"]}
    assert by["file:/etc/motd"]["status"] in ("changed", "unchanged")
    assert by["file:/etc/app/db.conf"]["status"] == "failed"
    assert "secret 'db_password' is not sealed to this node" in by["file:/etc/app/db.conf"]["error"]
    applied = [
        r for rep in a.client().get("/v1/reports?limit=50")["reports"] for r in rep["report"]["resources"]
        if r["id"] == "file:/etc/app/db.conf" and r["status"] == "changed"
    ]
    assert applied and applied[-1]["diff"] == "content hidden: rendered from a secret; diff hidden\n"
    assert all(rep["report"]["failed"] == 0 for rep in a.client().get("/v1/reports?limit=50")["reports"])

    # drift, then a dry run through the agent: the change is planned, its content hidden
    conf.write_text("password=old-local-plaintext\n")
    plan = a.client().post("/v1/converge", {"dry_run": True})
    [entry] = [r for r in plan["resources"] if r["id"] == "file:/etc/app/db.conf"]
    assert entry["status"] == "changed" and "content hidden" in entry["diff"]
    assert conf.read_text() == "password=old-local-plaintext\n"  # a dry run changes nothing

    seen = [json.dumps(plan)]
    for agent in (a, b):
        c = agent.client()
        seen += [json.dumps(c.get(p)) for p in ("/v1/status", "/v1/bundles", "/v1/history?name=app/db",
                                                 "/v1/reports?limit=50")]
        seen += [fleet.cli("status", agent=agent).stdout, fleet.cli("bundles", agent=agent).stdout,
                 fleet.cli("history", "app/db", agent=agent).stdout]
    seen.append(fleet.cli("converge", "--dry-run", agent=a, check=False).stdout)
    for text in seen:
        assert VALUE not in text and "old-local-plaintext" not in text
    for agent in (a, b):
        log_text = agent.log_path.read_text(errors="replace")
        assert VALUE not in log_text and "old-local-plaintext" not in log_text
        assert (agent.data_dir / "state.db").read_bytes().find(VALUE.encode()) == -1
