"""Chaos sweep: many seeded chaos runs of the real gossip core in the simulator.

    python benchmarks/chaos_sweep.py [--seeds 200] [--start 1] [--nodes 300] [--jobs 2] [--out sweep.json]
    python benchmarks/chaos_sweep.py --seed N [--nodes 300]        # replay one seed

The same sweep as ``grapevine simulate sweep --scenario chaos --seeds 1-200``
(simulation/sweep.py does the work; this script keeps the per-seed lines and
the summary of earlier results). Each run mixes partitions, loss,
duplication, reordering, crashes and restarts, clock skew within the core's
limit, concurrent injections of the same keys from many nodes and forged
items the validator must refuse (see simulation/chaos.py), then heals and
requires every live node to converge.

Prints the seed and fault settings of every run, then a summary: seeds run,
faults injected by kind (summed), invariant violations (safety and liveness
apart), heal times (median, p90, max, simulated ms). Every failure ends with
"reproduce with: ...". Exit status 1 if any seed failed. ``--out`` writes the
per-seed documents and the summary as JSON. ``--engine`` picks where the
seeds run: a local process pool of ``--jobs`` processes (the default; one job
runs them in this process) or a local Dask cluster of ``--jobs`` workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from grapevine.simulation.sweep import chaos_totals, run_sweep

OPTIONS = ("chaos_ms", "budget_ms", "max_loss", "max_duplicate", "max_reorder", "crash_share", "heal_loss")


def show(doc: dict[str, Any], done: int, total: int) -> None:
    s = doc["settings"]
    f = doc["faults"]
    status = "ok" if doc["failure"] is None else doc["failure"].upper()
    print(
        f"seed {doc['seed']:>4}: {status:<8} heal {doc['heal_ms']} ms | loss {s['loss']} dup {s['duplicate']} "
        f"reorder {s['reorder']} skew {s['skew_spread_ms']} ms | partitions {f['partitions']} "
        f"crashes {f['crashes']} restarts {f['restarts']} waves {f['inject_waves']} "
        f"forged {f['forged_pushes'] + f['forged_syncs']} | {doc['wall_s']} s",
        flush=True,
    )
    if doc["report"]:
        print(doc["report"], flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=200, help="how many consecutive seeds to run")
    ap.add_argument("--start", type=int, default=1, help="first seed of the sweep")
    ap.add_argument("--seed", type=int, default=None, help="run this one seed only (replay)")
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--chaos-ms", type=int, default=None)
    ap.add_argument("--budget-ms", type=int, default=None)
    ap.add_argument("--max-loss", type=float, default=None)
    ap.add_argument("--max-duplicate", type=float, default=None)
    ap.add_argument("--max-reorder", type=float, default=None)
    ap.add_argument("--crash-share", type=float, default=None)
    ap.add_argument("--heal-loss", type=float, default=None)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each run is single-threaded)")
    ap.add_argument("--engine", choices=("local", "dask"), default="local")
    ap.add_argument("--out", default=None, help="write the per-seed documents and the summary here (JSON)")
    args = ap.parse_args()

    options = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    sweep = run_sweep("chaos", seeds, nodes=args.nodes, options=options, engine=args.engine,
                      workers=args.jobs, on_result=show)
    docs = sweep.results
    summary = chaos_totals(docs)
    summary.update(
        seeds_run=len(docs), seeds=[d["seed"] for d in docs], failed_seeds=[d["seed"] for d in sweep.failed],
        nodes=args.nodes, wall_s=round(sweep.wall_s, 1), cpu=os.cpu_count(), engine=sweep.engine,
        place=sweep.place,
    )
    print()
    print(f"seeds run: {summary['seeds_run']} ({seeds[0]}..{seeds[-1]}), {args.nodes} nodes each")
    print("faults injected: " + ", ".join(f"{k} {v:,}" for k, v in summary["faults"].items()))
    print("refusals: " + ", ".join(f"{k} {v:,}" for k, v in summary["refusals"].items()))
    print(f"invariant violations: safety {summary['safety_violations']}, liveness {summary['liveness_failures']}")
    print(f"heal (simulated ms): median {summary['heal_ms']['median']}, p90 {summary['heal_ms']['p90']}, "
          f"max {summary['heal_ms']['max']}")
    print(f"wall: {summary['wall_s']} s on {sweep.place}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "runs": docs}, fh, indent=1, sort_keys=True)
    return 1 if summary["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
