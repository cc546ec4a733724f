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
4. rolls out a bad version 3 in stages (its health check fails): the first
   stage's one node catches it and goes back, the rollout halts and no
   other node ever runs it; then a good version 4, stage by stage;
5. stops every process it started, also on Ctrl-C, SIGTERM or an error.

With ``--json`` it prints one document: ``nodes``, ``converged``, ``healed``,
``run_results``, ``run_failed``, ``rollout_bad`` (``state``, ``ever_applied``,
``reverted``), ``rollout_good`` (``state``, ``applied``, ``all_on_new``) and timings. Exit 0 when all of it worked.

The agents are started and ended by ``LocalFleet`` (cli/localfleet.py), the
launcher the tests, benchmarks and chaos lab use too.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import click

from grapevine.gossip.errors import GrapevineError

from .localfleet import FleetError, LocalAgent, LocalFleet
from .output import emit_json, json_option

READY_TIMEOUT_S = 20.0  # one agent process from exec to an answering API socket
MESH_TIMEOUT_S = 20.0  # every agent linked to at least one peer
CONVERGE_TIMEOUT_S = 20.0  # a bundle spread and applied everywhere (normally well under a second)
HEAL_TIMEOUT_S = 20.0  # a restarted node caught up (join + anti-entropy)
POLL_S = 0.05  # status polling period while waiting
DEMO_BUNDLE = "demo/motd"
MOTD = "/etc/motd"


@contextlib.contextmanager
def _temporary_fleet() -> Iterator[LocalFleet]:
    """A LocalFleet in a fresh temporary directory, removed (after every agent ended) on the way out."""
    tmp = Path(tempfile.mkdtemp(prefix="grapevine-demo-"))
    try:
        with LocalFleet(tmp) as fleet:
            yield fleet
    finally:
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

    def watch_converge(self, fleet: LocalFleet, agents: list[LocalAgent], version: str,
                       timeout_s: float) -> tuple[int, float]:
        """Wait (showing a live table) until ``agents`` applied ``version``; (count, seconds)."""
        t0 = time.monotonic()
        done: dict[str, float] = {}

        def poll() -> None:
            for a in agents:
                if a.name not in done and fleet.applied(a, DEMO_BUNDLE) == version:
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
    with _temporary_fleet() as fleet:
        doc["dir"] = str(fleet.base)
        show.step(f"starting {nodes} agents on loopback in {fleet.base}")
        for i in range(nodes):
            fleet.add(f"node{i}", tags={"role": "web" if i % 2 == 0 else "db"})
        fleet.up(timeout=READY_TIMEOUT_S)
        took = fleet.wait_linked(timeout=MESH_TIMEOUT_S)
        show.line(f"  {nodes} agents up and linked ({time.monotonic() - started:.1f} s); "
                  f"mesh formed in {took * 1000:.0f} ms")

        show.step(f"injecting bundle {DEMO_BUNDLE} (writes {MOTD} under each node's root) via node0")
        first = fleet.agents[0]
        answer, item = fleet.inject(first, demo_bundle(1))
        v1 = answer["version"]
        count, secs = show.watch_converge(fleet, fleet.agents, v1, CONVERGE_TIMEOUT_S)
        doc["converged"] = count
        doc["converge_ms"] = int(secs * 1000)
        sample = (fleet.agents[-1].root / MOTD.lstrip("/"))
        show.line(f"  {count}/{nodes} nodes applied version {v1} in {secs * 1000:.0f} ms; "
                  f"{fleet.agents[-1].name}{MOTD}: {sample.read_text().strip() if sample.exists() else '(missing)'}")

        show.step("running `hostname` on role=web, in batches of 2")
        signed = build_order(sock=first.socket, key=fleet.keys.author_key, selector="role=web", action=RunAction.command(["hostname"]),
                             timeout_s=10, batched=True)
        summary = follow_run(first.socket, signed, batch="2", max_failures=0, as_json=as_json, title="hostname")
        doc["run_results"] = summary["results"]
        doc["run_targets"] = len(summary["targets"])
        doc["run_failed"] = len(summary["failed"])
        doc["run_missing"] = len(summary["missing"])
        doc["run_batches"] = len(summary["batches"])
        doc["run_ms"] = summary["duration_ms"]

        cut = fleet.agents[-1]
        show.step(f"cutting {cut.name} off (stopping it), injecting version 2, restoring it")
        fleet.stop(cut)
        answer, _ = fleet.inject(first, demo_bundle(2))
        v2 = answer["version"]
        others = [a for a in fleet.agents if a is not cut]
        count2, secs2 = show.watch_converge(fleet, others, v2, CONVERGE_TIMEOUT_S)
        show.line(f"  {count2}/{len(others)} connected nodes applied version {v2}; {cut.name} is still on version 1")
        t_restart = time.monotonic()
        fleet.up(cut, timeout=READY_TIMEOUT_S)
        healed, _ = show.watch_converge(fleet, [cut], v2, HEAL_TIMEOUT_S)
        doc["healed"] = healed == 1
        doc["heal_ms"] = int((time.monotonic() - t_restart) * 1000)
        content = (cut.root / MOTD.lstrip("/"))
        if doc["healed"]:
            show.line(f"  {cut.name} caught up {doc['heal_ms']} ms after restart: "
                      f"{content.read_text().strip() if content.exists() else '(missing)'}")
        else:
            show.line(f"  {cut.name} did NOT catch up within {HEAL_TIMEOUT_S:g} s (see {cut.log_path})")
        from .demo_rollout import rollout_demo

        doc.update(rollout_demo(fleet, demo_bundle, MOTD, show.line, show.step))
        show.step("stopping every agent")
    doc["wall_s"] = round(time.monotonic() - started, 2)
    doc["ok"] = (doc["converged"] == nodes and doc["healed"] and doc["run_failed"] == 0 and doc["run_missing"] == 0
                 and len(doc["run_results"]) == doc.get("run_targets", -1)
                 and doc.get("rollout_bad", {}).get("state") == "rolled_back" and doc["rollout_bad"]["reverted"]
                 and doc.get("rollout_good", {}).get("state") == "complete" and doc["rollout_good"]["all_on_new"])
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
    except (FleetError, GrapevineError, click.ClickException) as exc:
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
