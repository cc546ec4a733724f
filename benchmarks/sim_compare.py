"""The four scenarios at 10,000 nodes, gossip core next to the push-gossip baseline.

Targets checked: inject converges with max_hops <= 14 and at most 1.3
payload copies per node, the baseline costs several times more; partition
heals within 30 s of simulated time; churn and loss reach every live node.

    .venv/bin/python benchmarks/sim_compare.py [--nodes 10000] [--seed 1] [--scenarios inject partition ...]
"""

from __future__ import annotations

import argparse

from sim_common import load_average, record, simulate

FIELDS = ("converged_fraction", "max_hops", "payload_copies_per_node", "bytes_per_node", "messages_per_node",
          "idle_bytes_per_node_per_s", "heal_ms")


def conv(doc: dict) -> str:
    c = doc["convergence_ms"]
    return f"{c['p50']}/{c['p99']}/{c['max']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenarios", nargs="+", default=["inject", "partition", "churn", "loss"])
    args = ap.parse_args()
    print(f"{args.nodes:,} nodes, seed {args.seed}, load average {load_average()}")
    ok = True
    docs = {}
    for scenario in args.scenarios:
        protocol = "both" if scenario == "inject" else "plumtree"
        doc = simulate("--nodes", str(args.nodes), "--seed", str(args.seed), "--scenario", scenario,
                       "--protocol", protocol)
        docs[scenario] = doc
        rows = [doc] + ([doc["baseline"]] if "baseline" in doc else [])
        for d in rows:
            figures = "  ".join(f"{f}={d.get(f)}" for f in FIELDS if f in d)
            print(f"{scenario:>9} {d['protocol']:>8}: convergence p50/p99/max {conv(d)} ms  {figures}")
        print(f"{'':>19}cpu {doc['cpu_s']} s, wall {doc['process_wall_s']} s, peak RSS {doc['child_peak_rss_mb']} MiB")
        good = doc["converged_fraction"] == 1.0 and doc["safety_violation"] is None
        if scenario == "inject":
            base = doc["baseline"]
            good = good and doc["max_hops"] <= 14 and doc["payload_copies_per_node"] <= 1.3
            good = good and base["bytes_per_node"] >= 3 * doc["bytes_per_node"]
        if scenario == "partition":
            good = good and doc["heal_ms"] is not None and doc["heal_ms"] <= 30_000
        if not good:
            print(f"{'':>19}MISSED a target; replay: {doc['reproduce']}")
        ok = ok and good
    record(f"sim_compare_{args.nodes}_{args.seed}", docs)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
