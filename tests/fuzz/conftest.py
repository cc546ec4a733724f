"""Collects fuzz figures during the run and prints them at the end of the session."""

from __future__ import annotations

import pytest


# target -> {"inputs": n, "seconds": s, "status": code, "finding": kind or None}
FUZZ_REPORT: dict[str, dict] = {}


@pytest.fixture(scope="session")
def fuzz_report() -> dict[str, dict]:
    return FUZZ_REPORT


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FUZZ_REPORT:
        return
    tr = terminalreporter
    tr.section("fuzz inputs per target")
    total = 0
    for name in sorted(FUZZ_REPORT):
        r = FUZZ_REPORT[name]
        total += r["inputs"]
        verdict = "clean" if r["finding"] is None else f"FINDING: {r['finding']}"
        tr.write_line(f"{name:<18} {r['inputs']:>7} inputs in {r['seconds']:>6.1f} s  {verdict}")
    tr.write_line(f"{'total':<18} {total:>7} inputs")
