"""Fleet preview: the whole `inject --preview` beside a plain converge run order, and the aggregation alone.

    python benchmarks/bench_preview.py [--nodes 8] [--repeat 5] [--out benchmarks/RESULTS-preview.md]

Real agents on loopback (``LocalFleet``, production "lan" preset) all hold
bundle bench/site (one small file). Timed as whole processes, alternating so
background load hits each alike:

- ``preview-small``: ``inject site.yaml --preview --json`` of a changed version
  of that bundle (a few hundred bytes travel in each order);
- ``preview-512k``: the same with a 512 KiB file attached to the candidate
  (each order carries it to every node: what the larger order cap allows);
- ``run-converge``: ``run --converge bench/site --json``, a converge run order
  of the stored bundle (nothing to change), the run machinery the preview reuses.

Then the pure aggregation (policy/preview.py ``aggregate`` + ``render``) of
1,000 and 10,000 synthetic node plans (three shared changes, 5% unique, 1%
failed). Medians go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

FILE = "/etc/bench/site.conf"


def timed(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, res.returncode, res.stdout + res.stderr


def aggregation_ms(n: int, repeat: int) -> float:
    from grapevine.policy import preview as plans

    def row(diff: str) -> dict:
        return {"id": "file:" + FILE, "bundle": "bench/site", "status": "changed", "change": "content",
                "diff": diff, "diff_sha": plans.diff_sha(diff), "error": ""}

    shared = [f"--- {FILE}\n+++ {FILE}\n-old{i}\n+new\n" for i in range(3)]
    node_plans, failures = {}, {}
    for i in range(n):
        name = f"node-{i:05d}"
        if i % 100 == 0:
            failures[name] = "unreachable: timeout"
        elif i % 20 == 1:
            node_plans[name] = {"targeted": ["bench/site"], "refused": [], "error": "", "resources": [row(f"-x{i}\n+new\n")]}
        else:
            node_plans[name] = {"targeted": ["bench/site"], "refused": [], "error": "", "resources": [row(shared[i % 3])]}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        plans.render(plans.aggregate(list(node_plans) + list(failures), node_plans, failures))
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from grapevine.cli.localfleet import LocalFleet, wait_for

    work = Path(tempfile.mkdtemp(prefix="gvbench-preview-"))
    site = {"bundle": "bench/site", "resources": [{"file": FILE, "content": "v1\n"}]}
    small = work / "small.yaml"
    small.write_text(yaml.safe_dump({**site, "resources": [{"file": FILE, "content": "v2\n"}]}))
    large = work / "large.yaml"
    large.write_text(yaml.safe_dump({**site, "resources": [{"file": FILE, "content": "v2\n"},
                                                           {"file": "/etc/bench/blob", "content": "x" * (512 * 1024)}]}))
    results: dict[str, list[float]] = {"preview-small": [], "preview-512k": [], "run-converge": []}
    with LocalFleet(work / "mesh", preset="lan") as mesh:
        for i in range(args.nodes):
            mesh.add(f"p{i}", tags={"role": "bench"})
        mesh.start()
        mesh.wait_ready(timeout=180)
        mesh.wait_linked(timeout=180)
        mesh.inject(mesh.agents[0], site)
        wait_for(lambda: all(mesh.applied(a, "bench/site") for a in mesh.agents), 120, "bench/site applied")
        time.sleep(3)
        base = [sys.executable, "-m", "grapevine.cli.main"]
        via = ["--agent", mesh.agents[0].socket, "--key", str(mesh.keys.author), "--json"]
        cmds = {"preview-small": base + ["inject", str(small), "--preview"] + via,
                "preview-512k": base + ["inject", str(large), "--preview"] + via,
                "run-converge": base + ["run", "--converge", "bench/site"] + via}
        for r in range(args.repeat + 1):
            for name, cmd in cmds.items():
                t, code, out = timed(cmd)
                doc = json.loads(out.split("\n", 1)[0]) if out.startswith("{") else {}
                got = len(doc.get("targets") or ())
                if code != 0 or got != args.nodes:
                    raise SystemExit(f"{name}: exit {code}, {got} targets:\n{out[-1500:]}")
                if r > 0:  # the first round opens the agents' connections to the origin
                    results[name].append(t)
                print(f"  {name} round {r}: {t:.3f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    agg = {n: aggregation_ms(n, args.repeat) for n in (1000, 10_000)}
    lines = [f"# Fleet preview ({args.nodes} agents on loopback, {args.repeat} rounds, medians)", "",
             f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"load average at the end {os.getloadavg()[0]:.1f} (other developers' tests share the machine)", "",
             "| command (whole process) | median s |", "|---|---|"]
    lines += [f"| {k} | {statistics.median(v):.3f} |" for k, v in results.items()]
    lines += ["", "| aggregate + render, synthetic plans | median ms |", "|---|---|"]
    lines += [f"| {n:,} nodes | {ms:.1f} |" for n, ms in agg.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
