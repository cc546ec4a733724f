"""Idle cost must stay flat: per node per second, independent of fleet size and item count.

Runs the inject scenario with a 20 s idle window (after the overlay settled
and the warm-up broadcast formed the tree) and compares
``idle_bytes_per_node_per_s``:

- 1,000 vs 10,000 nodes (10 items): within 25 %;
- 10 vs 1,000 items (1,000 nodes): within 25 %.

Each figure is the median over the seeds given (default 3 for 1,000-node
runs, 1 for 10,000 nodes).

    .venv/bin/python benchmarks/sim_idle.py [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import statistics

from sim_common import load_average, record, simulate

FLATNESS = 0.25
IDLE_MS = "20000"


def idle(nodes: int, items: int, seed: int) -> dict:
    doc = simulate("--nodes", str(nodes), "--seed", str(seed), "--scenario", "inject", "--items", str(items),
                   "--idle-ms", IDLE_MS)
    return {"nodes": nodes, "items": items, "seed": seed, "idle": doc["idle_bytes_per_node_per_s"],
            "idle_msgs": doc["idle_messages_per_node_per_s"], "by_type": doc["idle_traffic_by_type"],
            "cpu_s": doc["cpu_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    runs = {
        "1000 nodes, 10 items": [idle(1_000, 10, s) for s in args.seeds],
        "10000 nodes, 10 items": [idle(10_000, 10, s) for s in args.seeds[:1]],
        "1000 nodes, 1000 items": [idle(1_000, 1_000, s) for s in args.seeds],
    }
    record("sim_idle", runs)
    med = {k: statistics.median(r["idle"] for r in v) for k, v in runs.items()}
    print(f"load average {load_average()}")
    for k, v in med.items():
        msgs = statistics.median(r["idle_msgs"] for r in runs[k])
        print(f"{k:>24}: {v:8.1f} bytes/node/s  {msgs:.2f} messages/node/s")
    size = med["10000 nodes, 10 items"] / med["1000 nodes, 10 items"] - 1
    items = med["1000 nodes, 1000 items"] / med["1000 nodes, 10 items"] - 1
    print(f"1,000 -> 10,000 nodes: {size:+.1%}   10 -> 1,000 items: {items:+.1%}   (limit +-{FLATNESS:.0%})")
    ok = abs(size) <= FLATNESS and abs(items) <= FLATNESS
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
