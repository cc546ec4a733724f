"""`grapevine demo` end to end: real agents, converge, a batched run, a healed node."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import pytest

from grapevine.cli.localfleet import wait_for

DEMO = [sys.executable, "-m", "grapevine.cli.main", "demo"]


def processes_under(path: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", re.escape(path)], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


@pytest.mark.timeout(150)
def test_demo_json_converges_runs_and_heals():
    proc = subprocess.run([*DEMO, "--nodes", "4", "--json"], capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["nodes"] == 4 and doc["converged"] == 4
    assert doc["healed"] is True
    assert doc["run_failed"] == 0 and doc["run_missing"] == 0
    assert len(doc["run_results"]) == doc["run_targets"] == 2  # role=web: node0 and node2
    assert doc["run_batches"] == 1  # two targets in batches of two
    assert all(r["exit_code"] == 0 and r["stdout"].strip() for r in doc["run_results"])
    assert processes_under(doc["dir"]) == []
    assert not os.path.exists(doc["dir"])


@pytest.mark.timeout(90)
def test_sigterm_stops_every_agent_the_demo_started():
    proc = subprocess.Popen([*DEMO, "--nodes", "3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    base = None
    try:
        first = proc.stdout.readline()
        m = re.search(r"in (\S*grapevine-demo-\S+)", first)
        assert m, first
        base = m.group(1)
        wait_for(lambda: len(processes_under(base)) >= 3, 30, "the demo's three agents to start")
        assert len(processes_under(base)) == 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode != 0
        assert processes_under(base) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for line in processes_under(base) if base else []:  # only if the demo failed to clean up
            os.kill(int(line.split()[0]), signal.SIGKILL)
