"""``grapevine converge``: converge this machine now.

Two forms share the command:

- masterless: ``grapevine converge --local site.yaml --root DIR [--dry-run]
  [--check] [--json] [--tag k=v ...]`` loads the policy file, validates every
  bundle in it, and converges the bundles that target this node. No daemon.
- fleet: ``grapevine converge [--target SELECTOR] [--dry-run]`` asks a
  running agent to converge the targeted nodes. That path lives in
  ``grapevine.cli.fleet.converge_via_agent(agent, dry_run=, target=)``
  (returns the report as JSON), imported only when used.

Exit status: 0 converged (or nothing to do); 1 a resource failed or was
skipped, or ``--check`` found something that would change; 2 a broken
policy or bad usage, in which case nothing on disk was changed.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterable

import click

from grapevine.cli.output import emit_json, fail, json_option
from grapevine.gossip.errors import PolicyError


# Past this many rows the report is printed one plain line per resource.
MAX_TABLE_ROWS = 200


def _fleet(target: str | None, dry_run: bool, check: bool, as_json: bool, agent: str | None) -> int:
    try:
        fleet = importlib.import_module("grapevine.cli.fleet")
    except ModuleNotFoundError as exc:
        if exc.name != "grapevine.cli.fleet":
            raise
        fleet = None
    via_agent = getattr(fleet, "converge_via_agent", None)
    if via_agent is None:
        raise click.UsageError(
            "converge needs --local POLICY_FILE (masterless) or a running agent; "
            "this installation has no agent client for the fleet form"
        )
    result = via_agent(agent, dry_run=dry_run or check, target=target)
    if isinstance(result, int):
        return result
    from grapevine.policy.report import Report

    report = Report.from_json(result)
    if as_json:
        emit_json({**result, "check": check})
    else:
        for key in ("skipped_reason", "error"):
            if result.get(key):
                click.echo(f"{key.replace('_', ' ')}: {result[key]}", err=key == "error")
        _print_text(report, verbose=False)
    if result.get("error"):
        return 1
    return _exit_status(report, check, as_json)


def _exit_status(report, check: bool, as_json: bool) -> int:
    if report.failed or report.skipped:
        return 1
    if check and report.changed:
        if not as_json:
            click.echo(f"check: {report.changed} resource(s) would change", err=True)
        return 1
    return 0


def _print_text(report, *, verbose: bool) -> None:
    interesting = verbose or any(r.status != "unchanged" for r in report.resources)
    if not interesting:
        click.echo(report.summary_line())
        return
    rows = [r for r in report.resources if verbose or r.status != "unchanged"]
    if len(rows) > MAX_TABLE_ROWS:
        # A table this long is unreadable and slow to lay out: one line each.
        for r in rows:
            status = "would change" if report.dry_run and r.status == "changed" else r.status
            click.echo(f"{status:12} {r.id}  {r.error or '; '.join(r.changes) or r.reason}")
            if report.dry_run and r.diff:
                click.echo(r.diff, nl=False)
        click.echo(report.summary_line())
        return
    from rich.console import Console

    console = Console(soft_wrap=False)
    for part in render_table(report, show_unchanged=verbose, diffs=report.dry_run):
        console.print(part)


def render_table(report: Any, *, show_unchanged: bool = True, diffs: bool = False) -> Iterable[Any]:
    """Rich renderables for a report: a table, then the diffs when asked."""
    from rich.syntax import Syntax
    from rich.table import Table
    from rich.text import Text

    title = "plan (dry run)" if report.dry_run else "converge"
    table = Table(title=f"{title} on {report.node or 'this node'} (root {report.root})", show_lines=False)
    table.add_column("resource", overflow="fold")
    table.add_column("status")
    table.add_column("what", overflow="fold")
    table.add_column("ms", justify="right")
    style = {"changed": "yellow", "unchanged": "green", "failed": "bold red", "skipped": "magenta"}
    for r in report.resources:
        if r.status == "unchanged" and not show_unchanged:
            continue
        status = "would change" if report.dry_run and r.status == "changed" else r.status
        what = r.error or "; ".join(r.changes) or r.reason
        table.add_row(r.id, Text(status, style=style[r.status]), what, f"{r.duration_ms:.1f}")
    out: list[Any] = [table]
    if diffs:
        for r in report.resources:
            if r.status == "changed" and r.diff:
                out.append(Text(f"--- {r.id}", style="bold"))
                out.append(Syntax(r.diff, "diff", theme="ansi_dark", word_wrap=True))
    out.append(Text(report.summary_line()))
    return out


@click.command()
@click.option("--local", "policy_file", type=click.Path(dir_okay=False, path_type=Path), help="Policy file to converge masterless (no daemon).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True, help="Apply every path under this directory.")
@click.option("--dry-run", is_flag=True, help="Show the plan with diffs; change nothing.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if anything would change.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="A tag fact of this node (repeatable).")
@click.option("--name", default=None, help="Node name fact (default: the hostname).")
@click.option("--target", default=None, help="Selector: which nodes converge (fleet form; with --local, whether this node does).")
@click.option("--agent", default=None, help="Agent socket for the fleet form.")
@click.option("--node-key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="This node's key: opens secrets sealed to it (--local).")
@click.option("-v", "--verbose", is_flag=True, help="List unchanged resources too and log progress.")
@json_option
def converge(policy_file, root, dry_run, check, tags, name, target, agent, node_key, verbose, as_json) -> int:
    """Converge this machine to a policy file, or the fleet via an agent."""
    if policy_file is None:
        if tags or name or node_key or str(root) != "/":
            raise click.UsageError("--root, --tag, --name and --node-key apply to --local only")
        return _fleet(target, dry_run, check, as_json, agent)
    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from grapevine.policy import facts as facts_mod
    from grapevine.policy.bundle import bundles_from_file
    from grapevine.policy.catalog import validate_bundles
    from grapevine.policy.engine import converge as run_converge
    from grapevine.policy.engine import ConvergeBusy, select_bundles
    from grapevine.policy.selectors import parse

    node_facts = facts_mod.gather(facts_mod.parse_tags(tags), name)
    bundles = bundles_from_file(str(policy_file))
    try:
        # The engine validates the bundles that target this node before it
        # changes anything; the others are checked here so that a broken
        # policy is refused whichever node reads it.
        if select_bundles(bundles, node_facts)[1]:
            validate_bundles(bundles)
    except PolicyError as exc:
        raise PolicyError(f"{policy_file}: {exc}") from None
    if target is not None and not parse(target).matches(node_facts):
        if as_json:
            emit_json({"changed": 0, "unchanged": 0, "failed": 0, "skipped": 0, "resources": [], "targeted": False})
        else:
            click.echo(f"--target {target!r} does not select this node; nothing to do")
        return 0
    if not root.is_dir():
        raise click.BadParameter(f"{root} is not a directory", param_hint="--root")
    key = None
    if node_key is not None:
        from grapevine.policy.keys import SigningKey

        key = SigningKey.load(node_key)
    try:
        report = run_converge(bundles, root=root.resolve(), facts=node_facts, dry_run=dry_run or check, node_key=key)
    except PolicyError as exc:
        raise PolicyError(f"{policy_file}: {exc}") from None
    except ConvergeBusy as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        doc = report.to_json()
        doc["check"] = check
        emit_json(doc)
    else:
        _print_text(report, verbose=verbose)
    return _exit_status(report, check, as_json)
