"""`grapevine keys` and `grapevine trust` driven as an operator would."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from grapevine.cli.main import cli
from grapevine.policy.keys import PublicKey


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def keydir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("alice", "bob", "carol", "dave"):
        assert run("keys", "gen", "--out", f"{name}.key").exit_code == 0
    return tmp_path


def test_keys_gen_subprocess_prints_the_key_id_and_writes_0600(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "grapevine.cli.main", "keys", "gen", "--out", str(tmp_path / "a.key"), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["key_id"] == PublicKey.load(tmp_path / "a.key.pub").key_id
    assert stat.S_IMODE(os.stat(tmp_path / "a.key").st_mode) == 0o600


def test_keys_gen_refuses_to_overwrite(keydir):
    result = run("keys", "gen", "--out", "alice.key")
    assert result.exit_code == 2
    assert "already exists" in result.stderr


def test_trust_init_with_a_public_key_as_signer_is_bad_input(keydir):
    result = run("trust", "init", "--key", "alice.key.pub", "--admin", "alice.key.pub", "--out", "root.gv")
    assert result.exit_code == 2
    assert "alice.key.pub is a public key file" in result.stderr
    assert not (keydir / "root.gv").exists()


def test_trust_init_with_a_group_readable_key_is_bad_input(keydir):
    os.chmod("alice.key", 0o640)
    result = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--out", "root.gv")
    assert result.exit_code == 2
    assert "alice.key" in result.stderr and "group or others" in result.stderr


def test_rotation_to_threshold_two_then_one_signature_is_not_enough(keydir):
    assert run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub",
               "--publisher", "carol.key.pub=web/", "--out", "root.gv").exit_code == 0
    # serial 2: alice and bob are admins, two signatures needed from now on
    r = run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--admin", "alice.key.pub",
            "--admin", "bob.key.pub", "--threshold", "2", "--out", "root2.gv")
    assert r.exit_code == 0, r.output
    ok = run("trust", "verify", "root2.gv", "--current", "root.gv", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["threshold"] == 2

    # serial 3 signed by alice alone: rotate refuses to write it ...
    r = run("trust", "rotate", "--current", "root2.gv", "--key", "alice.key", "--revoke", "carol.key.pub",
            "--publisher", "dave.key.pub=web/", "--out", "root3.gv")
    assert r.exit_code == 1 and r.stdout.strip() == "OutOfScope"
    assert not (keydir / "root3.gv").exists()
    # ... and written as a partial candidate, `trust verify` refuses it
    r = run("trust", "rotate", "--current", "root2.gv", "--key", "alice.key", "--publisher", "dave.key.pub=web/",
            "--partial", "--out", "root3.gv")
    assert r.exit_code == 0 and "1 of the 2" in r.stdout
    bad = run("trust", "verify", "root3.gv", "--current", "root2.gv")
    assert bad.exit_code == 1
    assert bad.stdout.strip() == "OutOfScope"
    assert "1 of the 2" in bad.stderr
    # bob adds his signature on his own machine: now it is accepted
    assert run("trust", "sign", "root3.gv", "--key", "bob.key", "--current", "root2.gv").exit_code == 0
    good = run("trust", "verify", "root3.gv", "--current", "root2.gv", "--json")
    assert good.exit_code == 0, good.output
    doc = json.loads(good.stdout)
    assert doc["ok"] and doc["serial"] == 3 and len(doc["signed_by"]) == 2
    # a node still on root.gv catches up through root3's proof (root2, signed by alice)
    assert run("trust", "verify", "root3.gv", "--current", "root.gv").exit_code == 0

    # carol's bundles are refused under root3, dave's are accepted
    (keydir / "site.yaml").write_text("bundle: web/nginx\nresources:\n  - package: nginx\n")
    assert run("bundle", "pack", "site.yaml", "--key", "carol.key", "--out", "carol.gv").exit_code == 0
    assert run("bundle", "pack", "site.yaml", "--key", "dave.key", "--out", "dave.gv").exit_code == 0
    assert run("bundle", "verify", "carol.gv", "--trust", "root2.gv").exit_code == 0
    refused = run("bundle", "verify", "carol.gv", "--trust", "root3.gv")
    assert refused.exit_code == 1 and refused.stdout.strip() == "UnknownKey"
    assert run("bundle", "verify", "dave.gv", "--trust", "root3.gv").exit_code == 0


def test_the_same_root_twice_is_stale(keydir):
    run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--out", "root.gv")
    r = run("trust", "verify", "root.gv", "--current", "root.gv", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["reason"] == "Stale"


def test_operator_scope_and_show(keydir):
    r = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub",
            "--operator", "bob.key.pub=role=web;run", "--operator", "carol.key.pub=", "--expires", "7", "--out", "root.gv")
    assert r.exit_code == 0, r.output
    doc = json.loads(run("trust", "show", "root.gv", "--json").stdout)
    bob = PublicKey.load("bob.key.pub").key_id
    carol = PublicKey.load("carol.key.pub").key_id
    assert doc["operators"][bob] == [{"actions": ["run"], "selector": "role=web"}]
    assert doc["operators"][carol] == [{"actions": ["converge", "run"], "selector": None}]
    assert doc["expires_ms"] - doc["created_ms"] == 7 * 86_400_000


@pytest.mark.parametrize(
    "args,message",
    [
        (["--publisher", "bob.key.pub"], "PUBKEY_FILE=VALUE"),
        (["--publisher", "bob.key.pub="], "prefix"),
        (["--publisher", "nope.pub=web/"], "does not exist"),
        (["--operator", "bob.key.pub=role=web;reboot"], "actions"),
        (["--operator", "bob.key.pub=role in (web"], "role in (web"),
        (["--threshold", "3"], "threshold 3"),
    ],
)
def test_bad_trust_init_arguments_exit_2_with_the_reason(keydir, args, message):
    r = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", *args, "--out", "root.gv")
    assert r.exit_code == 2
    assert message in r.stderr


def test_trust_sign_by_a_non_admin_is_refused_and_leaves_the_candidate_unchanged(keydir):
    run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--admin", "bob.key.pub", "--out", "root.gv")
    run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--threshold", "2", "--out", "root2.gv")
    run("trust", "rotate", "--current", "root2.gv", "--key", "alice.key", "--partial", "--out", "root3.gv")
    before = (keydir / "root3.gv").read_bytes()
    r = run("trust", "sign", "root3.gv", "--key", "carol.key", "--current", "root2.gv")
    assert r.exit_code == 1 and r.stdout.strip() == "UnknownKey"
    assert (keydir / "root3.gv").read_bytes() == before
