"""Shared helper of the sim_*.py benchmarks: run ``grapevine simulate`` in a fresh process.

Each run gets its own interpreter, so ``peak_rss_mb`` is that run's alone,
and the child's CPU seconds are measured next to its wall seconds (on a
busy machine the wall clock says more about the neighbours than about us).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
RUN_TIMEOUT_S = 3_600  # one simulation never needs an hour; bounded all the same


def simulate(*args: str) -> dict[str, Any]:
    """Run one simulation; return its JSON document plus cpu_s and process_wall_s."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "grapevine.cli.main", "simulate", "--json", *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not proc.stdout.strip():
        raise SystemExit(f"simulate {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr}")
    doc = json.loads(proc.stdout)
    doc["exit_code"] = proc.returncode
    doc["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)
    doc["process_wall_s"] = round(wall, 1)
    doc["child_peak_rss_mb"] = round(after.ru_maxrss / 1024, 1)
    return doc


def record(name: str, payload: Any) -> Path:
    """Keep the raw documents under benchmarks/out/ (not versioned)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
