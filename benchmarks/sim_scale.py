"""100,000 to 1,000,000 simulated nodes of the real gossip core, end to end.

Checks the scale targets: every node converges with at most log2 N hops,
the run takes at most 120 s of wall time up to 100,000 nodes and 0.9 ms per
node beyond (15 minutes at 1,000,000), and at most 8 GiB of peak resident
memory up to 100,000 nodes and 16 GiB beyond. The opening phases are
shortened (joins over 3 s, 2 s of settling, a 2 s idle window): they only
add background seconds, the measured broadcast is the same.

    .venv/bin/python benchmarks/sim_scale.py [--nodes 100000] [--seed 1] [--scenario inject|partition]

Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import math

from sim_common import load_average, record, simulate

WALL_LIMIT_S = 120.0  # up to 100,000 nodes
WALL_PER_NODE_S = 0.9e-3  # beyond: 15 minutes at 1,000,000 nodes
RSS_LIMIT_MB = 8 * 1024  # up to 100,000 nodes
RSS_LIMIT_LARGE_MB = 16 * 1024  # beyond


def limits(nodes: int) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) a run of ``nodes`` may take."""
    if nodes <= 100_000:
        return WALL_LIMIT_S, RSS_LIMIT_MB
    return WALL_PER_NODE_S * nodes, RSS_LIMIT_LARGE_MB


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", choices=("inject", "partition"), default="inject")
    args = ap.parse_args()
    wall_limit, rss_limit = limits(args.nodes)
    load_before = load_average()
    doc = simulate("--nodes", str(args.nodes), "--seed", str(args.seed), "--scenario", args.scenario,
                   "--join-window-ms", "3000", "--settle-ms", "2000", "--idle-ms", "2000")
    suffix = "" if args.scenario == "inject" else f"_{args.scenario}"
    record(f"sim_scale_{args.nodes}_{args.seed}{suffix}", doc)
    conv = doc["convergence_ms"]
    # The machine may be shared: the load average before and after says how
    # far the wall clock is from the CPU seconds.
    print(f"nodes {doc['nodes']:,}  seed {doc['seed']}  scenario {args.scenario}  "
          f"load average before {load_before}, after {load_average()}")
    hop_limit = math.log2(args.nodes)
    print(f"converged_fraction {doc['converged_fraction']}  convergence p50/p90/p99/max "
          f"{conv['p50']}/{conv['p90']}/{conv['p99']}/{conv['max']} ms  max_hops {doc['max_hops']} "
          f"(limit {hop_limit:.1f})  heal_ms {doc.get('heal_ms')}")
    print(f"payload_copies_per_node {doc['payload_copies_per_node']}  bytes_per_node {doc['bytes_per_node']}  "
          f"messages_per_node {doc['messages_per_node']}")
    print(f"events {doc['events']:,}  simulated {doc['sim_ms'] / 1000:.1f} s")
    print(f"phases {doc.get('phases')}")
    print(f"wall {doc['process_wall_s']} s (limit {wall_limit:.0f})  cpu {doc['cpu_s']} s  "
          f"peak RSS {doc['child_peak_rss_mb']} MiB (limit {rss_limit})")
    ok = (doc["converged_fraction"] == 1.0 and doc["process_wall_s"] <= wall_limit
          and doc["child_peak_rss_mb"] <= rss_limit and (doc["max_hops"] or 0) <= hop_limit)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
