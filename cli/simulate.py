"""``grapevine simulate``: run a fleet scenario in the deterministic simulator.

The seed and every fault setting are printed first (stderr), then the run
goes; a progress bar appears on stderr when it is a terminal and the run
lasts more than a couple of seconds. The result is a table (or one JSON
document with ``--json``). Exit 1 when an invariant failed or the measured
protocol did not reach every live node; the failure ends with the command
that reproduces it. Exit 2 on bad usage.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from grapevine.cli.output import emit_json, json_option

# Show a progress bar only for runs that last longer than this (wall seconds).
PROGRESS_AFTER_S = 2.0


class _Progress:
    """A rich progress bar on stderr, started only once a run proves slow."""

    def __init__(self, protocols: int) -> None:
        self.protocols = protocols
        self.started = time.monotonic()
        self.bar: Any = None
        self.task: Any = None
        self.enabled = sys.stderr.isatty()
        self._seen: list[str] = []

    def __call__(self, protocol: str, phase: str, index: int, count: int, sim_ms: int) -> None:
        if not self.enabled:
            return
        if protocol not in self._seen:
            self._seen.append(protocol)
        if self.bar is None:
            if time.monotonic() - self.started < PROGRESS_AFTER_S:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("simulating", total=count * self.protocols)
        done = (len(self._seen) - 1) * count + index
        self.bar.update(self.task, completed=done,
                        description=f"{protocol}: {phase} (t={sim_ms / 1000:.1f} s simulated)")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


ROWS = (
    ("converged fraction", lambda d: d.get("converged_fraction")),
    ("convergence p50 (ms)", lambda d: d["convergence_ms"]["p50"]),
    ("convergence p90 (ms)", lambda d: d["convergence_ms"]["p90"]),
    ("convergence p99 (ms)", lambda d: d["convergence_ms"]["p99"]),
    ("convergence max (ms)", lambda d: d["convergence_ms"]["max"]),
    ("heal (ms)", lambda d: d.get("heal_ms", "n/a")),
    ("max hops", lambda d: d.get("max_hops")),
    ("messages / node", lambda d: d.get("messages_per_node")),
    ("bytes / node", lambda d: d.get("bytes_per_node")),
    ("payload copies / node", lambda d: d.get("payload_copies_per_node")),
    ("idle bytes / node / s", lambda d: d.get("idle_bytes_per_node_per_s")),
    ("simulated time (ms)", lambda d: d.get("sim_ms")),
    ("events", lambda d: d.get("events")),
    ("wall (s)", lambda d: d.get("wall_s")),
)


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    docs = [doc] + ([doc["baseline"]] if "baseline" in doc else [])
    table = Table(title=f"{doc['scenario']}: {doc['nodes']:,} nodes, seed {doc['seed']}")
    table.add_column("figure")
    for d in docs:
        table.add_column(d["protocol"], justify="right")
    for label, get in ROWS:
        table.add_row(label, *(_fmt(get(d)) for d in docs))
    console = Console()
    console.print(table)
    console.print(f"peak RSS {doc['peak_rss_mb']} MiB; replay: {doc['reproduce']}")


@click.command("simulate")
@click.option("--nodes", type=int, default=1000, show_default=True, help="Fleet size.")
@click.option("--seed", type=int, default=1, show_default=True, help="Master seed; the same seed replays the same run.")
@click.option("--scenario", type=click.Choice(["inject", "partition", "churn", "loss"]), default="inject",
              show_default=True)
@click.option("--protocol", type=click.Choice(["plumtree", "baseline", "both"]), default="plumtree",
              show_default=True, help="The gossip core, plain push gossip, or both side by side.")
@click.option("--items", type=int, default=10, show_default=True, help="Items preloaded in every store.")
@click.option("--payload-bytes", type=int, default=2048, show_default=True, help="Payload size of each item.")
@click.option("--loss", type=float, default=None, help="Message loss probability (loss scenario: 0.05).")
@click.option("--duplicate", type=float, default=0.0, show_default=True, help="Duplication probability.")
@click.option("--reorder", type=float, default=0.0, show_default=True, help="Reordering probability.")
@click.option("--latency-ms", type=float, default=3.0, show_default=True, help="Median one-way latency.")
@click.option("--join-window-ms", type=int, default=None,
              help="Joins spread over this window (default: 1 ms per node, within 1-10 s).")
@click.option("--settle-ms", type=int, default=5_000, show_default=True, help="Settling time after the joins.")
@click.option("--idle-ms", type=int, default=10_000, show_default=True, help="Idle window measuring background cost.")
@click.option("--partition-ms", type=int, default=20_000, show_default=True, help="How long the cut lasts.")
@click.option("--budget-ms", type=int, default=60_000, show_default=True,
              help="Simulated time a converging phase may take.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw the fraction of nodes holding the item over time into this PNG.")
@click.option("-v", "--verbose", is_flag=True, help="Log phases on stderr.")
@json_option
def simulate(plot_path: str | None, verbose: bool, as_json: bool, **options: Any) -> None:
    """Run a fleet scenario on the real gossip core in simulated time."""
    from grapevine.simulation.runner import SimParams
    from grapevine.simulation.runner import simulate as run_simulation

    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    params = SimParams(**options)  # a bad value raises ConfigError: exit 2
    settings = " ".join(f"{k}={v}" for k, v in params.describe().items())
    click.echo(f"simulate: {settings}", err=True)
    progress = _Progress(2 if params.protocol == "both" else 1)
    try:
        result = run_simulation(params, progress=progress)
    finally:
        progress.stop()
    if plot_path:
        from grapevine.simulation.plot import plot_fraction

        plot_fraction(result, plot_path)
    if as_json:
        emit_json(result.doc)
    else:
        _print_table(result.doc)
    for run in result.runs:
        if run.report is not None:
            click.echo(f"[{run.protocol}] {run.report}", err=True)
    if not result.ok:
        run = result.runs[0]
        if run.report is None:
            click.echo(
                f"error: converged fraction {run.doc.get('converged_fraction')} < 1\n"
                f"reproduce with: {run.doc['reproduce']}",
                err=True,
            )
        raise click.exceptions.Exit(1)
