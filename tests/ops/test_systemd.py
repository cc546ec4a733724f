"""systemd integration: the notify protocol against a real socket, and the unit file checked by systemd itself."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grapevine.cli.localfleet import free_ports
from grapevine.node.sdnotify import Notifier, socket_address, watchdog_interval_s

UNIT = Path(__file__).resolve().parents[2] / "node" / "grapevine-agent.service"


def _recv_until(sock: socket.socket, want: str, timeout: float, seen: list[str]) -> list[str]:
    """Datagrams until one carries the line ``want`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        lines = data.decode().split("\n")
        seen.append(data.decode())
        if want in lines:
            return lines
    raise AssertionError(f"no {want} within {timeout:.0f} s; got {seen!r}")


def test_socket_address_forms():
    assert socket_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert socket_address("@abstract-name") == b"\0abstract-name"
    assert socket_address("") is None
    assert socket_address("relative/path") is None


def test_watchdog_interval_is_half_and_belongs_to_this_pid():
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval_s({}, 42) is None


def test_notifier_without_socket_does_nothing():
    assert Notifier({}).ready() is False


def test_notifier_sends_to_a_path_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": str(path)}).ready("up") is True
        assert s.recv(4096).decode().split("\n") == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=up"]


def test_notifier_survives_a_socket_that_is_gone(tmp_path):
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).watchdog() is False


def test_real_agent_notifies_ready_watchdog_and_stopping(fleet):
    """A real agent process with NOTIFY_SOCKET (abstract namespace) and WATCHDOG_USEC set.

    READY=1 must come only once the local API answers (state loaded, ports
    bound); WATCHDOG=1 keeps arriving at half the interval; SIGTERM gives
    STOPPING=1 and a clean exit.
    """
    name = f"@grapevine-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name[1:].encode())
        (port,) = free_ports(1)
        a = fleet.add("sd1", port=port, join=[], env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "600000"})
        a.start()
        seen: list[str] = []
        lines = _recv_until(s, "READY=1", 60, seen)
        assert f"MAINPID={a.proc.pid}" in lines
        assert a.client(5).get("/v1/status")["node"] == a.node_id  # ready means the API answers now
        _, body = a.http_get("/health")
        assert b"ok" in body
        seen.clear()
        _recv_until(s, "WATCHDOG=1", 10, seen)
        _recv_until(s, "WATCHDOG=1", 10, seen)
        os.kill(a.proc.pid, signal.SIGTERM)
        _recv_until(s, "STOPPING=1", 20, seen)
        assert a.proc.wait(timeout=30) == 0


def _verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` on the shipped unit, with ExecStart pointed at this environment's command.

    verify checks that ExecStart's binary exists, and /usr/local/bin/grapevine
    is where the unit expects a pip install; here it is the venv's. A unit
    with an unknown key must make verify complain, so the empty output means
    something.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    exe = Path(sys.executable).with_name("grapevine")
    assert exe.exists(), exe
    unit = tmp_path / "grapevine-agent.service"
    unit.write_text(text.replace("/usr/local/bin/grapevine", str(exe)))
    res = _verify(unit)
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", res.stderr + res.stdout
    bad = tmp_path / "grapevine-bad.service"
    bad.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSeconds="))
    assert "WatchdogSeconds" in _verify(bad).stderr
