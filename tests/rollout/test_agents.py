"""Staged rollouts on real agents: processes on loopback, files under their roots, the real CLI.

Five role=web nodes hold app/conf v1 (a file, /etc/app.conf). Each test
injects a new version with a rollout plan through n0 and looks at what every
node applied and what its file holds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from grapevine.cli.localfleet import FAST_ENV, LocalFleet, wait_for

pytestmark = pytest.mark.slow

NAME = "app/conf"
FAST_RESEND = {"GRAPEVINE_LOG_LEVEL": "info"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    base = tmp_path_factory.mktemp("rollout")
    with LocalFleet(base, env={**FAST_ENV, **FAST_RESEND}) as fleet:
        agents = [fleet.add(f"n{i}", tags={"role": "web"}) for i in range(5)]
        fleet.start()
        fleet.wait_ready()
        fleet.wait_linked()
        ids = {a.node_id for a in agents}

        def knows_all(a) -> bool:  # a node answers a discovery query only from an origin it knows as a member
            m = a.client().get("/v1/members")
            return ids - {a.node_id} <= set(m["active"]) | set(m["passive"])

        wait_for(lambda: all(knows_all(a) for a in agents), 60, "every node knows every other")
        fleet.policy = base / "app.yaml"
        publish(fleet, agents, "v1", [])
        yield fleet, agents


def write_policy(fleet, content: str, rollout: str = "") -> None:
    fleet.policy.write_text(f"bundle: {NAME}\ntarget: role=web\nresources:\n"
                            f"  - file: /etc/app.conf\n    content: \"{content}\\n\"\n{rollout}")


def publish(fleet, agents, content: str, flags: list[str], check: bool = True):
    """Inject ``content`` through n0 (with rollout flags); the CLI's result, parsed."""
    write_policy(fleet, content)
    res = fleet.cli("inject", str(fleet.policy), "--key", str(fleet.keys.author), *flags, "--json",
                    agent=agents[0], check=False, timeout=120)
    if check:
        assert res.returncode in (0, 1), res.stderr
    if not flags:
        wait_for(lambda: all(on_disk(a) == content for a in agents), 30, f"every node converged to {content}")
    return res


def on_disk(agent) -> str | None:
    try:
        return (agent.root / "etc/app.conf").read_text().strip()
    except OSError:
        return None


def versions(fleet, agents) -> dict[str, tuple[str, str | None]]:
    """node -> (stored version, applied version)."""
    out = {}
    for a in agents:
        row = next(r for r in a.client().get("/v1/bundles")["bundles"] if r["name"] == NAME)
        out[a.name] = (row["version"], row["applied_version"])
    return out


def status(fleet, agent) -> dict:
    """What `grapevine rollout status --json` prints, asked on ``agent``."""
    return json.loads(fleet.cli("rollout", "status", NAME, "--json", agent=agent, check=False).stdout)


def quick_status(agent) -> dict:
    """The same document straight from the local API (no CLI process start: for polling)."""
    return agent.client().get(f"/v1/rollout/status?bundle={NAME}")


def driver_process(fleet, agent, flags: list[str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "grapevine.cli.main", "inject", str(fleet.policy), "--key", str(fleet.keys.author),
            *flags, "--json", "--agent", agent.socket]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_a_failing_first_stage_stops_the_rollout_and_every_node_ends_on_the_old_version(mesh):
    fleet, agents = mesh
    before = on_disk(agents[0])
    res = publish(fleet, agents, "bad", ["--stages", "1,50%,100%", "--soak", "1s", "--health", "sh -c 'exit 3'"])
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)["rollouts"][0]
    assert doc["state"] == "rolled_back"
    assert "health check exited 3" in doc["reason"]
    assert [s["applied"] for s in doc["stages"]] == [1, 0, 0]  # only the first stage's one node ever ran it
    wait_for(lambda: all(on_disk(a) == before for a in agents), 30, "every node back on the old content")
    held = versions(fleet, agents)
    assert all(applied != stored for stored, applied in held.values()), held  # the bad version is held, not applied
    seen = status(fleet, agents[3])  # any node answers, from the replicated record
    assert seen["state"] == "rolled_back" and seen["stages"][0]["failed"] == 1


def test_a_healthy_rollout_opens_every_stage_and_completes(mesh):
    fleet, agents = mesh
    t0 = time.monotonic()
    res = publish(fleet, agents, "good", ["--stages", "1,50%,100%", "--soak", "1s", "--health", "true"])
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)["rollouts"][0]
    assert doc["state"] == "complete" and all(s["open"] for s in doc["stages"])
    assert sum(s["healthy"] for s in doc["stages"]) == 5
    assert took >= 3  # three stages, each soaked for a second
    assert all(on_disk(a) == "good" for a in agents)
    assert all(stored == applied for stored, applied in versions(fleet, agents).values())
    assert status(fleet, agents[4])["state"] == "complete"


def test_a_killed_driver_leaves_the_rollout_paused_and_resume_from_another_node_finishes_it(mesh):
    fleet, agents = mesh
    write_policy(fleet, "resumed")
    old = quick_status(agents[2])["version"]  # the last rollout's record, until the new one arrives
    proc = driver_process(fleet, agents[0], ["--stages", "1,50%,100%", "--soak", "5s", "--health", "true"])
    try:
        wait_for(lambda: (lambda d: d["version"] != old and d["state"] == "running" and d["stages"][0]["healthy"] == 1)(
            quick_status(agents[2])), 60, "the first stage of the new version healthy")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        end(proc)
    paused = wait_for(lambda: (lambda d: d if d["state"] == "paused" else None)(quick_status(agents[2])), 30,
                      "the rollout paused")
    assert status(fleet, agents[1])["state"] == "paused"  # the command line says so too, on any node
    stage = paused["stage"]
    deadline = time.monotonic() + 5  # longer than the soak: a live driver would have opened the next stage
    while time.monotonic() < deadline:
        assert quick_status(agents[1])["stage"] == stage, "a stage opened while the rollout was paused"
    assert stage < 2 and sum(on_disk(a) == "resumed" for a in agents) < 5
    res = fleet.cli("rollout", "resume", NAME, "--key", str(fleet.keys.author), "--json", agent=agents[3],
                    check=False, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "complete" and doc["driver"] == agents[3].node_id and doc["term"] == 1
    wait_for(lambda: all(on_disk(a) == "resumed" for a in agents), 30, "every node on the new content")


def test_abort_reverts_every_node_that_applied(mesh):
    fleet, agents = mesh
    before = on_disk(agents[0])
    write_policy(fleet, "aborted")
    proc = driver_process(fleet, agents[0], ["--stages", "2,100%", "--soak", "60s", "--health", "true"])
    try:
        wait_for(lambda: sum(on_disk(a) == "aborted" for a in agents) == 2, 60, "the first stage applied")
        res = fleet.cli("rollout", "abort", NAME, "--key", str(fleet.keys.author), "--reason", "bad idea",
                        "--json", agent=agents[4], check=False)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["state"] == "rolled_back"
        out, _ = proc.communicate(timeout=30)  # the driver sees the abort and stops
        assert proc.returncode == 1
        assert json.loads(out)["rollouts"][0]["state"] == "rolled_back"
    finally:
        end(proc)
    wait_for(lambda: all(on_disk(a) == before for a in agents), 30, "every node back on the old content")
    seen = status(fleet, agents[1])
    assert seen["state"] == "rolled_back" and seen["reason"] == "bad idea"


@pytest.mark.parametrize(("flags", "words"), [
    (["--stages", "10%,50%"], "last stage must be 100%"),
    (["--stages", "50%,10%,100%"], "must grow"),
    (["--soak", "soon"], "not a duration"),
    (["--max-failures", "many"], "max_failures"),
    (["--on-failure", "panic"], "panic"),
])
def test_bad_plans_are_refused_with_exit_2_and_nothing_is_injected(mesh, flags, words):
    fleet, agents = mesh
    before = versions(fleet, agents)
    write_policy(fleet, "never")
    res = fleet.cli("inject", str(fleet.policy), "--key", str(fleet.keys.author), *flags, agent=agents[0], check=False)
    assert res.returncode == 2, res.stdout + res.stderr
    assert words in res.stderr
    assert versions(fleet, agents) == before


def test_a_bad_plan_in_the_policy_file_is_refused_with_exit_2(mesh):
    fleet, agents = mesh
    write_policy(fleet, "never", "rollout:\n  stages: [1, 100%]\n  on_failure: explode\n")
    res = fleet.cli("inject", str(fleet.policy), "--key", str(fleet.keys.author), agent=agents[0], check=False)
    assert res.returncode == 2 and "on_failure must be one of rollback, halt" in res.stderr
    res = fleet.cli("rollout", "resume", "no/such", "--key", str(fleet.keys.author), agent=agents[0], check=False)
    assert res.returncode == 2
