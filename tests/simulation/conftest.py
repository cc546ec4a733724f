"""Helpers for the simulator tests: small fleets, fixed seeds, short phases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from grapevine.simulation.runner import SimParams

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 240  # one simulate invocation of the suite never takes this long


def small(**overrides: Any) -> SimParams:
    """Parameters of a quick run: phases shortened, everything else default."""
    base: dict[str, Any] = dict(nodes=300, seed=7, scenario="inject", settle_ms=3_000, idle_ms=6_000,
                                partition_ms=15_000, budget_ms=60_000)
    base.update(overrides)
    return SimParams(**base)


def run_cli(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    """Run ``grapevine simulate`` in a fresh interpreter (bounded in time)."""
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run(
        [sys.executable, "-m", "grapevine.cli.main", "simulate", *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, env=env, cwd=REPO,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def params():
    """Factory of quick-run parameters: ``params(scenario="churn", nodes=1000)``."""
    return small
