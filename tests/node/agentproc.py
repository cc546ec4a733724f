"""Process helpers for daemon tests: real `grapevine agent` processes on loopback.

Every process is started with ``subprocess.Popen`` and recorded by a ``Fleet``;
``Fleet.close`` kills each one by PID, and the ``fleet`` fixture calls it in
its teardown, also when the test failed. Ports are picked free by the test,
intervals are short via ``GRAPEVINE_*`` variables, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from grapevine.cli.fleet import AgentClient
from grapevine.node.netkey import generate_key, write_key_file
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import build_root, init_root, write_item_file

FAST_ENV = {
    "GRAPEVINE_GOSSIP_PRESET": "local",
    "GRAPEVINE_CONVERGE_DEBOUNCE_MS": "100",
    "GRAPEVINE_REJOIN_MIN_S": "0.2",
    "GRAPEVINE_REJOIN_MAX_S": "1",
    "GRAPEVINE_LINK_HEARTBEAT_S": "1",
    "GRAPEVINE_SEND_TIMEOUT_S": "2",
    "GRAPEVINE_DRAIN_TIMEOUT_S": "2",
    "GRAPEVINE_TICK_MAX_MS": "500",
    "GRAPEVINE_PEER_METRICS": "true",  # the tests read /metrics on the peer port (off by default)
    "GRAPEVINE_LOG_LEVEL": "info",
}
START_TIMEOUT_S = 30.0  # 10+ agents importing on 2 cores at once


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # a process still starting, a socket not yet there
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@dataclass
class Keys:
    dir: Path
    author: Path
    trust: Path
    netkey: Path
    author_key: SigningKey


def make_keys(d: Path) -> Keys:
    alice = SigningKey.generate()
    alice.save(d / "alice.key")
    now = time.time_ns() // 1_000_000
    root = build_root(serial=1, now_ms=now, expires_days=30, admins=[alice.public], threshold=1,
                      publishers=[(alice.public, "*")])
    write_item_file(d / "root.gv", init_root(root, [alice], now))
    write_key_file(d / "fleet.netkey", generate_key())
    return Keys(dir=d, author=d / "alice.key", trust=d / "root.gv", netkey=d / "fleet.netkey", author_key=alice)


@dataclass
class AgentProc:
    name: str
    host: str
    port: int
    data_dir: Path
    root: Path
    argv: list[str]
    env: dict[str, str]
    netns: str | None = None
    proc: subprocess.Popen | None = None
    log_path: Path = field(default=None)  # type: ignore[assignment]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def sock(self) -> str:
        return str(self.data_dir / "agent.sock")

    @property
    def node_id(self) -> str:
        return f"{self.name}@{self.address}"

    def client(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient(self.sock, timeout)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "agent.log"
        log = open(self.log_path, "ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(prefix + self.argv, env=self.env, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"agent {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.client(2).get("/v1/status")["node"] == self.node_id

        try:
            wait_until(ready, timeout, 0.1, f"agent {self.name} to start")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace``; returns the exit status."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            return -9

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def status(self) -> dict:
        return self.client().get("/v1/status")

    def http_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, or with no labels the sum over all label values (0 if absent)."""
        _, body = self.http_get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == f"{name}{{{labels}}}" or (not labels and (key == name or key.startswith(name + "{"))):
                total += float(value)
        return total


class Fleet:
    """Starts agents and owns their processes."""

    def __init__(self, base: Path, keys: Keys, python: str = sys.executable) -> None:
        self.base = base
        self.keys = keys
        self.python = python
        self.agents: list[AgentProc] = []

    def make(self, name: str, port: int, *, join: list[str] = (), tags: dict[str, str] | None = None,
             host: str = "127.0.0.1", netkey: Path | None | str = "default", netns: str | None = None,
             env: dict[str, str] | None = None, extra: list[str] = ()) -> AgentProc:
        data = self.base / name / "data"
        root = self.base / name / "root"
        root.mkdir(parents=True, exist_ok=True)
        argv = [self.python, "-m", "grapevine.cli.main", "agent", "--name", name, "--bind", f"{host}:{port}",
                "--data-dir", str(data), "--root", str(root), "--trust", str(self.keys.trust)]
        key = self.keys.netkey if netkey == "default" else netkey
        if key is not None:
            argv += ["--network-key", str(key)]
        for j in join:
            argv += ["--join", j]
        for k, v in (tags or {}).items():
            argv += ["--tag", f"{k}={v}"]
        argv += list(extra)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPEVINE_")}
        full_env.update(FAST_ENV)
        full_env.update(env or {})
        a = AgentProc(name=name, host=host, port=port, data_dir=data, root=root, argv=argv, env=full_env, netns=netns)
        self.agents.append(a)
        return a

    def start(self, *agents: AgentProc) -> None:
        for a in agents:
            a.start()
        for a in agents:
            a.wait_ready()

    def cli(self, *args: str, agent: AgentProc | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        argv = [self.python, "-m", "grapevine.cli.main", *args]
        if agent is not None:
            argv += ["--agent", agent.sock]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPEVINE_")}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {res.returncode}: {res.stderr}{res.stdout}")
        return res

    def cli_json(self, *args: str, agent: AgentProc | None = None) -> Any:
        return json.loads(self.cli(*args, "--json", agent=agent).stdout)

    def close(self) -> None:
        for a in self.agents:
            if a.alive():
                try:
                    os.kill(a.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for a in self.agents:
            if a.proc is not None:
                try:
                    a.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass


def write_bundle(path: Path, name: str, target: str | None, files: dict[str, str]) -> Path:
    """A policy file with one bundle managing ``files`` (absolute path -> content)."""
    import yaml

    doc: dict[str, Any] = {"bundle": name, "resources": [{"file": p, "content": c} for p, c in files.items()]}
    if target:
        doc["target"] = target
    path.write_text(yaml.safe_dump(doc))
    return path


def pack_bundle(keys: Keys, name: str, target: str | None, files: dict[str, str], now_ms: int | None = None):
    from grapevine.policy.bundle import Bundle, pack

    doc: dict[str, Any] = {"bundle": name, "resources": [{"file": p, "content": c} for p, c in files.items()]}
    if target:
        doc["target"] = target
    return pack(Bundle.from_document(doc, "test"), keys.author_key, now_ms or time.time_ns() // 1_000_000)
