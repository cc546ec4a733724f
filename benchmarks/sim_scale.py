"""100,000 simulated nodes of the real gossip core: one inject, end to end.

Checks the scale targets: every node converges, the run takes at most 120 s
of wall time and at most 8 GiB of peak resident memory. The opening phases
are shortened (joins over 3 s, 2 s of settling, a 2 s idle window): they
only add background seconds, the measured broadcast is the same.

    .venv/bin/python benchmarks/sim_scale.py [--nodes 100000] [--seed 1]

Exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse

from sim_common import load_average, record, simulate

WALL_LIMIT_S = 120.0
RSS_LIMIT_MB = 8 * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    load_before = load_average()
    doc = simulate("--nodes", str(args.nodes), "--seed", str(args.seed), "--scenario", "inject",
                   "--join-window-ms", "3000", "--settle-ms", "2000", "--idle-ms", "2000")
    record(f"sim_scale_{args.nodes}_{args.seed}", doc)
    conv = doc["convergence_ms"]
    # The machine may be shared: the load average before and after says how
    # far the wall clock is from the CPU seconds.
    print(f"nodes {doc['nodes']:,}  seed {doc['seed']}  load average before {load_before}, after {load_average()}")
    print(f"converged_fraction {doc['converged_fraction']}  convergence p50/p99/max "
          f"{conv['p50']}/{conv['p99']}/{conv['max']} ms  max_hops {doc['max_hops']}")
    print(f"payload_copies_per_node {doc['payload_copies_per_node']}  bytes_per_node {doc['bytes_per_node']}  "
          f"messages_per_node {doc['messages_per_node']}")
    print(f"events {doc['events']:,}  simulated {doc['sim_ms'] / 1000:.1f} s")
    print(f"wall {doc['process_wall_s']} s (limit {WALL_LIMIT_S:.0f})  cpu {doc['cpu_s']} s  "
          f"peak RSS {doc['child_peak_rss_mb']} MiB (limit {RSS_LIMIT_MB})")
    ok = (doc["converged_fraction"] == 1.0 and doc["process_wall_s"] <= WALL_LIMIT_S
          and doc["child_peak_rss_mb"] <= RSS_LIMIT_MB)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
