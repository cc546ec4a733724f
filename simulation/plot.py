"""Plots of a simulated run (matplotlib, imported only when a plot is asked for).

One figure: the fraction of live nodes holding the newest item over
simulated time since it was published, one line per protocol that ran (and
per half of the fleet for the partition scenario, with the heal marked).

For a sweep: one histogram per figure over the seeds, median and p99 marked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .runner import Result

log = logging.getLogger("grapevine.sim")

STYLES = {"plumtree": "-", "baseline": "--"}


def _steps(times: list[int], total: int) -> tuple[list[float], list[float]]:
    """A cumulative step curve: x in seconds, y the fraction of ``total``."""
    xs: list[float] = [0.0]
    ys: list[float] = [0.0]
    for i, t in enumerate(times, start=1):
        xs.append(t / 1000.0)
        ys.append(i / total)
    return xs, ys


def plot_fraction(result: Result, path: str | Path) -> Path:
    """Draw the convergence curves of ``result`` into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    heal_drawn = False
    for run in result.runs:
        total = max(1, run.live_nodes)
        style = STYLES.get(run.protocol, "-")
        for label, times in run.curves.items():
            if label == "same key, both sides":
                continue
            xs, ys = _steps([t for t in times if t >= 0], total)
            ax.step(xs, ys, style, where="post", label=f"{run.protocol}: {label}")
        heal = run.marks.get("heal")
        publish = run.marks.get("publish")
        if heal is not None and publish is not None and not heal_drawn:
            ax.axvline((heal - publish) / 1000.0, color="grey", linestyle=":", label="heal")
            heal_drawn = True
    doc = result.doc
    ax.set_title(f"{doc['scenario']}: {doc['nodes']} nodes, seed {doc['seed']}")
    ax.set_xlabel("simulated time since publish (s)")
    ax.set_ylabel("fraction of live nodes holding the item")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    log.info("plot written to %s", out)
    return out


def plot_distributions(series: dict[str, Sequence[float]], title: str, path: str | Path,
                       *, columns: int = 3) -> Path:
    """One histogram per figure (name -> the values of every seed) into a PNG at ``path``."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    names = [n for n, values in series.items() if values]
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = sorted(series[name])
        ax.hist(values, bins=min(30, max(5, len(set(values)))), color="tab:blue", alpha=0.8)
        median = values[len(values) // 2]
        p99 = values[min(len(values) - 1, max(0, math.ceil(0.99 * len(values)) - 1))]
        ax.axvline(median, color="black", linestyle="--", linewidth=1, label=f"median {median:g}")
        ax.axvline(p99, color="tab:red", linestyle=":", linewidth=1, label=f"p99 {p99:g}")
        ax.set_title(name, fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    log.info("plot written to %s", out)
    return out
