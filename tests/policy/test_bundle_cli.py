"""`grapevine bundle pack|verify|show` driven as an operator would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from grapevine.cli.main import cli
from grapevine.gossip.item import SignedItem
from grapevine.policy.bundle import Bundle
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import REASONS
from grapevine.policy.trust_files import build_root, init_root, write_item_file

SITE = """\
bundle: web/nginx
target: role=web
files:
  nginx.conf.j2: "worker_processes {{ facts.cpu_count }};\\n"
resources:
  - package: nginx
  - file: /etc/nginx/nginx.conf
    source: nginx.conf.j2
    require: [package:nginx]
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """alice: admin + publisher of web/; bob: publisher of web/ (revoked in root2); carol: publisher of db/;
    mallory: not in any root."""
    monkeypatch.chdir(tmp_path)
    for name in ("alice", "bob", "carol", "mallory"):
        assert run("keys", "gen", "--out", f"{name}.key").exit_code == 0
    assert run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--publisher", "alice.key.pub=web/",
               "--publisher", "bob.key.pub=web/", "--publisher", "carol.key.pub=db/", "--out", "root.gv").exit_code == 0
    assert run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--revoke", "bob.key.pub",
               "--out", "root2.gv").exit_code == 0
    (tmp_path / "site.yaml").write_text(SITE)
    for name in ("alice", "bob", "carol", "mallory"):
        r = run("bundle", "pack", "site.yaml", "--key", f"{name}.key", "--out", f"{name}.gv")
        assert r.exit_code == 0, r.output
    return tmp_path


@pytest.mark.parametrize(
    "bundle,root,reason",
    [
        ("alice.gv", "root.gv", None),
        ("alice.gv", "root2.gv", None),
        ("bob.gv", "root.gv", None),
        ("bob.gv", "root2.gv", "UnknownKey"),  # revoked by the rotation
        ("mallory.gv", "root.gv", "UnknownKey"),  # never in the root
        ("carol.gv", "root.gv", "OutOfScope"),  # may publish db/ only
        ("alice.gv", "expired.gv", "Expired"),
    ],
)
def test_bundle_verify_exit_status_and_reason(fleet, bundle, root, reason):
    alice = SigningKey.load("alice.key")
    old = build_root(serial=1, now_ms=1_000_000, expires_days=1, admins=[alice.public], threshold=1,
                     publishers=[(alice.public, "web/")])
    write_item_file("expired.gv", init_root(old, [alice], 1_000_000))
    r = run("bundle", "verify", bundle, "--trust", root)
    if reason is None:
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("ok: bundle web/nginx")
    else:
        assert r.exit_code == 1
        assert r.stdout.strip() == reason
        assert reason in r.stderr


@pytest.mark.parametrize("where", [0, 5, 40, 120, -70, -1])
def test_one_flipped_byte_fails_verification_with_a_reason(fleet, where):
    data = bytearray((fleet / "alice.gv").read_bytes())
    data[where] ^= 0x01
    (fleet / "flipped.gv").write_bytes(bytes(data))
    r = run("bundle", "verify", "flipped.gv", "--trust", "root.gv", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["reason"] in REASONS


def test_bundle_verify_subprocess_reports_the_reason(fleet):
    cmd = [sys.executable, "-m", "grapevine.cli.main", "bundle", "verify"]
    good = subprocess.run(cmd + ["alice.gv", "--trust", "root.gv"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(cmd + ["carol.gv", "--trust", "root.gv"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stdout.strip() == "OutOfScope"


def test_pinned_fingerprint_must_match(fleet):
    fp = json.loads(run("trust", "show", "root.gv", "--json").stdout)["fingerprint"]
    assert run("bundle", "verify", "alice.gv", "--trust", "root.gv", "--pin", fp).exit_code == 0
    r = run("bundle", "verify", "alice.gv", "--trust", "root.gv", "--pin", "ab" * 32)
    assert r.exit_code == 1 and r.stdout.strip() == "BadSignature"


def test_packed_file_is_the_encoded_signed_item(fleet):
    data = (fleet / "alice.gv").read_bytes()
    item = SignedItem.decode(data)
    assert item.encode() == data
    assert item.key == "bundle/web/nginx"
    assert item.author == SigningKey.load("alice.key").key_id
    assert Bundle.decode(item.payload).target == "role=web"


def test_bundle_show_prints_what_the_file_holds(fleet):
    doc = json.loads(run("bundle", "show", "alice.gv", "--json").stdout)
    assert doc["name"] == "web/nginx"
    assert doc["key"] == "bundle/web/nginx"
    assert doc["files"] == {"nginx.conf.j2": len("worker_processes {{ facts.cpu_count }};\n")}
    assert doc["resources"][0] == {"package": "nginx"}
    text = run("bundle", "show", "alice.gv")
    assert text.exit_code == 0 and "web/nginx" in text.stdout


def test_several_bundles_go_to_a_directory_or_one_out_each(fleet):
    (fleet / "two.yaml").write_text("bundle: web/a\n---\nbundle: web/b\n")
    r = run("bundle", "pack", "two.yaml", "--key", "alice.key", "--out", "out", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (fleet / "out").iterdir()) == ["web.a.gv", "web.b.gv"]
    assert run("bundle", "verify", "out/web.b.gv", "--trust", "root.gv").exit_code == 0
    r = run("bundle", "pack", "two.yaml", "--key", "alice.key", "--out", "a.gv", "--out", "b.gv")
    assert r.exit_code == 0
    assert json.loads(run("bundle", "show", "b.gv", "--json").stdout)["name"] == "web/b"
    r = run("bundle", "pack", "two.yaml", "--key", "alice.key", "--out", "alice.gv")
    assert r.exit_code == 2 and "directory" in r.stderr


def test_python_and_toml_policy_files_pack_to_the_same_payload(fleet):
    (fleet / "site.py").write_text(
        "def main():\n    return {'bundle': 'web/x', 'resources': [{'package': 'nginx', 'ensure': 'present'}]}\n")
    (fleet / "site.toml").write_text('bundle = "web/x"\n[[resources]]\nensure = "present"\npackage = "nginx"\n')
    assert run("bundle", "pack", "site.py", "--key", "alice.key", "--out", "py.gv").exit_code == 0
    assert run("bundle", "pack", "site.toml", "--key", "alice.key", "--out", "toml.gv").exit_code == 0
    py = SignedItem.decode((fleet / "py.gv").read_bytes())
    toml = SignedItem.decode((fleet / "toml.gv").read_bytes())
    assert py.payload == toml.payload


@pytest.mark.parametrize(
    "args,message",
    [
        (["bundle", "pack", "missing.yaml", "--key", "alice.key", "--out", "x.gv"], "does not exist"),
        (["bundle", "pack", "site.yaml", "--key", "alice.key.pub", "--out", "x.gv"], "is a public key file"),
        (["bundle", "pack", "site.yaml", "--key", "nope.key", "--out", "x.gv"], "nope.key does not exist"),
        (["bundle", "verify", "missing.gv", "--trust", "root.gv"], "does not exist"),
        (["bundle", "verify", "alice.gv", "--trust", "missing.gv"], "does not exist"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(fleet, args, message):
    r = run(*args)
    assert r.exit_code == 2
    assert message in r.stderr


def test_a_file_that_is_not_a_bundle_is_malformed(fleet):
    (fleet / "junk.gv").write_bytes(b"hello world")
    r = run("bundle", "verify", "junk.gv", "--trust", "root.gv")
    assert r.exit_code == 1 and r.stdout.strip() == "Malformed"
    r = run("bundle", "verify", "root.gv", "--trust", "root.gv")
    assert r.exit_code == 1 and r.stdout.strip() == "Malformed"


def test_pack_validates_resources_with_the_catalog_and_writes_nothing_on_error(fleet):
    (fleet / "bad.yaml").write_text("bundle: web/bad\nresources:\n  - flie: /etc/x\n")
    r = run("bundle", "pack", "bad.yaml", "--key", "alice.key", "--out", "bad.gv")
    assert r.exit_code == 2
    assert "flie" in r.stderr
    assert not (fleet / "bad.gv").exists()
    ok = run("bundle", "pack", "site.yaml", "--key", "alice.key", "--out", "good.gv", "--json")
    assert json.loads(ok.stdout)["validated"] is True


def test_pack_with_trust_refuses_to_write_a_bundle_nodes_would_refuse(fleet):
    r = run("bundle", "pack", "site.yaml", "--key", "carol.key", "--trust", "root.gv", "--out", "c2.gv")
    assert r.exit_code == 1 and r.stdout.strip() == "OutOfScope"
    assert not (fleet / "c2.gv").exists()
    assert run("bundle", "pack", "site.yaml", "--key", "alice.key", "--trust", "root.gv", "--out", "a2.gv").exit_code == 0


def test_revoke_by_key_id_and_unknown_revoke_is_bad_input(fleet):
    bob = SigningKey.load("bob.key").key_id
    assert run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--revoke", bob,
               "--out", "r.gv").exit_code == 0
    assert run("bundle", "verify", "bob.gv", "--trust", "r.gv").stdout.strip() == "UnknownKey"
    r = run("trust", "rotate", "--current", "root.gv", "--key", "alice.key", "--revoke", "nobody", "--out", "r2.gv")
    assert r.exit_code == 2 and "neither" in r.stderr


def test_output_into_a_missing_directory_is_bad_input(fleet):
    r = run("bundle", "pack", "site.yaml", "--key", "alice.key", "--out", "no/such/dir/x.gv")
    assert r.exit_code == 2 and "cannot write" in r.stderr
    r = run("trust", "init", "--key", "alice.key", "--admin", "alice.key.pub", "--out", "no/such/root.gv")
    assert r.exit_code == 2 and "cannot write" in r.stderr


def test_requires_across_files_validate_with_the_other_bundle_given(fleet):
    (fleet / "app.yaml").write_text(
        "bundle: web/app\nresources:\n  - file: /srv/app.conf\n    content: x\n    require: [package:nginx]\n")
    r = run("bundle", "pack", "app.yaml", "--key", "alice.key", "--out", "app.gv")
    assert r.exit_code == 2 and "package:nginx" in r.stderr
    for other in ("site.yaml", "alice.gv"):
        r = run("bundle", "pack", "app.yaml", "--key", "alice.key", "--with", other, "--out", "app.gv", "--json")
        assert r.exit_code == 0, r.output
        assert [b["name"] for b in json.loads(r.stdout)["bundles"]] == ["web/app"]
