"""Collects fuzz figures during the run and prints them at the end of the session."""

from __future__ import annotations

import sys

import pytest

from tests.fuzz import fuzz_targets

# Tests on branches written before the tests became a package import this directory's helpers by
# bare name (`from fuzz_targets import ...`, with the directory put on sys.path). This alias keeps them
# working without touching sys.path; remove it once no test imports the bare name.
sys.modules.setdefault("fuzz_targets", fuzz_targets)

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
