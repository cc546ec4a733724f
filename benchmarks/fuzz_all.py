"""Longer coverage-guided fuzzing of every decoder of outside bytes or text.

    python benchmarks/fuzz_all.py [--seconds 60] [--runs -1] [--seed 1] [--jobs 2] [--out fuzz.json] [TARGET ...]

Same targets and harness as the test suite (tests/fuzz/fuzz_targets.py,
tests/fuzz/atheris_main.py), with a time budget per target instead of the
suite's 20,000 inputs. Prints one row per target (inputs, seconds, inputs
per second, corpus size, finding) and, with ``--out``, writes them as JSON.
A finding prints the saved input (base64) and the end of the fuzzer's log;
replay it with ``fuzz_targets.check_one``. Exit status 1 if any target had a
finding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "fuzz" / "atheris_main.py"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--seconds", type=int, default=60, help="budget per target")
    ap.add_argument("--runs", type=int, default=-1, help="inputs per target (-1: until the budget is spent)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=10, help="per-input bound in seconds")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--keep", help="keep corpora and findings in this directory")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="grapevine-fuzz-all-"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(RUNNER), str(work), "--runs", str(args.runs), "--seconds", str(args.seconds),
           "--seed", str(args.seed), "--timeout", str(args.timeout), "--jobs", str(args.jobs), *args.targets]
    print(f"# fuzz_all: seed {args.seed}, {args.seconds} s per target, {args.jobs} at a time, "
          f"per-input bound {args.timeout} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          flush=True)
    print(f"{'target':<18} {'inputs':>9} {'seconds':>8} {'inputs/s':>9} {'corpus':>7}  finding", flush=True)
    t0 = time.monotonic()
    rows = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            corpus = work / r["target"] / "corpus"
            r["corpus"] = len(list(corpus.iterdir())) if corpus.is_dir() else 0
            rate = r["inputs"] / r["seconds"] if r["seconds"] else 0.0
            kind = r["finding"]["kind"] if r["finding"] else "none"
            print(f"{r['target']:<18} {r['inputs']:>9} {r['seconds']:>8.1f} {rate:>9.0f} {r['corpus']:>7}  {kind}", flush=True)
            if r["finding"]:
                print(f"  input (base64): {r['finding']['input_b64']}\n  " +
                      "\n  ".join(r["finding"]["log"].splitlines()[-15:]), flush=True)
            rows.append(r)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    total = sum(r["inputs"] for r in rows)
    print(f"{'total':<18} {total:>9} {time.monotonic() - t0:>8.1f}", flush=True)
    if args.out:
        doc = {"seed": args.seed, "seconds_per_target": args.seconds, "jobs": args.jobs, "python": platform.python_version(),
               "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "targets": rows}
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 1 if any(r["finding"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
