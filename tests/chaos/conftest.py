"""Shared record of what the chaos and load tests ran, printed at the end of the run.

Each test adds its figures to ``chaos_record`` (seeds run, faults injected by
kind, invariant violations, orders lost or executed twice); the terminal
summary prints them, so a CI log shows what was exercised, not only "passed".
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

RECORD: dict[str, Any] = {
    "sim_seeds": [],
    "sim_faults": Counter(),
    "sim_violations": 0,
    "real": [],  # one line per real-process test
}


@pytest.fixture(scope="session")
def chaos_record() -> dict[str, Any]:
    return RECORD


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RECORD["sim_seeds"] and not RECORD["real"]:
        return
    tr = terminalreporter
    tr.section("chaos and load")
    if RECORD["sim_seeds"]:
        seeds = RECORD["sim_seeds"]
        tr.write_line(f"simulated chaos: {len(seeds)} seeds run ({', '.join(map(str, seeds))})")
        faults = ", ".join(f"{k} {v}" for k, v in sorted(RECORD["sim_faults"].items()))
        tr.write_line(f"faults injected: {faults}")
        tr.write_line(f"invariant violations: {RECORD['sim_violations']}")
    for line in RECORD["real"]:
        tr.write_line(line)
