"""``grapevine run``: sign a run order and follow it through the local agent.

    grapevine run --target 'role=web' --key alice.key [--batch 10|10%]
                  [--max-failures N] [--timeout S] [--json] -- CMD ARGS...
    grapevine run --target 'role=web' --key alice.key --shell 'uptime; df -h /'
    grapevine run --key alice.key --converge web/nginx [--converge base]

The order is signed here, with the operator's key; the agent only carries it.
On a terminal the command shows a progress bar and a live table of results;
otherwise one line per node; with ``--json`` one document at the end. Exit 1
when any target failed, refused the order or did not answer; 2 on bad usage.

``follow_run`` is shared with ``grapevine inject --now --wait``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from grapevine.gossip.errors import ConfigError, GrapevineError, Reason
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, SignedOrder

from .client import AgentClient, find_socket
from .output import emit_json, json_option

DEFAULT_TIMEOUT_S = 60.0  # per node; most ad-hoc commands finish well within a minute
DEADLINE_SLACK_S = 60.0  # deadline = timeout + this, for discovery and results on a busy fleet
BATCHED_DEADLINE_S = 3600.0  # rolling batches may take a while; nodes forget run ids after this
TABLE_ROWS = 30  # rows of the live table; a big fleet shows the latest ones and the counts


# ------------------------------------------------------------------ orders


def stream_timeout(signed: SignedOrder) -> float:
    """How long to wait for the next event of a run: past the order's deadline no node runs it any more."""
    return max(0.0, signed.order.deadline_ms / 1000 - time.time()) + DEADLINE_SLACK_S


def build_order(*, sock: str, key: SigningKey, selector: str, action: RunAction, timeout_s: float,
                batched: bool, deadline_s: float | None = None) -> SignedOrder:
    origin = AgentClient(sock).get("/v1/run/origin")["node_id"]
    now = int(time.time() * 1000)
    window = deadline_s or (BATCHED_DEADLINE_S if batched else timeout_s + DEADLINE_SLACK_S)
    order = RunOrder(run_id=runorder.new_run_id(), origin=origin, selector=selector or "", action=action,
                     timeout_ms=max(1, int(timeout_s * 1000)), issued_ms=now, deadline_ms=now + int(window * 1000),
                     operator=key.key_id)
    return SignedOrder.sign(order, key)


# ------------------------------------------------------------------ rendering


class _Plain:
    """One line per event, for pipes and logs."""

    def __init__(self) -> None:
        self.out = click.get_text_stream("stdout")

    def __enter__(self) -> _Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "targets":
            click.echo(f"{len(ev['targets'])} target(s) found in {ev['discovery_ms']} ms, {ev['batches']} batch(es)")
        elif kind == "batch":
            click.echo(f"batch {ev['index'] + 1}: {len(ev['nodes'])} node(s)")
        elif kind == "late_target":
            click.echo(f"{ev['node']}: answered discovery late ({ev['after_ms']} ms), started too")
        elif kind == "result":
            first = (ev.get("stdout") or ev.get("error") or ev.get("stderr") or "").strip().splitlines()
            click.echo(f"{ev['node']}: exit {ev['exit_code']} in {ev['duration_ms']} ms"
                       + (f": {first[0][:120]}" if first else ""))
        elif kind == "refused":
            click.echo(f"{ev['node']}: refused the order: {ev['reason']} {ev.get('detail', '')}")
        elif kind == "refused_result":
            click.echo(f"warning: a result claiming to be from {ev['node']} was refused: {ev['reason']}", err=True)
        elif kind == "unreachable":
            click.echo(f"{ev['node']}: unreachable: {ev.get('detail', '')}")


class _Live:
    """A progress bar over a live table of results (rich, terminals only)."""

    def __init__(self, title: str) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._Group = Group
        self.console = Console()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task(f"{title}: discovering", total=None)
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.counts = {"ok": 0, "failed": 0}
        self.live = Live(self._render(), console=self.console, refresh_per_second=10, transient=False)

    def _render(self):
        from rich.table import Table

        table = Table(expand=False, show_edge=False)
        for col in ("node", "status", "exit", "ms", "output"):
            table.add_column(col, overflow="fold" if col == "output" else "ellipsis", no_wrap=col != "output")
        hidden = max(0, len(self.rows) - TABLE_ROWS)
        for row in self.rows[hidden:]:
            table.add_row(*row)
        if hidden:
            table.caption = f"{hidden} earlier row(s) not shown; {self.counts['ok']} ok, {self.counts['failed']} failed"
        return self._Group(self.progress, table)

    def __enter__(self) -> _Live:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.update(self._render())
        self.live.__exit__(*exc)

    def _add(self, node: str, status: str, code: str, ms: str, text: str) -> None:
        self.rows.append((node, status, code, ms, text))
        self.counts["ok" if status.endswith("ok") else "failed"] += 1
        self.progress.advance(self.task)

    def event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "targets":
            self.progress.update(self.task, total=len(ev["targets"]),
                                 description=f"{len(ev['targets'])} target(s), {ev['batches']} batch(es)")
        elif kind == "batch":
            self.progress.update(self.task, description=f"batch {ev['index'] + 1}")
        elif kind == "late_target":
            total = self.progress.tasks[0].total
            self.progress.update(self.task, total=(total or 0) + 1)
        elif kind == "result":
            ok = ev["exit_code"] == 0 and not ev.get("error")
            text = (ev.get("stdout") or ev.get("error") or ev.get("stderr") or "").strip().splitlines()
            self._add(ev["node"], "[green]ok" if ok else "[red]failed", str(ev["exit_code"]), str(ev["duration_ms"]),
                      text[0][:100] if text else "")
        elif kind == "refused":
            self._add(ev["node"], "[red]refused", "-", "-", f"{ev['reason']}: {ev.get('detail', '')}"[:100])
        elif kind == "unreachable":
            self._add(ev["node"], "[red]unreachable", "-", "-", str(ev.get("detail", ""))[:100])
        elif kind == "refused_result":
            self.console.print(f"[yellow]warning: a result claiming to be from {ev['node']} was refused: {ev['reason']}")
        self.live.update(self._render())


def _summary_text(doc: dict) -> str:
    ok = len(doc["results"]) - len([r for r in doc["results"] if r["exit_code"] != 0 or r.get("error")])
    parts = [f"{len(doc['targets'])} target(s): {ok} ok", f"{len(doc['failed'])} failed", f"{len(doc['missing'])} missing"]
    if doc.get("not_started"):
        parts.append(f"{len(doc['not_started'])} not started")
    text = ", ".join(parts) + f" ({doc['duration_ms']} ms)"
    if doc.get("stopped_reason"):
        text += f"\nstopped: {doc['stopped_reason']}"
    for n in doc["missing"]:
        text += f"\nmissing: {n} (matched but sent no result)"
    return text


def follow_run(sock: str, signed: SignedOrder, *, batch: str | None, max_failures: int | None, as_json: bool,
               title: str = "run") -> dict:
    """Hand the order to the agent, show progress, return the final document."""
    body = {"order": signed.encode().hex(), "batch": batch, "max_failures": max_failures}
    if as_json:
        view: Any = None
    elif sys.stdout.isatty():
        view = _Live(title)
    else:
        view = _Plain()
    summary = None
    stream = AgentClient(sock).stream("POST", "/v1/run", body, timeout=stream_timeout(signed))
    if view is None:
        for ev in stream:
            if ev.get("event") == "done":
                summary = ev["summary"]
            elif ev.get("event") == "error":
                raise GrapevineError(f"the run failed in the agent: {ev.get('detail')}")
    else:
        with view:
            for ev in stream:
                if ev.get("event") == "done":
                    summary = ev["summary"]
                elif ev.get("event") == "error":
                    raise GrapevineError(f"the run failed in the agent: {ev.get('detail')}")
                else:
                    view.event(ev)
    if summary is None:
        raise click.ClickException("the agent closed the run stream before the run finished")
    if not as_json:
        click.echo(_summary_text(summary))
    return summary


def _action(argv: tuple[str, ...], shell: str | None, converge: tuple[str, ...]) -> RunAction:
    given = [bool(argv), shell is not None, bool(converge)]
    if sum(given) != 1:
        raise click.UsageError("give exactly one action: -- CMD ARGS..., --shell 'string' or --converge BUNDLE")
    try:
        if argv:
            return RunAction.command(argv)
        if shell is not None:
            return RunAction.shell_string(shell)
        return RunAction.converge(converge)
    except runorder.RunRefused as exc:
        raise click.UsageError(exc.detail) from None


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--target", "selector", default="", help="Selector of the nodes to run on (default: every node).")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Operator signing key.")
@click.option("--agent", "agent", default=None, help="Agent API socket (default $GRAPEVINE_AGENT or the data dir's).")
@click.option("--batch", default=None, help="Rolling batches: a node count (10) or a share of the targets (10%).")
@click.option("--max-failures", type=click.IntRange(min=0), default=None,
              help="Start no further batch once more than N targets failed.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.001), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds each node lets the command run.")
@click.option("--shell", default=None, help="Run this string with /bin/sh -c instead of an argv.")
@click.option("--converge", "converge", multiple=True, help="Converge these bundles now (repeatable).")
@json_option
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def run(selector: str, key_path: str, agent: str | None, batch: str | None, max_failures: int | None,
        timeout_s: float, shell: str | None, converge: tuple[str, ...], as_json: bool, argv: tuple[str, ...]) -> int:
    """Run a command (or a converge) on the matching nodes now."""
    action = _action(argv, shell, converge)
    try:
        runorder.BatchSize.parse(batch)
        from grapevine.policy import selectors

        selectors.parse(selector or None)
    except (ConfigError, GrapevineError) as exc:
        raise click.UsageError(str(exc)) from None
    key = SigningKey.load(Path(key_path))
    sock = find_socket(agent)  # --agent, else $GRAPEVINE_AGENT, else agent.sock in the default data dir
    signed = build_order(sock=sock, key=key, selector=selector, action=action, timeout_s=timeout_s,
                         batched=batch is not None)
    doc = follow_run(sock, signed, batch=batch, max_failures=max_failures, as_json=as_json)
    if as_json:
        emit_json(doc)
    return 0 if doc.get("ok") else 1
