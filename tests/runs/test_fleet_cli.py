"""`inject --now --wait` and `status --fleet` against real agents."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def gv(mesh, *args, via=None):
    via = via or mesh.agents[0]
    proc = subprocess.run([sys.executable, "-m", "grapevine.cli.main", *args, "--agent", via.socket],
                          capture_output=True, text=True, timeout=90)
    return proc.returncode, proc.stdout, proc.stderr


def write_bundle(path, name, content, extra=""):
    path.write_text(
        f"bundle: {name}\n"
        "resources:\n"
        f"  - file: /srv/{name.replace('/', '_')}.txt\n"
        f"    content: \"{content}\\n\"\n" + extra
    )
    return path


def test_inject_now_wait_converges_every_target_and_reports(mesh, tmp_path):
    policy = write_bundle(tmp_path / "site.yaml", "now/one", "first")
    code, out, err = gv(mesh, "inject", str(policy), "--key", str(mesh.m.keys.author), "--now", "--wait", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["injected"][0]["key"] == "bundle/now/one"
    run = doc["run"]
    assert sorted(r["node"] for r in run["results"]) == sorted(a.node_id for a in mesh.agents)
    assert all(r["exit_code"] == 0 and r["report"]["failed"] == 0 for r in run["results"])
    for a in mesh.agents:  # converged before the command returned
        assert (a.root / "srv" / "now_one.txt").read_text() == "first\n"
    # a second version: every node converges to it, none is left on the first
    write_bundle(policy, "now/one", "second")
    code, out, err = gv(mesh, "inject", str(policy), "--key", str(mesh.m.keys.author), "--now", "--wait", "--json")
    assert code == 0, err
    for a in mesh.agents:
        assert (a.root / "srv" / "now_one.txt").read_text() == "second\n"


def test_fleet_status_summarises_versions_and_lists_failing_nodes(mesh, tmp_path):
    ok = write_bundle(tmp_path / "ok.yaml", "fleet/ok", "fine")
    assert gv(mesh, "inject", str(ok), "--key", str(mesh.m.keys.author), "--now", "--wait", "--json")[0] == 0
    code, out, err = gv(mesh, "status", "--fleet", "--json", via=mesh.agents[1])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["nodes"] == len(mesh.agents)
    assert doc["bundles"]["fleet/ok"]["applied"] == len(mesh.agents)
    assert doc["converged"] == len(mesh.agents) and doc["not_converged"] == []
    # a bundle for idx=2 whose command fails: that node is listed with the reason
    bad = tmp_path / "bad.yaml"
    bad.write_text("bundle: fleet/bad\ntarget: idx=2\nresources:\n  - exec: fail\n    command: [\"false\"]\n")
    code, out, _ = gv(mesh, "inject", str(bad), "--key", str(mesh.m.keys.author), "--now", "--wait", "--json")
    assert code == 1
    assert [r["node"] for r in json.loads(out)["run"]["results"]] == [mesh.agents[2].node_id]
    code, out, _ = gv(mesh, "status", "--fleet", "--json")
    doc = json.loads(out)
    assert [d["node"] for d in doc["not_converged"]] == [mesh.agents[2].node_id]
    assert any("failed" in p for p in doc["not_converged"][0]["problems"])
    assert doc["bundles"]["fleet/bad"]["targeted"] == 1
    code, text, _ = gv(mesh, "status", "--fleet")
    assert text.splitlines()[0].startswith(f"{len(mesh.agents)} node(s) answered")
    assert mesh.agents[2].node_id in text


def test_wait_without_now_is_a_usage_error(mesh, tmp_path):
    policy = write_bundle(tmp_path / "x.yaml", "now/x", "x")
    code, _, err = gv(mesh, "inject", str(policy), "--key", str(mesh.m.keys.author), "--wait")
    assert code == 2 and "--now" in err
