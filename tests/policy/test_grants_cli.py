"""Grants from the command line: `trust init|rotate --publisher 'PUB=PREFIX;...'`, `trust show`, `bundle pack`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from grapevine.cli.main import cli
from grapevine.policy.keys import PublicKey

SCOPED = "bob.key.pub=web/;paths=/etc/nginx/**,/srv/www/**;types=file,directory,service;target=role=web"
GOOD = """\
bundle: web/nginx
target: role=web and env=prod
resources:
  - file: /etc/nginx/nginx.conf
    content: "worker_processes 2;\\n"
  - service: nginx
"""
SSH = """\
bundle: web/keys
target: role=web
resources:
  - file: /root/.ssh/authorized_keys
    content: "ssh-ed25519 AAAA mallory\\n"
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def keydir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("alice", "bob", "carol"):
        assert run("keys", "gen", "--out", f"{name}.key").exit_code == 0
    r = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--publisher", SCOPED,
            "--publisher", "carol.key.pub=db/", "--out", "root.gv")
    assert r.exit_code == 0, r.output
    return tmp_path


def kid(name):
    return PublicKey.load(f"{name}.key.pub").key_id


def test_trust_show_prints_every_grant_and_unrestricted_ones_as_such(keydir):
    r = run("trust", "show", "root.gv")
    assert r.exit_code == 0, r.output
    assert "grant web/: paths /etc/nginx/**,/srv/www/**; types directory,file,service; target role=web" in r.output
    assert "grant db/: unrestricted (any path, type and node)" in r.output
    doc = json.loads(run("trust", "show", "root.gv", "--json").output)
    assert doc["grants"][kid("bob")]["web/"] == {
        "paths": "/etc/nginx/**,/srv/www/**", "types": "directory,file,service", "target": "role=web"}
    assert doc["grants"][kid("carol")]["db/"] == {"paths": "any", "types": "any", "target": "any"}


def test_bundle_pack_refuses_a_bundle_outside_the_grant_and_writes_nothing(keydir):
    (keydir / "good.yaml").write_text(GOOD)
    (keydir / "ssh.yaml").write_text(SSH)
    r = run("bundle", "pack", "good.yaml", "--key", "bob.key", "--trust", "root.gv", "--out", "good.gv")
    assert r.exit_code == 0, r.output
    r = run("bundle", "pack", "ssh.yaml", "--key", "bob.key", "--trust", "root.gv", "--out", "ssh.gv", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["reason"] == "OutOfScope"
    assert "file:/root/.ssh/authorized_keys" in doc["detail"]
    assert "/root/.ssh/authorized_keys is outside the granted paths" in doc["detail"]
    assert "grant web/ [paths /etc/nginx/**,/srv/www/**" in doc["detail"]
    assert not (keydir / "ssh.gv").exists()


def test_rotate_carries_grants_over_and_can_replace_them(keydir):
    assert run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--out", "root2.gv").exit_code == 0
    doc = json.loads(run("trust", "show", "root2.gv", "--json").output)
    assert doc["grants"][kid("bob")]["web/"]["target"] == "role=web"
    r = run("trust", "rotate", "--current", "root2.gv", "--key", "alice.key",
            "--publisher", "bob.key.pub=web/;types=file;target=role=web and env=prod", "--out", "root3.gv")
    assert r.exit_code == 0, r.output
    grants = json.loads(run("trust", "show", "root3.gv", "--json").output)["grants"]
    assert grants == {kid("bob"): {"web/": {"paths": "any", "types": "file", "target": "role=web and env=prod"}}}
    r = run("trust", "verify", "root3.gv", "--current", "root2.gv")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "spec,message",
    [
        ("bob.key.pub=web/;paths=/srv/a**", "whole path component"),
        ("bob.key.pub=web/;types=file,rootkit", "unknown resource type"),
        ("bob.key.pub=web/;target=role=", "bad selector"),
        ("bob.key.pub=;types=file", "give a bundle name prefix"),
        ("bob.key.pub=web/;colour=blue", "expected paths="),
    ],
)
def test_bad_publisher_clauses_exit_2_with_the_reason(keydir, spec, message):
    r = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--publisher", spec, "--out", "bad.gv")
    assert r.exit_code == 2 and message in r.stderr, r.output
