"""Chaos sweep: many seeded chaos runs of the real gossip core in the simulator.

    python benchmarks/chaos_sweep.py [--seeds 200] [--start 1] [--nodes 300] [--jobs 2] [--out sweep.json]
    python benchmarks/chaos_sweep.py --seed N [--nodes 300]        # replay one seed

Each run mixes partitions, loss, duplication, reordering, crashes and
restarts, clock skew within the core's limit, concurrent injections of the
same keys from many nodes and forged items the validator must refuse (see
simulation/chaos.py), then heals and requires every live node to converge.

Prints the seed and fault settings of every run, then a summary: seeds run,
faults injected by kind (summed), invariant violations (safety and liveness
apart), heal times (median, p90, max, simulated ms). Every failure ends with
"reproduce with: ...". Exit status 1 if any seed failed. ``--out`` writes the
per-seed documents and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from grapevine.simulation.chaos import ChaosParams, run_chaos


def one(kw: dict[str, Any]) -> dict[str, Any]:
    r = run_chaos(ChaosParams(**kw))
    doc = dict(r.doc)
    doc["failure"] = r.failure
    doc["report"] = r.report
    return doc


def summarise(docs: list[dict[str, Any]]) -> dict[str, Any]:
    faults: Counter = Counter()
    refusals: Counter = Counter()
    for d in docs:
        faults.update(d["faults"])
        refusals.update(d["refusals"])
    heals = sorted(d["heal_ms"] for d in docs if d["heal_ms"] is not None)
    return {
        "seeds_run": len(docs),
        "seeds": [d["seed"] for d in docs],
        "faults": dict(sorted(faults.items())),
        "refusals": dict(sorted(refusals.items())),
        "safety_violations": sum(1 for d in docs if d["failure"] == "safety"),
        "liveness_failures": sum(1 for d in docs if d["failure"] == "liveness"),
        "failed_seeds": [d["seed"] for d in docs if d["failure"]],
        "heal_ms": {
            "median": statistics.median(heals) if heals else None,
            "p90": heals[min(len(heals) - 1, int(0.9 * len(heals)))] if heals else None,
            "max": heals[-1] if heals else None,
        },
        "events": sum(d["events"] for d in docs),
        "wall_s_total": round(sum(d["wall_s"] for d in docs), 1),
    }


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
    ap.add_argument("--out", default=None, help="write the per-seed documents and the summary here (JSON)")
    args = ap.parse_args()

    base = {"nodes": args.nodes}
    for name in ("chaos_ms", "budget_ms", "max_loss", "max_duplicate", "max_reorder", "crash_share", "heal_loss"):
        value = getattr(args, name)
        if value is not None:
            base[name] = value
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    jobs = [dict(base, seed=s) for s in seeds]
    started = time.perf_counter()
    docs: list[dict[str, Any]] = []

    def show(doc: dict[str, Any]) -> None:
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

    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for doc in pool.map(one, jobs):
                docs.append(doc)
                show(doc)
    else:
        for kw in jobs:
            doc = one(kw)
            docs.append(doc)
            show(doc)
    summary = summarise(docs)
    summary["nodes"] = args.nodes
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["cpu"] = os.cpu_count()
    print()
    print(f"seeds run: {summary['seeds_run']} ({seeds[0]}..{seeds[-1]}), {args.nodes} nodes each")
    print("faults injected: " + ", ".join(f"{k} {v:,}" for k, v in summary["faults"].items()))
    print("refusals: " + ", ".join(f"{k} {v:,}" for k, v in summary["refusals"].items()))
    print(f"invariant violations: safety {summary['safety_violations']}, liveness {summary['liveness_failures']}")
    print(f"heal (simulated ms): median {summary['heal_ms']['median']}, p90 {summary['heal_ms']['p90']}, "
          f"max {summary['heal_ms']['max']}")
    print(f"wall: {summary['wall_s']} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "runs": docs}, fh, indent=1, sort_keys=True)
    return 1 if summary["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
