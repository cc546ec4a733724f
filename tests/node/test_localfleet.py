"""The local launcher: what it starts, it ends, by PID, whichever way its owner stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from grapevine.cli.localfleet import FleetError, LocalFleet, WaitTimeout, free_ports, wait_for


def gone(pid: int) -> bool:
    """No process with this PID (reaped), or only a zombie left of it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- without processes -----------------------------------------------------------------


def test_wait_for_returns_the_first_true_value():
    seen = iter([0, None, "", {"ok": 1}])
    assert wait_for(lambda: next(seen), 5, interval=0) == {"ok": 1}


def test_wait_for_names_what_it_waited_for_and_the_last_error():
    def cond():
        raise KeyError("not yet")

    with pytest.raises(WaitTimeout, match=r"the moon.*KeyError\('not yet'\)"):
        wait_for(cond, 0.2, "the moon", interval=0.01)


def test_wait_for_stops_at_once_on_a_fleet_error():
    calls = []

    def cond():
        calls.append(1)
        raise FleetError("agent x exited with 1")

    t0 = time.monotonic()
    with pytest.raises(FleetError, match="exited"):
        wait_for(cond, 30, interval=0.01)
    assert len(calls) == 1 and time.monotonic() - t0 < 5


def test_free_ports_are_distinct_and_outside_the_ephemeral_range():
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = free_ports(20)
    assert len(set(ports)) == 20
    if lo - 10_000 > 1000:  # the launcher picks below the ephemeral range when there is room
        assert all(p < lo for p in ports), ports


def test_agents_join_the_first_two_unless_told_and_get_none_of_the_callers_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPEVINE_DATA_DIR", "/nonexistent")
    fleet = LocalFleet(tmp_path, env={"GRAPEVINE_LOG_LEVEL": "debug"})
    a, b, c = (fleet.add(n) for n in "abc")
    alone = fleet.add("d", join=[], env={"GRAPEVINE_FSYNC": "never"})

    def joins(agent):
        argv = fleet.argv(agent)
        return [argv[i + 1] for i, x in enumerate(argv) if x == "--join"]

    assert joins(a) == [b.address] and joins(b) == [a.address] and joins(c) == [a.address, b.address]
    assert joins(alone) == []
    env = fleet.environ(alone)
    assert "GRAPEVINE_DATA_DIR" not in env
    assert env["GRAPEVINE_LOG_LEVEL"] == "debug" and env["GRAPEVINE_FSYNC"] == "never"
    assert "--preset" in fleet.argv(a) and str(fleet.keys.trust) in fleet.argv(a)
    with pytest.raises(FleetError, match="already"):
        fleet.add("a")


# -- with agent processes ------------------------------------------------------------------


@pytest.mark.slow
def test_an_error_inside_the_block_still_ends_every_agent(tmp_path):
    pids = []
    with pytest.raises(ZeroDivisionError):
        with LocalFleet(tmp_path) as fleet:
            fleet.add("a")
            fleet.add("b")
            fleet.up()
            pids = [a.pid for a in fleet.agents]
            assert all(not gone(p) for p in pids)
            1 / 0
    assert pids and all(gone(p) for p in pids)


@pytest.mark.slow
def test_an_agent_that_exits_at_start_is_reported_with_its_log(tmp_path):
    with LocalFleet(tmp_path) as fleet:
        bad = fleet.add("bad", extra=["--no-such-flag"])
        with pytest.raises(FleetError, match=r"(?s)agent bad exited.*no-such-flag"):
            fleet.up(timeout=30)
        assert not bad.alive()


LAUNCHER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from grapevine.cli.localfleet import LocalFleet

    base = Path(sys.argv[1])
    with LocalFleet(base / "fleet") as fleet:
        fleet.add("a")
        fleet.add("b")
        fleet.up()
        (base / "pids.json").write_text(json.dumps([a.pid for a in fleet.agents]))
        time.sleep(120)  # held open until the test kills this launcher: what happens then is under test
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_launcher_stopped_by_a_signal_ends_every_agent_it_started(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    pids: list[int] = []
    try:
        pids = wait_for(lambda: json.loads((tmp_path / "pids.json").read_text()), 60, "the launcher's agents")
        assert all(not gone(p) for p in pids)
        os.kill(proc.pid, sig)
        proc.wait(30)
        assert proc.returncode != 0
        assert all(gone(p) for p in pids), f"left running: {[p for p in pids if not gone(p)]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in pids:  # only if the launcher failed to end them
            if not gone(p):
                os.kill(p, signal.SIGKILL)
