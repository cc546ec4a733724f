"""Push-style runs on real agent processes: results, refusals, forged results, batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from grapevine.cli.localfleet import LocalFleet, wait_for
from grapevine.cli.run import build_order
from grapevine.node.runapi import HISTORY_MAX
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, RunResult, SignedOrder, SignedResult

MESH_NODES = 4  # the session mesh in conftest.py


def lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0

pytestmark = pytest.mark.timeout(120)


def cli(mesh, *args, key=None, via=None):
    via = via or mesh.agents[0]
    cmd = [sys.executable, "-m", "grapevine.cli.main", "run", "--agent", via.socket,
           "--key", str(key or mesh.m.keys.author), "--json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr


def marker_order(mesh, marker, *, key=None, selector="", deadline_ms=None, via=None):
    """A signed order whose command appends one line to ``marker`` per execution."""
    via = via or mesh.agents[0]
    key = key or mesh.m.keys.author_key
    now = int(time.time() * 1000)
    order = RunOrder(run_id=runorder.new_run_id(), origin=via.node_id, selector=selector,
                     action=RunAction.shell_string(f"echo ran >> {marker}"), timeout_ms=5000, issued_ms=now - 2000,
                     deadline_ms=deadline_ms or now + 60_000, operator=key.key_id)
    return SignedOrder.sign(order, key)


def wait_log(mesh, agent, text, timeout=5.0):
    return wait_for(lambda: text in agent.log_text(), timeout, f"{text!r} in {agent.name}'s log")


def trail(agent, run_id: str) -> tuple[int, list[str]]:
    """``agent``'s audit trail of one run: (executions finished, refusal reasons, sorted)."""
    rows = [r for r in agent.client().get(f"/v1/runs/history?limit={HISTORY_MAX}")["runs"] if r["order"] == run_id]
    return sum(1 for r in rows if r["refused"] is None), sorted(r["refused"] for r in rows if r["refused"])


def wait_trail(agent, run_id: str, *, executed: int, refused: list[str]) -> None:
    """Wait until ``agent`` has recorded exactly this: each refusal row is written before the node replies, each
    execution's when the command ends. A node that ran a refused order as well never gets there."""
    want = (executed, sorted(refused))
    wait_for(lambda: trail(agent, run_id) == want, 20, f"{agent.name}'s audit trail of {run_id} to be {want}")


def test_run_returns_a_result_from_every_target(mesh):
    code, doc, err = cli(mesh, "--", "sh", "-c", "echo hello")
    assert code == 0, err
    ids = sorted(a.node_id for a in mesh.agents)
    assert doc["targets"] == ids
    assert sorted(r["node"] for r in doc["results"]) == ids
    assert all(r["exit_code"] == 0 and r["stdout"] == "hello\n" for r in doc["results"])
    assert doc["missing"] == [] and doc["failed"] == []
    assert len(doc["batches"]) == 1


def test_selector_picks_the_matching_nodes_only(mesh):
    code, doc, err = cli(mesh, "--target", "idx in (1, 3)", "--shell", "echo $((40 + 2))")
    assert code == 0, err
    assert doc["targets"] == sorted(a.node_id for a in mesh.agents[1::2])
    assert {r["stdout"] for r in doc["results"]} == {"42\n"}


def test_failing_command_exits_1_and_is_listed(mesh):
    code, doc, _ = cli(mesh, "--target", "idx=2", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert code == 1
    assert doc["failed"] == [mesh.agents[2].node_id]
    assert doc["results"][0]["exit_code"] == 3 and doc["results"][0]["stderr"] == "oops\n"


def test_batches_stop_once_failures_pass_max_failures(mesh):
    code, doc, _ = cli(mesh, "--batch", "2", "--max-failures", "1", "--", "false")
    assert code == 1
    assert len(doc["batches"]) == 1 and len(doc["batches"][0]["nodes"]) == 2
    assert len(doc["results"]) == 2
    assert "max-failures" in doc["stopped_reason"]
    assert len(doc["not_started"]) == MESH_NODES - 2


def test_batches_all_run_when_nothing_fails(mesh):
    code, doc, _ = cli(mesh, "--batch", "50%", "--max-failures", "0", "--", "true")
    assert code == 0
    assert [len(b["nodes"]) for b in doc["batches"]] == [2, 2]
    assert doc["stopped_reason"] is None and len(doc["results"]) == MESH_NODES


def test_replayed_order_is_refused_and_does_not_run_again(mesh, tmp_path):
    marker = tmp_path / "replay"
    signed = marker_order(mesh, marker)
    first = mesh.run_stream(mesh.agents[0], signed).summary()
    assert len(first["results"]) == MESH_NODES and lines(marker) == MESH_NODES
    # the same bytes again, through the origin, and straight to a node
    again = mesh.run_stream(mesh.agents[0], SignedOrder.decode(signed.encode())).summary()
    assert again["results"] == []
    assert {r["reason"] for r in again["refused"]} == {"Replayed"}
    reply = mesh.post_peer(mesh.agents[1], "run.order", {"order": signed.to_wire()})
    assert reply["refused"] == "Replayed"
    assert wait_log(mesh, mesh.agents[1], "Replayed")
    for a in mesh.agents:
        wait_trail(a, signed.order.run_id, executed=1, refused=["Replayed"] * (2 if a is mesh.agents[1] else 1))
    assert lines(marker) == MESH_NODES


def test_expired_order_is_refused_by_the_node(mesh, tmp_path):
    marker = tmp_path / "expired"
    signed = marker_order(mesh, marker, deadline_ms=int(time.time() * 1000) - 1)
    reply = mesh.post_peer(mesh.agents[2], "run.order", {"order": signed.to_wire()})
    assert reply["refused"] == "Expired"
    assert wait_log(mesh, mesh.agents[2], "Expired")
    # the origin refuses it before discovery, too
    with pytest.raises(Exception) as exc:
        mesh.run_stream(mesh.agents[0], signed).summary()
    assert "Expired" in str(exc.value)
    wait_trail(mesh.agents[2], signed.order.run_id, executed=0, refused=["Expired"])
    assert lines(marker) == 0


def test_origin_asking_again_gets_the_first_execution_never_a_second(mesh, tmp_path):
    """The origin re-posts an order whose reply it lost: the node answers from the run it already did.

    The test plays the origin's side of the wire with the origin's own node
    key (read from its data directory): the retry carries the origin's
    ticket; the same post without the retry flag, or with a ticket by
    another key, is a replay and is refused.
    """
    from grapevine.node.runs import _ticket_bytes

    marker = tmp_path / "retry"
    origin, target = mesh.agents[0], mesh.agents[1]
    signed = marker_order(mesh, marker)
    origin_key = SigningKey.load(origin.data_dir / "node.key")
    body = {"order": signed.to_wire(), "ticket": origin_key.sign(_ticket_bytes(signed.order.run_id, target.node_id))}
    first = mesh.post_peer(target, "run.order", body)
    assert first["ok"] and first.get("result") is not None
    again = mesh.post_peer(target, "run.order", dict(body, retry=True))
    assert again["ok"] and again["result"] == first["result"]
    result = SignedResult.from_wire(again["result"]).verify(SigningKey.load(target.data_dir / "node.key").public,
                                                           run_id=signed.order.run_id, node=target.node_id)
    assert result.exit_code == 0
    assert mesh.post_peer(target, "run.order", body)["refused"] == "Replayed"
    forged = dict(body, retry=True, ticket=mesh.m.keys.author_key.sign(_ticket_bytes(signed.order.run_id, target.node_id)))
    assert mesh.post_peer(target, "run.order", forged)["refused"] == "Replayed"
    wait_trail(target, signed.order.run_id, executed=1, refused=["Replayed", "Replayed"])
    assert lines(marker) == 1


def test_order_outside_the_operator_scope_is_refused(mesh, tmp_path):
    marker = tmp_path / "scope"
    code, doc, _ = cli(mesh, "--shell", f"echo ran >> {marker}", key=mesh.limited_path)
    assert code == 1
    assert doc["results"] == []
    assert {r["reason"] for r in doc["refused"]} == {"OutOfScope"}
    assert len(doc["refused"]) == MESH_NODES
    assert wait_log(mesh, mesh.agents[3], "OutOfScope")
    # a key the trust root does not know at all
    stranger = SigningKey.generate()
    reply = mesh.post_peer(mesh.agents[3], "run.order", {"order": marker_order(mesh, marker, key=stranger).to_wire()})
    assert reply["refused"] == "UnknownKey"
    for a in mesh.agents:
        wait_trail(a, doc["run_id"], executed=0, refused=["OutOfScope"])
    assert lines(marker) == 0


def test_forged_result_is_refused_and_the_genuine_one_counts(mesh, tmp_path):
    victim = mesh.agents[1]
    origin = mesh.agents[0]
    now = int(time.time() * 1000)
    order = RunOrder(run_id=runorder.new_run_id(), origin=origin.node_id, selector="idx=1",
                     action=RunAction.shell_string("sleep 1.5; echo genuine"), timeout_ms=10_000, issued_ms=now,
                     deadline_ms=now + 60_000, operator=mesh.m.keys.author_key.key_id)
    stream = mesh.run_stream(origin, SignedOrder.sign(order, mesh.m.keys.author_key))
    stream.wait_for("batch")
    fake = RunResult(run_id=order.run_id, node=victim.node_id, exit_code=0, stdout=b"forged\n", stderr=b"",
                     duration_ms=1)
    reply = mesh.post_peer(origin, "run.result", SignedResult.sign(fake, SigningKey.generate()).to_wire())
    assert reply["refused"] == "BadSignature"
    doc = stream.summary()
    assert [r["stdout"] for r in doc["results"]] == ["genuine\n"]
    assert any(e.get("event") == "refused_result" for e in stream.events)
    assert wait_log(mesh, origin, "refused run result")


def test_unknown_agent_socket_is_a_clear_error(mesh, tmp_path):
    cmd = [sys.executable, "-m", "grapevine.cli.main", "run", "--agent", str(tmp_path / "none.sock"),
           "--key", str(mesh.m.keys.author), "--", "true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "cannot reach the agent" in proc.stderr


def test_origin_answers_with_its_node_id(mesh):
    a = mesh.agents[2]
    assert a.client().get("/v1/run/origin")["node_id"] == a.node_id
    signed = build_order(sock=a.socket, key=mesh.m.keys.author_key, selector="", action=RunAction.command(["true"]),
                         timeout_s=5, batched=False)
    assert signed.order.origin == a.node_id


def _fleet_answers(mesh) -> int:
    return len(mesh.agents[0].client().post("/v1/fleet/query", {"kind": "run", "selector": ""})["answers"])


@pytest.mark.parametrize("batch", [None, "2"], ids=["at-once", "batches"])
def test_a_target_that_answers_discovery_late_still_runs(mesh, tmp_path, batch):
    """A target stopped (SIGSTOP) through discovery answers after the quiet window; the open run starts it."""
    marker = tmp_path / "late"
    late = mesh.agents[3]
    now = int(time.time() * 1000)
    # a selector of its own: no earlier discovery of it, so nobody is expected and the quiet window rules
    order = RunOrder(run_id=runorder.new_run_id(), origin=mesh.agents[0].node_id, selector=f"role=web or probe=late-{batch}",
                     action=RunAction.shell_string(f"sleep 2; echo ran >> {marker}"), timeout_ms=10_000,
                     issued_ms=now - 2000, deadline_ms=now + 60_000, operator=mesh.m.keys.author_key.key_id)
    os.kill(late.proc.pid, signal.SIGSTOP)
    try:
        stream = mesh.run_stream(mesh.agents[0], SignedOrder.sign(order, mesh.m.keys.author_key), batch=batch)
        targets = stream.wait_for("targets")["targets"]
        assert late.node_id not in targets and len(targets) == MESH_NODES - 1
    finally:
        os.kill(late.proc.pid, signal.SIGCONT)
    doc = stream.summary()
    assert sorted(doc["targets"]) == sorted(a.node_id for a in mesh.agents)
    assert doc["late_targets"] == [late.node_id]
    assert sorted(r["node"] for r in doc["results"]) == sorted(doc["targets"])
    assert doc["ok"] and doc["missing"] == [] and doc["not_started"] == []
    assert any(e.get("event") == "late_target" and e["node"] == late.node_id for e in stream.events)
    if batch is not None:
        assert doc["batches"][-1]["nodes"] == [late.node_id]
    assert lines(marker) == MESH_NODES
    _wait_whole(mesh)


def _wait_whole(mesh) -> None:
    """Leave the shared mesh whole for the tests after this one."""
    wait_for(lambda: _fleet_answers(mesh) >= MESH_NODES, 30, "every node to answer a fleet query again", interval=0.5)


def test_a_node_that_matched_last_time_is_waited_for_and_listed_missing_when_silent(mesh, tmp_path):
    """Discovery remembers who answered a selector: a slow one is waited for, a silent one is missing."""
    import threading

    selector = "role=web or probe=remembered"
    code, first, err = cli(mesh, "--target", selector, "--", "true")
    assert code == 0 and len(first["results"]) == MESH_NODES, err
    slow, silent = mesh.agents[1], mesh.agents[2]
    os.kill(slow.proc.pid, signal.SIGSTOP)
    os.kill(silent.proc.pid, signal.SIGSTOP)
    wake = threading.Timer(1.0, os.kill, (slow.proc.pid, signal.SIGCONT))
    wake.start()
    try:
        code, doc, err = cli(mesh, "--target", selector, "--", "true")
    finally:
        wake.cancel()
        os.kill(slow.proc.pid, signal.SIGCONT)
        os.kill(silent.proc.pid, signal.SIGCONT)
    assert code == 1, err
    assert slow.node_id in {r["node"] for r in doc["results"]}  # answered after 1 s: within the wait
    assert doc["silent"] == [silent.node_id] and silent.node_id in doc["missing"]
    assert doc["late_targets"] == []
    _wait_whole(mesh)


def test_commands_run_as_the_configured_run_user(tmp_path):
    """An agent started with GRAPEVINE_RUN_USER=nobody runs orders as nobody (the test runs as root)."""
    import pwd

    with LocalFleet(tmp_path / "m", env={"GRAPEVINE_RUN_USER": "nobody"}) as m:
        agent = m.add("solo", tags={"role": "web"})
        m.up()
        now = int(time.time() * 1000)
        order = RunOrder(run_id=runorder.new_run_id(), origin=agent.node_id, selector="",
                         action=RunAction.command(["id", "-u"]), timeout_ms=5000, issued_ms=now - 2000,
                         deadline_ms=now + 60_000, operator=m.keys.author_key.key_id)
        events = list(agent.client().stream("POST", "/v1/run", {"order": SignedOrder.sign(order, m.keys.author_key)
                                                                .encode().hex(), "batch": None, "max_failures": None}))
        doc = next(e for e in events if e.get("event") == "done")["summary"]
    assert [r["node"] for r in doc["results"]] == [agent.node_id]
    assert int(doc["results"][0]["stdout"]) == pwd.getpwnam("nobody").pw_uid
