"""``grapevine demo``: a whole mesh on loopback, start to finish, in under a minute.

    grapevine demo [--nodes 5] [--json]

Needs no root and no network beyond 127.0.0.1. In a temporary directory it
creates an operator key, a fleet network key and a trust root, starts N
agents (each a ``grapevine agent`` subprocess on a free loopback port, each
converging files under its own root directory), then:

1. injects an example bundle and shows every node converge;
2. runs ``hostname`` on the role=web nodes in batches of 2;
3. stops one node, injects a new version of the bundle, starts the node
   again and shows it catch up;
4. stops every process it started, also on Ctrl-C, SIGTERM or an error.

With ``--json`` it prints one document: ``nodes``, ``converged``, ``healed``,
``run_results``, ``run_failed`` and timings. Exit 0 when all of it worked.

``LocalMesh`` (keys, trust root, agent processes) is reusable: the run tests
and benchmarks start their meshes with it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from grapevine.gossip.errors import GrapevineError

from .output import emit_json, json_option

READY_TIMEOUT_S = 20.0  # one agent process from exec to an answering API socket
MESH_TIMEOUT_S = 20.0  # every agent linked to at least one peer
CONVERGE_TIMEOUT_S = 20.0  # a bundle spread and applied everywhere (normally well under a second)
HEAL_TIMEOUT_S = 20.0  # a restarted node caught up (join + anti-entropy)
STOP_TIMEOUT_S = 5.0  # SIGTERM to exit; then SIGKILL
POLL_S = 0.05  # status polling period while waiting
PORT_FLOOR = 10_000  # listening ports are picked above this and below the ephemeral range
PORT_TRIES = 200  # random picks before giving up (a busy machine has few ports in use down there)
DEMO_BUNDLE = "demo/motd"
MOTD = "/etc/motd"


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port outside the ephemeral range.

    Agents open many outgoing connections while a mesh starts; a listening
    port picked from the ephemeral range could be taken by one of them
    between the pick and the agent's bind.
    """
    lo, hi = _ephemeral_range()
    below = (PORT_FLOOR, lo) if lo - PORT_FLOOR > 1000 else None
    above = (hi + 1, 65535) if 65535 - hi > 1000 else None
    span = below or above
    if span is None:  # the whole range is ephemeral: let the kernel pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(PORT_TRIES):
        port = _port_rng.randrange(*span)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port found in {span[0]}..{span[1]}")


_port_rng = random.Random()  # port picks only; nothing here needs to be reproducible


@dataclass(slots=True)
class Agent:
    name: str
    port: int
    data_dir: Path
    root: Path
    tags: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def node_id(self) -> str:
        return f"{self.name}@127.0.0.1:{self.port}"

    @property
    def socket(self) -> str:
        return str(self.data_dir / "agent.sock")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalMesh:
    """Keys, a trust root, a network key and N agent processes under one directory."""

    base: Path
    agents: list[Agent] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_operators: list[tuple[Any, Any]] = field(default_factory=list)  # (PublicKey, OperatorScope)
    preset: str = "local"  # gossip timing: "local" reacts fast (demo, tests); "lan" is the production default

    def __post_init__(self) -> None:
        from grapevine.node import netkey
        from grapevine.policy import trust
        from grapevine.policy.keys import SigningKey

        self.base.mkdir(parents=True, exist_ok=True)
        self.key_path = self.base / "operator.key"
        self.key = SigningKey.generate()
        self.key.save(self.key_path)
        self.netkey_path = self.base / "fleet.netkey"
        netkey.write_key_file(self.netkey_path, netkey.generate_key())
        now = int(time.time() * 1000)
        root = trust.build_root(
            serial=1, now_ms=now - 1000, expires_days=1, admins=[self.key.public], threshold=1,
            publishers=[(self.key.public, trust.ALL_NAMES)],
            operators=[(self.key.public, trust.OperatorScope(selector=None, actions=("run", "converge"))),
                       *self.extra_operators],
        )
        self.trust_path = self.base / "root.gv"
        trust.write_item_file(self.trust_path, trust.init_root(root, [self.key], now - 1000))

    # -- processes ------------------------------------------------------
    def add(self, name: str, tags: dict[str, str] | None = None) -> Agent:
        d = self.base / name
        used = {a.port for a in self.agents}
        port = free_port()
        while port in used:  # picks are not reserved until the agent binds
            port = free_port()
        agent = Agent(name=name, port=port, data_dir=d / "data", root=d / "root", tags=dict(tags or {}),
                      log_path=d / "agent.log")
        agent.root.mkdir(parents=True, exist_ok=True)
        self.agents.append(agent)
        return agent

    def argv(self, agent: Agent) -> list[str]:
        joins = [a for a in self.agents[:2] if a is not agent]
        cmd = [sys.executable, "-m", "grapevine.cli.main", "agent", "--name", agent.name,
               "--bind", f"127.0.0.1:{agent.port}", "--data-dir", str(agent.data_dir), "--root", str(agent.root),
               "--trust", str(self.trust_path), "--network-key", str(self.netkey_path), "--preset", self.preset]
        for j in joins:
            cmd += ["--join", f"127.0.0.1:{j.port}"]
        for k, v in agent.tags.items():
            cmd += ["--tag", f"{k}={v}"]
        return cmd

    def start(self, agent: Agent) -> None:
        env = dict(os.environ, **self.extra_env)
        env.pop("GRAPEVINE_AGENT", None)
        log = open(agent.log_path, "ab")
        try:
            agent.proc = subprocess.Popen(self.argv(agent), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=env, start_new_session=True)
        finally:
            log.close()

    def start_all(self) -> None:
        for a in self.agents:
            if not a.running():
                self.start(a)

    def stop(self, agent: Agent, sig: int = signal.SIGTERM) -> None:
        proc = agent.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        agent.proc = None

    def stop_all(self) -> None:
        live = [a for a in self.agents if a.proc is not None and a.proc.poll() is None]
        for a in live:  # signal all first, so they shut down in parallel
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for a in self.agents:
            self.stop(a)

    def log_text(self, agent: Agent) -> str:
        try:
            return agent.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- API ------------------------------------------------------------
    def api(self, agent: Agent, method: str, path: str, body: Any = None) -> Any:
        from .run import agent_json

        return agent_json(agent.socket, method, path, body)

    def try_api(self, agent: Agent, method: str, path: str) -> Any:
        try:
            return self.api(agent, method, path)
        except (click.ClickException, Exception):
            return None

    def wait_ready(self, agents: list[Agent] | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
        pending = list(agents or self.agents)
        end = time.monotonic() + timeout_s
        while pending:
            for a in list(pending):
                if a.proc is not None and a.proc.poll() is not None:
                    raise RuntimeError(f"agent {a.name} exited with {a.proc.returncode}:\n{self.log_text(a)[-2000:]}")
                if os.path.exists(a.socket) and self.try_api(a, "GET", "/v1/status") is not None:
                    pending.remove(a)
            if pending and time.monotonic() > end:
                raise RuntimeError(f"agents not ready after {timeout_s:g} s: {[a.name for a in pending]}")
            if pending:
                time.sleep(POLL_S)

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str) -> float:
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"{what} did not happen within {timeout_s:g} s")
            time.sleep(POLL_S)
        return time.monotonic() - t0

    def linked(self, agents: list[Agent] | None = None) -> bool:
        for a in agents or self.agents:
            m = self.try_api(a, "GET", "/v1/members")
            if not m or not m.get("active"):
                return False
        return True

    def wait_mesh(self, timeout_s: float = MESH_TIMEOUT_S) -> float:
        return self.wait_until(self.linked, timeout_s, "every agent linked to a peer")

    def inject(self, via: Agent, bundle_doc: dict, counter: int = 0) -> Any:
        from grapevine.policy.bundle import Bundle, pack

        item = pack(Bundle.from_document(bundle_doc, "demo"), self.key, int(time.time() * 1000), counter)
        return _post_bytes(via.socket, "/v1/inject", item.encode()), item

    def applied(self, agent: Agent, name: str) -> str | None:
        """The version of bundle ``name`` applied on ``agent`` (None if not applied)."""
        doc = self.try_api(agent, "GET", "/v1/bundles")
        for row in (doc or {}).get("bundles", []):
            if row.get("name") == name and row.get("applied"):
                return row.get("version")
        return None


def _post_bytes(sock: str, path: str, data: bytes) -> Any:
    from .run import agent_json

    try:
        return agent_json(sock, "POST", path, data=data)
    except (click.ClickException, GrapevineError) as exc:
        raise RuntimeError(f"{path} via {sock}: {exc}") from None


@contextlib.contextmanager
def local_mesh(base: Path | None = None, **kw: Any) -> Iterator[LocalMesh]:
    """A LocalMesh whose processes are stopped on exit, error, Ctrl-C or SIGTERM."""
    tmp = Path(tempfile.mkdtemp(prefix="grapevine-demo-")) if base is None else base
    mesh = LocalMesh(base=tmp, **kw)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield mesh
    finally:
        try:
            mesh.stop_all()
        finally:
            signal.signal(signal.SIGTERM, old)
            if base is None:
                shutil.rmtree(tmp, ignore_errors=True)


def demo_bundle(version: int) -> dict:
    return {
        "bundle": DEMO_BUNDLE,
        "files": {"motd.j2": "Welcome to {{ facts.name }} (grapevine demo, version %d)\n" % version},
        "resources": [
            {"directory": "/etc"},
            {"file": MOTD, "source": "motd.j2", "mode": "0644", "require": ["directory:/etc"]},
        ],
    }


# ---------------------------------------------------------------- the demo


class _Show:
    """Progress for people: rich on a terminal, plain lines otherwise, stderr under --json."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.rich = not as_json and sys.stdout.isatty()
        if self.rich:
            from rich.console import Console

            self.console = Console()

    def step(self, text: str) -> None:
        if self.rich:
            self.console.rule(f"[bold]{text}")
        else:
            click.echo(f"== {text}", err=self.as_json)

    def line(self, text: str) -> None:
        if self.rich:
            self.console.print(text)
        else:
            click.echo(text, err=self.as_json)

    def watch_converge(self, mesh: LocalMesh, agents: list[Agent], version: str, timeout_s: float) -> tuple[int, float]:
        """Wait (showing a live table) until ``agents`` applied ``version``; (count, seconds)."""
        t0 = time.monotonic()
        done: dict[str, float] = {}

        def poll() -> None:
            for a in agents:
                if a.name not in done and mesh.applied(a, DEMO_BUNDLE) == version:
                    done[a.name] = time.monotonic() - t0
                    if not self.rich:
                        self.line(f"  {a.name}: applied {DEMO_BUNDLE} in {done[a.name] * 1000:.0f} ms")

        def table():
            from rich.table import Table

            t = Table(show_edge=False)
            t.add_column("node")
            t.add_column("bundle " + DEMO_BUNDLE)
            t.add_column("after")
            for a in agents:
                if a.name in done:
                    t.add_row(a.name, "[green]applied", f"{done[a.name] * 1000:.0f} ms")
                else:
                    t.add_row(a.name, "[yellow]waiting", "")
            return t

        live = None
        if self.rich:
            from rich.live import Live

            live = Live(table(), console=self.console, refresh_per_second=10)
            live.__enter__()
        try:
            while len(done) < len(agents) and time.monotonic() - t0 < timeout_s:
                poll()
                if live is not None:
                    live.update(table())
                if len(done) < len(agents):
                    time.sleep(POLL_S)
        finally:
            if live is not None:
                live.update(table())
                live.__exit__(None, None, None)
        return len(done), max(done.values(), default=0.0)


def run_demo(nodes: int, as_json: bool) -> dict:
    from grapevine.policy.runorder import RunAction

    from .run import build_order, follow_run

    show = _Show(as_json)
    started = time.monotonic()
    doc: dict[str, Any] = {"nodes": nodes, "converged": 0, "healed": False, "run_results": [], "run_failed": 0,
                           "run_missing": 0, "ok": False}
    with local_mesh() as mesh:
        doc["dir"] = str(mesh.base)
        show.step(f"starting {nodes} agents on loopback in {mesh.base}")
        for i in range(nodes):
            mesh.add(f"node{i}", tags={"role": "web" if i % 2 == 0 else "db"})
        mesh.start_all()
        mesh.wait_ready()
        took = mesh.wait_mesh()
        show.line(f"  {nodes} agents up and linked ({time.monotonic() - started:.1f} s); "
                  f"mesh formed in {took * 1000:.0f} ms")

        show.step(f"injecting bundle {DEMO_BUNDLE} (writes {MOTD} under each node's root) via node0")
        first = mesh.agents[0]
        answer, item = mesh.inject(first, demo_bundle(1))
        v1 = answer["version"]
        count, secs = show.watch_converge(mesh, mesh.agents, v1, CONVERGE_TIMEOUT_S)
        doc["converged"] = count
        doc["converge_ms"] = int(secs * 1000)
        sample = (mesh.agents[-1].root / MOTD.lstrip("/"))
        show.line(f"  {count}/{nodes} nodes applied version {v1} in {secs * 1000:.0f} ms; "
                  f"{mesh.agents[-1].name}{MOTD}: {sample.read_text().strip() if sample.exists() else '(missing)'}")

        show.step("running `hostname` on role=web, in batches of 2")
        signed = build_order(sock=first.socket, key=mesh.key, selector="role=web", action=RunAction.command(["hostname"]),
                             timeout_s=10, batched=True)
        summary = follow_run(first.socket, signed, batch="2", max_failures=0, as_json=as_json, title="hostname")
        doc["run_results"] = summary["results"]
        doc["run_targets"] = len(summary["targets"])
        doc["run_failed"] = len(summary["failed"])
        doc["run_missing"] = len(summary["missing"])
        doc["run_batches"] = len(summary["batches"])
        doc["run_ms"] = summary["duration_ms"]

        cut = mesh.agents[-1]
        show.step(f"cutting {cut.name} off (stopping it), injecting version 2, restoring it")
        mesh.stop(cut)
        answer, _ = mesh.inject(first, demo_bundle(2))
        v2 = answer["version"]
        others = [a for a in mesh.agents if a is not cut]
        count2, secs2 = show.watch_converge(mesh, others, v2, CONVERGE_TIMEOUT_S)
        show.line(f"  {count2}/{len(others)} connected nodes applied version {v2}; {cut.name} is still on version 1")
        t_restart = time.monotonic()
        mesh.start(cut)
        mesh.wait_ready([cut])
        healed, _ = show.watch_converge(mesh, [cut], v2, HEAL_TIMEOUT_S)
        doc["healed"] = healed == 1
        doc["heal_ms"] = int((time.monotonic() - t_restart) * 1000)
        content = (cut.root / MOTD.lstrip("/"))
        if doc["healed"]:
            show.line(f"  {cut.name} caught up {doc['heal_ms']} ms after restart: "
                      f"{content.read_text().strip() if content.exists() else '(missing)'}")
        else:
            show.line(f"  {cut.name} did NOT catch up within {HEAL_TIMEOUT_S:g} s (see {cut.log_path})")
        show.step("stopping every agent")
    doc["wall_s"] = round(time.monotonic() - started, 2)
    doc["ok"] = (doc["converged"] == nodes and doc["healed"] and doc["run_failed"] == 0 and doc["run_missing"] == 0
                 and len(doc["run_results"]) == doc.get("run_targets", -1))
    return doc


@click.command()
@click.option("--nodes", type=click.IntRange(min=2, max=50), default=5, show_default=True, help="Agents to start.")
@json_option
def demo(nodes: int, as_json: bool) -> int:
    """Start a local mesh, converge a bundle, run a command, heal a cut-off node."""
    try:
        doc = run_demo(nodes, as_json)
    except KeyboardInterrupt:
        click.echo("demo interrupted; every agent it started was stopped", err=True)
        return 130
    except RuntimeError as exc:
        click.echo(f"error: demo failed: {exc}", err=True)
        if as_json:
            emit_json({"nodes": nodes, "converged": 0, "healed": False, "run_results": [], "run_failed": 0,
                       "ok": False, "error": str(exc)})
        return 1
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"demo {'succeeded' if doc['ok'] else 'FAILED'}: {doc['converged']}/{nodes} converged, "
                   f"run {len(doc['run_results'])} result(s), {doc['run_failed']} failed, "
                   f"healed={doc['healed']} ({doc['wall_s']} s)")
    return 0 if doc["ok"] else 1
