"""Staged rollout at fleet scale in the simulator: blast radius, time to complete, bytes, idle after.

For each fleet size, two runs of ``run_rollout`` (simulation/rollout.py),
each in a fresh interpreter (its own peak RSS and CPU seconds), default plan
[1%, 10%, 50%, 100%], soak 30 s, max_failures 0, on_failure rollback:

- a bad bundle (``--bad-fraction 1.0``): blast radius = nodes that ever ran
  it (target <= 2 %), and none still running it at the end;
- a good bundle (``--bad-fraction 0``): time to 100 % (expected about
  stages x (soak + propagation)), bytes per node against the plain inject of
  the same bundle in the same run (target <= 3x at 100,000 nodes), idle
  traffic after completion against before.

    .venv/bin/python benchmarks/sim_rollout.py [--nodes 10000 100000] [--seed 1] [--soak-ms 30000]

Exit 1 when a target is missed. Raw documents go to benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from sim_common import OUT, REPO, load_average, record

RUN_TIMEOUT_S = 3 * 3_600  # a 100,000-node rollout with 30 s soaks is about 200 s of simulated time
# Opening phases shortened at scale (as sim_scale.py does): joins over 3 s, 2 s of settling. The idle
# windows before and after stay 20 s: two shuffle periods, so they compare like with like.
OPENING = dict(join_window_ms=3_000, settle_ms=2_000, idle_ms=20_000)


def one(nodes: int, seed: int, bad: float, soak_ms: int) -> None:
    """The child: one run, its document on stdout."""
    from grapevine.simulation.rollout import run_rollout

    doc = run_rollout(nodes, seed, bad_fraction=bad, soak_ms=soak_ms, keep_frozen=True, **OPENING)
    sys.stdout.write(json.dumps(doc) + "\n")


def spawn(nodes: int, seed: int, bad: float, soak_ms: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--one", "--nodes", str(nodes), "--seed", str(seed), "--bad", str(bad),
         "--soak-ms", str(soak_ms)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO, env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode or not proc.stdout.strip():
        raise SystemExit(f"rollout run {nodes} nodes, bad {bad} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    doc = json.loads(proc.stdout)
    doc["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)
    doc["process_wall_s"] = round(time.perf_counter() - started, 1)
    return doc


def check(bad: dict, good: dict, nodes: int, soak_ms: int) -> list[str]:
    """Targets missed (empty: all met)."""
    missed = []
    if not (bad["halted"] and bad["ever_applied"] <= 0.02 * nodes and bad["final_applied"] == 0):
        missed.append(f"bad bundle: halted {bad['halted']}, ever {bad['ever_applied']}, final {bad['final_applied']}")
    if not (good["state"] == "complete" and good["final_applied"] == nodes):
        missed.append(f"good bundle: {good['state']}, {good['final_applied']} of {nodes} on it")
    # A stage opens once its slowest member settled: propagation is the tail of a broadcast in this
    # fleet (the staged bundle's slowest node, measured in the same run), plus an apply and a health check.
    stages = len(good["stages"])
    propagation = (good["convergence_ms"]["max"] or 0) + 1_000
    if good["rollout_ms"] is None or good["rollout_ms"] > stages * (soak_ms + propagation):
        missed.append(f"good bundle took {good['rollout_ms']} ms, over {stages} x (soak + {propagation} ms)")
    if nodes >= 100_000 and (good["item_bytes_ratio"] or 99) > 3.0:
        missed.append(f"rollout bytes per node {good['item_bytes_ratio']}x a plain inject (target 3x)")
    if good["idle_bytes_per_node_per_s_after"] > 1.25 * good["idle_bytes_per_node_per_s"]:
        missed.append("idle traffic after the rollout is not back to its level before")
    return missed


def summary(doc: dict) -> str:
    p = doc["plain"]
    return (f"  state {doc['state']}  ever {doc['ever_applied']}  reverted {doc['reverted']}  final {doc['final_applied']}"
            f"  rollout_ms {doc['rollout_ms']}  settled_ms {doc['settled_ms']}\n"
            f"  stages opened at {[s['opened_ms'] for s in doc['stages']]} ms\n"
            f"  bytes/node {doc['bytes_per_node']} (item traffic {doc['item_bytes_per_node']}, above idle "
            f"{doc['added_bytes_per_node']}), plain {p['bytes_per_node']} (item {p['item_bytes_per_node']}): "
            f"x{doc['bytes_ratio']} / x{doc['item_bytes_ratio']} / x{doc['added_bytes_ratio']}\n"
            f"  messages/node {doc['messages_per_node']} (plain {p['messages_per_node']}), payload copies "
            f"{doc['payload_copies_per_node']}, reports {doc['reports']}\n"
            f"  idle B/node/s before {doc['idle_bytes_per_node_per_s']} after {doc['idle_bytes_per_node_per_s_after']}\n"
            f"  events {doc['events']:,}, simulated {doc['sim_ms'] / 1000:.1f} s, CPU {doc['cpu_s']} s, "
            f"wall {doc['process_wall_s']} s, peak RSS {doc['peak_rss_mb']} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--soak-ms", type=int, default=30_000)
    ap.add_argument("--bad", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--recheck", action="store_true", help="check the documents kept in benchmarks/out, run nothing")
    args = ap.parse_args()
    if args.one:
        one(args.nodes[0], args.seed, args.bad, args.soak_ms)
        return 0
    if args.recheck:
        missed = []
        for nodes in args.nodes:
            docs = json.loads((OUT / f"sim_rollout_{nodes}_{args.seed}.json").read_text())
            missed += [f"{nodes:,} nodes: {m}" for m in check(docs["bad"], docs["good"], nodes, args.soak_ms)]
        for m in missed:
            print("MISSED:", m)
        print("PASS" if not missed else "FAIL")
        return 1 if missed else 0
    missed: list[str] = []
    for nodes in args.nodes:
        docs = {}
        for label, bad in (("bad", 1.0), ("good", 0.0)):
            load = load_average()
            doc = docs[label] = spawn(nodes, args.seed, bad, args.soak_ms)
            doc["load_before"], doc["load_after"] = load, load_average()
            print(f"{nodes:,} nodes, {label} bundle, seed {args.seed} (load {load} -> {doc['load_after']}):",
                  flush=True)
            print(summary(doc), flush=True)
        record(f"sim_rollout_{nodes}_{args.seed}", docs)
        missed += [f"{nodes:,} nodes: {m}" for m in check(docs["bad"], docs["good"], nodes, args.soak_ms)]
    print(f"raw documents in {OUT}")
    for m in missed:
        print("MISSED:", m)
    print("PASS" if not missed else "FAIL")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
