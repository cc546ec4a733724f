"""`grapevine converge --local` as a user runs it: a real process, real files."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

# A subprocess that hangs must not hang the suite.
CLI_TIMEOUT_S = 60
# The command runs many times here: let it keep compiled bytecode (in a
# private cache removed at exit) even where the shell forbids writing it.
_PYCACHE = tempfile.mkdtemp(prefix="gv-test-pycache-")
atexit.register(shutil.rmtree, _PYCACHE, True)


def grapevine(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    full_env = {**base, "PYTHONPYCACHEPREFIX": _PYCACHE, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "grapevine.cli.main", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=full_env,
    )


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            body = os.readlink(p) if os.path.islink(p) else (Path(p).read_bytes() if os.path.isfile(p) else None)
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


GOOD = """\
bundle: site/base
files:
  motd.j2: "welcome to {{ facts.name }} ({{ facts.role }})\\n"
resources:
  - directory: /srv/www
    mode: "0755"
  - file: /etc/motd
    source: motd.j2
    mode: "0644"
  - file: /srv/www/index.html
    content: "<h1>hello</h1>\\n"
    require: [directory:/srv/www]
  - symlink: /srv/current
    to: /srv/www
  - file: /etc/prod-only
    content: "prod\\n"
    when: env=prod
"""


@pytest.fixture
def site(tmp_path):
    policy = tmp_path / "site.yaml"
    policy.write_text(GOOD)
    root = tmp_path / "root"
    root.mkdir()
    return policy, root


def test_converge_then_second_converge_reports_zero_changes(site):
    policy, root = site
    first = grapevine("converge", "--local", str(policy), "--root", str(root), "--name", "web-01", "--tag", "role=web", "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert (doc["changed"], doc["failed"], doc["skipped"]) == (4, 0, 0)
    assert (root / "etc/motd").read_text() == "welcome to web-01 (web)\n"
    assert not (root / "etc/prod-only").exists()
    second = grapevine("converge", "--local", str(policy), "--root", str(root), "--name", "web-01", "--tag", "role=web", "--json")
    doc2 = json.loads(second.stdout)
    assert second.returncode == 0
    assert (doc2["changed"], doc2["unchanged"]) == (0, 4)
    assert {r["status"] for r in doc2["resources"]} == {"unchanged"}
    for r in doc2["resources"]:
        assert {"id", "status", "diff", "error", "duration_ms"} <= set(r)


def test_tag_selects_resources_with_when(site):
    policy, root = site
    res = grapevine("converge", "--local", str(policy), "--root", str(root), "--tag", "role=web", "--tag", "env=prod", "--json")
    assert res.returncode == 0, res.stderr
    assert (root / "etc/prod-only").read_text() == "prod\n"


DRIFTS = [
    ("edited file", lambda r: (r / "srv/www/index.html").write_text("defaced\n"), "file:/srv/www/index.html"),
    ("changed mode", lambda r: os.chmod(r / "etc/motd", 0o600), "file:/etc/motd"),
    ("deleted directory", lambda r: [os.unlink(r / "srv/www/index.html"), os.rmdir(r / "srv/www")], "directory:/srv/www"),
]


@pytest.mark.parametrize("what,mutate,rid", DRIFTS, ids=[d[0] for d in DRIFTS])
def test_check_reports_drift_with_exit_1_and_converge_repairs_it(site, what, mutate, rid):
    policy, root = site
    args = ["converge", "--local", str(policy), "--root", str(root), "--tag", "role=web"]
    assert grapevine(*args).returncode == 0
    mutate(root)
    drifted = snapshot(root)
    check = grapevine(*args, "--check", "--json")
    assert check.returncode == 1, check.stderr
    doc = json.loads(check.stdout)
    assert rid in [r["id"] for r in doc["resources"] if r["status"] == "changed"]
    assert snapshot(root) == drifted, "--check changed the tree"
    assert grapevine(*args).returncode == 0
    assert grapevine(*args, "--check").returncode == 0


def test_dry_run_prints_the_plan_with_a_unified_diff(site):
    policy, root = site
    args = ["converge", "--local", str(policy), "--root", str(root), "--tag", "role=web"]
    assert grapevine(*args).returncode == 0
    (root / "srv/www/index.html").write_text("<h1>old</h1>\n")
    before = snapshot(root)
    res = grapevine(*args, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "would change" in res.stdout
    assert "--- /srv/www/index.html" in res.stdout
    assert "-<h1>old</h1>" in res.stdout and "+<h1>hello</h1>" in res.stdout
    assert snapshot(root) == before


BROKEN = [
    # (name, policy text, words stderr must contain besides the file name)
    ("unknown type", "bundle: b\nresources:\n  - packag: nginx\n", ["bundle 'b'", "resource #1", "unknown resource type 'packag'"]),
    ("missing attribute", "bundle: b\nresources:\n  - exec: warm\n", ["exec:warm", "missing attribute 'command'"]),
    ("unknown attribute", "bundle: b\nresources:\n  - file: /etc/x\n    mdoe: '0644'\n", ["file:/etc/x", "unknown attribute 'mdoe'"]),
    ("bad selector", "bundle: b\nresources:\n  - file: /etc/x\n    when: 'role=web and'\n", ["file:/etc/x", "bad selector", "position 12"]),
    ("bad target", "bundle: b\ntarget: 'os in debian'\nresources: []\n", ["bundle 'b'", "target", "position 6"]),
    ("bad mode", "bundle: b\nresources:\n  - file: /etc/x\n    mode: '0888'\n", ["file:/etc/x", "bad mode '0888'"]),
    ("require missing", "bundle: b\nresources:\n  - file: /etc/x\n    require: [package:nginx]\n", ["file:/etc/x", "require 'package:nginx'", "no such resource"]),
    (
        "cycle",
        "bundle: b\nresources:\n  - exec: a\n    command: 'true'\n    require: exec:b\n  - exec: b\n    command: 'true'\n    require: exec:a\n",
        ["dependency cycle", "exec:a -> exec:b -> exec:a"],
    ),
    (
        "template error",
        "bundle: b\nfiles:\n  t.j2: '{{ facts.no_such_fact }}'\nresources:\n  - file: /etc/first\n    content: 'written first?'\n  - file: /etc/t\n    source: t.j2\n",
        ["file:/etc/t", "template t.j2", "no_such_fact"],
    ),
    ("yaml syntax", "bundle: b\nresources: [\n", ["not valid YAML"]),
    (
        "cycle through a bundle for other nodes",
        "- bundle: a\n  target: role=web\n  resources:\n    - file: /x\n      require: file:/y\n"
        "- bundle: b\n  target: role=db\n  resources:\n    - file: /y\n      require: file:/x\n",
        ["dependency cycle in bundle(s) a, b", "file:/x -> file:/y -> file:/x"],
    ),
    (
        "broken bundle for other nodes",
        "- bundle: a\n  resources:\n    - file: /ok\n- bundle: b\n  target: role=db\n  resources:\n    - file: /y\n      mode: '0999'\n",
        ["bundle 'b'", "file:/y", "bad mode"],
    ),
]


@pytest.fixture(scope="module")
def converged_root(tmp_path_factory):
    """One converged tree shared by the broken-policy cases (none may change it)."""
    base = tmp_path_factory.mktemp("converged")
    good = base / "site.yaml"
    good.write_text(GOOD)
    root = base / "root"
    root.mkdir()
    assert grapevine("converge", "--local", str(good), "--root", str(root), "--tag", "role=web").returncode == 0
    return root


@pytest.mark.parametrize("name,text,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_policy_exits_2_naming_file_resource_reason_and_changes_nothing(converged_root, tmp_path, name, text, words):
    root = converged_root
    before = snapshot(root)
    assert before, "the shared root should hold a converged site"
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)
    res = grapevine("converge", "--local", str(broken), "--root", str(root), "--tag", "role=web")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert str(broken) in res.stderr
    for word in words:
        assert word in res.stderr, res.stderr
    assert snapshot(root) == before


def test_failed_resource_exits_1_and_reports_it(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent("""\
        bundle: b
        resources:
          - exec: fails
            command: "echo nope >&2; exit 5"
          - file: /after
            content: "x"
            require: exec:fails
          - file: /independent
            content: "y"
    """))
    root = tmp_path / "root"
    root.mkdir()
    res = grapevine("converge", "--local", str(policy), "--root", str(root), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    by_id = {r["id"]: r for r in doc["resources"]}
    assert by_id["exec:fails"]["status"] == "failed" and "exited 5" in by_id["exec:fails"]["error"]
    assert by_id["file:/after"]["status"] == "skipped"
    assert by_id["file:/independent"]["status"] == "changed"
    assert (doc["failed"], doc["skipped"], doc["changed"]) == (1, 1, 1)


def test_target_not_matching_this_node_does_nothing(site):
    policy, root = site
    res = grapevine("converge", "--local", str(policy), "--root", str(root), "--tag", "role=web", "--target", "role=db")
    assert res.returncode == 0
    assert "does not select this node" in res.stdout
    assert list(root.iterdir()) == []


def test_without_local_the_fleet_form_needs_an_agent(tmp_path):
    res = grapevine("converge", "--dry-run", env={"GRAPEVINE_AGENT": str(tmp_path / "no-agent.sock")})
    assert res.returncode != 0
    assert "agent" in res.stderr


def test_root_options_without_local_are_a_usage_error(tmp_path):
    res = grapevine("converge", "--root", str(tmp_path))
    assert res.returncode == 2
    assert "--local" in res.stderr


@pytest.mark.parametrize("suffix,text", [
    (".toml", 'bundle = "site/toml"\n[[resources]]\nfile = "/etc/motd"\ncontent = "from toml\\n"\nmode = "0640"\n'),
    (".py", 'def bundles():\n    return {"bundle": "site/py", "resources": [{"file": "/etc/motd", "content": "from toml\\n", "mode": "0640"}]}\n'),
])
def test_toml_and_python_policies_converge_the_same_way(tmp_path, suffix, text):
    policy = tmp_path / f"site{suffix}"
    policy.write_text(text)
    root = tmp_path / "root"
    root.mkdir()
    res = grapevine("converge", "--local", str(policy), "--root", str(root), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["changed"] == 1
    assert (root / "etc/motd").read_text() == "from toml\n"
    assert (root / "etc/motd").stat().st_mode & 0o7777 == 0o640
    assert grapevine("converge", "--local", str(policy), "--root", str(root), "--check").returncode == 0


def test_secrets_sealed_to_this_node_fill_templates_and_never_show(tmp_path):
    from grapevine.policy.keys import SigningKey

    SigningKey.generate().save(tmp_path / "node.key")
    policy = tmp_path / "site.yaml"
    policy.write_text(textwrap.dedent("""\
        bundle: app/db
        secrets:
          db_password:
            node.key.pub: "s3cret-value"
        resources:
          - file: /etc/app/db.conf
            content: "password={{ secrets.db_password }}\\n"
            template: true
            mode: "0600"
    """))
    root = tmp_path / "root"
    root.mkdir()
    args = ["converge", "--local", str(policy), "--root", str(root)]
    first = grapevine(*args, "--node-key", str(tmp_path / "node.key"), "--json")
    assert first.returncode == 0, first.stderr
    assert (root / "etc/app/db.conf").read_text() == "password=s3cret-value\n"
    assert "s3cret-value" not in first.stdout + first.stderr
    (root / "etc/app/db.conf").write_text("password=old\n")
    plan = grapevine(*args, "--node-key", str(tmp_path / "node.key"), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "diff hidden" in plan.stdout
    assert "s3cret-value" not in plan.stdout + plan.stderr and "password=old" not in plan.stdout
    without_key = grapevine(*args)
    assert without_key.returncode == 2
    assert "db_password" in without_key.stderr and "file:/etc/app/db.conf" in without_key.stderr


def test_a_long_report_is_printed_one_line_per_resource(tmp_path):
    import yaml

    policy = tmp_path / "many.yaml"
    resources = [{"file": f"/data/f{i:03d}", "content": f"{i}\n"} for i in range(250)]
    policy.write_text(yaml.safe_dump({"bundle": "many/files", "resources": resources}))
    root = tmp_path / "root"
    root.mkdir()
    res = grapevine("converge", "--local", str(policy), "--root", str(root))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "changed      file:/data/f000  create"
    assert lines[-1].startswith("250 changed, 0 unchanged, 0 failed, 0 skipped")
    assert len(lines) == 251
