"""``grapevine simulate``: run a fleet scenario in the deterministic simulator.

The seed and every fault setting are printed first (stderr), then the run
goes; a progress bar appears on stderr when it is a terminal, the run lasts
more than a couple of seconds and ``--json`` is not given. The result is a
table (or one JSON document with ``--json``). Exit 1 when an invariant
failed or the measured protocol did not reach every live node; the failure
ends with the command that reproduces it. Exit 2 on bad usage.

``grapevine simulate sweep`` runs one scenario over many seeds on a Dask
cluster or a local process pool (simulation/sweep.py) and prints per-figure
distributions; every failed seed is named with the command that replays it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

from grapevine.cli.output import emit_json, fail, json_option

# Show a progress bar only for runs that last longer than this (wall seconds).
PROGRESS_AFTER_S = 2.0


class _Progress:
    """A rich progress bar on stderr, started only once a run proves slow."""

    def __init__(self, protocols: int, *, enabled: bool = True) -> None:
        self.protocols = protocols
        self.started = time.monotonic()
        self.bar: Any = None
        self.task: Any = None
        self.enabled = enabled and sys.stderr.isatty()
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


@click.group("simulate", invoke_without_command=True)
@click.option("--nodes", type=int, default=1000, show_default=True, help="Fleet size.")
@click.option("--seed", type=int, default=1, show_default=True, help="Master seed; the same seed replays the same run.")
@click.option("--scenario", type=click.Choice(["inject", "partition", "churn", "loss", "rollout"]), default="inject",
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
@click.option("--bad-fraction", type=float, default=None,
              help="rollout: fraction of nodes whose health check fails (1.0: a bad bundle; default 0).")
@click.option("-v", "--verbose", is_flag=True, help="Log phases on stderr.")
@json_option
@click.pass_context
def simulate(ctx: click.Context, plot_path: str | None, verbose: bool, as_json: bool, **options: Any) -> None:
    """Run a fleet scenario on the real gossip core in simulated time.

    `grapevine simulate sweep` runs one scenario over many seeds.
    """
    if ctx.invoked_subcommand is not None:
        given = [p.opts[0] for p in ctx.command.params
                 if ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)}: give the options of `{ctx.invoked_subcommand}` after it")
        return
    from grapevine.simulation.runner import SimParams
    from grapevine.simulation.runner import simulate as run_simulation

    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    bad_fraction = options.pop("bad_fraction")
    if options["scenario"] == "rollout":
        _simulate_rollout(options, bad_fraction, as_json)
        return
    if bad_fraction is not None:
        raise click.UsageError("--bad-fraction: only with --scenario rollout")
    params = SimParams(**options)  # a bad value raises ConfigError: exit 2
    settings = " ".join(f"{k}={v}" for k, v in params.describe().items())
    click.echo(f"simulate: {settings}", err=True)
    progress = _Progress(2 if params.protocol == "both" else 1, enabled=not as_json)
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



def _simulate_rollout(options: dict[str, Any], bad_fraction: float | None, as_json: bool) -> None:
    """``--scenario rollout``: a staged rollout driven by the real Gate and Driver (simulation/rollout.py)."""
    from grapevine.simulation.rollout import run_rollout

    if options["protocol"] != "plumtree":
        raise click.UsageError("--protocol: the rollout scenario runs on the gossip core only")
    click.echo(f"simulate: scenario=rollout nodes={options['nodes']} seed={options['seed']} "
               f"bad_fraction={bad_fraction or 0.0}", err=True)
    doc = run_rollout(options["nodes"], options["seed"], bad_fraction=bad_fraction or 0.0,
                      payload_bytes=options["payload_bytes"], latency_ms=options["latency_ms"])
    if as_json:
        emit_json(doc)
    else:
        for key in ("state", "halted", "ever_applied", "reverted", "final_applied", "rollout_ms",
                    "bytes_per_node", "wall_s"):
            click.echo(f"{key:>14}: {_fmt(doc.get(key))}")
        for i, stage in enumerate(doc.get("stages", [])):
            click.echo(f"       stage {i}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stage.items()))
    if not doc.get("ok", True):
        click.echo(f"error: {doc.get('failure_report') or doc.get('reason')}", err=True)
        raise click.exceptions.Exit(1)


# -- simulate sweep -----------------------------------------------------------------


def _option_value(text: str) -> Any:
    """``-o`` values: an integer, a number, ``none``, else the text itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return None if text.lower() in ("none", "null") else text


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="'-o' / '--option'")
        options[key.strip().lstrip("-").replace("-", "_")] = _option_value(value.strip())
    return options


class _SweepProgress:
    """Seeds done out of the sweep, on stderr when it is a terminal (not with --json)."""

    def __init__(self, name: str, total: int, *, enabled: bool, verbose: bool) -> None:
        self.name = name
        self.verbose = verbose
        self.failed = 0
        self.bar: Any = None
        self.console: Any = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.console = Console(stderr=True)
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
            self.task = self.bar.add_task(f"sweep {name}", total=total)
            self.bar.start()

    def __call__(self, doc: dict[str, Any], done: int, total: int) -> None:
        if doc.get("ok") is not True:
            self.failed += 1
        if self.verbose:
            status = "ok" if doc.get("ok") is True else f"FAILED ({doc.get('failure')})"
            line = f"seed {doc['seed']}: {status} on {doc['worker']} in {doc.get('wall_s', '-')} s"
            if self.console is not None:
                self.console.print(line, markup=False, highlight=False)
            else:
                click.echo(line, err=True)
        if self.bar is not None:
            failed = f", {self.failed} failed" if self.failed else ""
            self.bar.update(self.task, completed=done, description=f"sweep {self.name}{failed}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_sweep(doc: dict[str, Any], rows: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = doc["summary"]
    figures = summary["figures"]
    table = Table(title=f"sweep {doc['scenario']}: {doc['nodes']:,} nodes, seeds {doc['seeds']} "
                        f"({summary['seeds_run']} run, {len(summary['failed_seeds'])} failed)")
    table.add_column("figure")
    for column in ("min", "median", "p99", "max", "seeds"):
        table.add_column(column, justify="right")
    for name in rows or tuple(figures):
        if name in figures:
            f = figures[name]
            table.add_row(name, *(_fmt(f[c]) for c in ("min", "median", "p99", "max", "seeds")))
    console = Console()
    console.print(table)
    for key, value in summary.get("totals", {}).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        console.print(f"{key.replace('_', ' ')}: {_fmt(value) if not isinstance(value, str) else value}",
                      markup=False, highlight=False)
    by_worker = ", ".join(f"{w} {n}" for w, n in summary["by_worker"].items())
    console.print(f"engine {doc['engine']}, on {doc['place']}; seeds per worker: {by_worker}; wall {doc['wall_s']} s",
                  markup=False, highlight=False)


@simulate.command("sweep")
@click.option("--seeds", "seeds_spec", required=True, help="Seeds to run: 1-200, 7, or 1-5,9,20-22.")
@click.option("--scenario", required=True,
              help="inject, partition, churn, loss (as `simulate`), chaos, or any registered scenario.")
@click.option("--nodes", type=int, default=None, help="Fleet size (default: the scenario's: 1000; chaos 300).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="Run on this existing Dask cluster instead of a local one.")
@click.option("--workers", type=int, default=None,
              help="Worker processes of the local cluster or pool (default: one per CPU).")
@click.option("--engine", type=click.Choice(["auto", "dask", "local"]), default="auto", show_default=True,
              help="dask: a Dask cluster; local: a process pool here; auto: dask when installed.")
@click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="A scenario parameter, e.g. -o budget-ms=30000 -o max-loss=0.3 (repeatable).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Draw the distribution of every table figure into this PNG.")
@click.option("-v", "--verbose", is_flag=True, help="One line per seed on stderr as it lands.")
@json_option
def sweep(seeds_spec: str, scenario: str, nodes: int | None, scheduler: str | None, workers: int | None,
          engine: str, option_pairs: tuple[str, ...], plot_path: str | None, verbose: bool, as_json: bool) -> None:
    """Run one scenario over many seeds on a Dask cluster (a local one by default).

    Prints min / median / p99 / max of every figure over the seeds, and each
    failed seed with the command that replays it alone. Exit 1 if any seed
    failed, 2 on bad usage. Without the `cluster` extra (distributed) the
    seeds run on a local process pool.
    """
    from grapevine.simulation.sweep import CLUSTER_HINT, check_sweep, choose_engine, parse_seeds, run_sweep

    options = _parse_options(option_pairs)
    seeds = parse_seeds(seeds_spec)  # a ConfigError is bad usage: exit 2
    spec, size = check_sweep(scenario, nodes, options, workers, scheduler)
    chosen = choose_engine(engine, scheduler)
    settings = " ".join(f"{k}={v}" for k, v in options.items())
    where = scheduler or ("a local Dask cluster" if chosen == "dask" else "a local process pool")
    click.echo(f"sweep: scenario={scenario} nodes={size} seeds={seeds_spec} ({len(seeds)}) engine={chosen} "
               f"on {where}" + (f" {settings}" if settings else ""), err=True)
    if chosen == "local" and engine == "auto":
        click.echo(f"sweep: distributed is not installed, so the seeds run on a local process pool "
                   f"({CLUSTER_HINT} for Dask)", err=True)
    progress = _SweepProgress(scenario, len(seeds), enabled=not as_json, verbose=verbose)
    try:
        result = run_sweep(scenario, seeds, nodes=nodes, options=options, engine=chosen, scheduler=scheduler,
                           workers=workers, on_result=progress)
    except ConnectionError as exc:  # the cluster, not a seed, failed
        raise fail(str(exc)) from None
    finally:
        progress.stop()
    doc = result.doc()
    if plot_path:
        from grapevine.simulation.plot import plot_distributions
        from grapevine.simulation.sweep import figures_of

        per_seed = [figures_of(d) for d in result.results]
        rows = spec.figures or tuple(doc["summary"]["figures"])
        series = {name: [f[name] for f in per_seed if name in f] for name in rows}
        plot_distributions(series, f"sweep {scenario}: {size:,} nodes, seeds {doc['seeds']}", plot_path)
    if as_json:
        emit_json(doc)
    else:
        _print_sweep(doc, spec.figures)
    for failure in doc["summary"]["failures"]:
        click.echo(f"seed {failure['seed']} failed ({failure['failure']}) on {failure['worker']}: "
                   f"{failure['message']}\n  reproduce with: {failure['reproduce']}", err=True)
    if not result.ok:
        click.echo(f"error: {len(result.failed)} of {len(seeds)} seeds failed: "
                   f"{', '.join(str(d['seed']) for d in result.failed)}", err=True)
        raise click.exceptions.Exit(1)
