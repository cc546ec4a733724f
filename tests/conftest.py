"""The whole suite: what makes a test slow, and the fast tier's size and time at the end of a run.

Two tiers. ``pytest -m "not slow"`` is the inner loop; the full suite (the
README's test command) runs everything. A test is slow when it starts real
agent processes, fuzzes, runs a many-seed simulation or otherwise spends
seconds of CPU. Tests say so with ``@pytest.mark.slow``. Tests that get it
through a fixture (the agent meshes, the fuzz run, the chaos sweep) are
marked here, so a new test lands in the right tier by using the fixture; so
are the files and the few single tests listed below.
"""

from __future__ import annotations

import time

import pytest

SLOW_FIXTURES = {
    "fleet": "agent processes (tests/node)",
    "mesh": "a mesh of agent processes (tests/runs)",
    "world": "agent processes and a hostile peer (tests/hostile)",
    "fuzz_results": "a coverage-guided fuzz run of every decoder",
    "sweep": "a five-seed chaos sweep in the simulator",
}
SLOW_TESTS = {  # single tests that take seconds of CPU each (node id, parametrized variants included)
    "tests/simulation/test_baseline.py::test_random_push_reaches_everyone_in_pittels_number_of_rounds":
        "rounds of push gossip over 10,000 simulated nodes",
    "tests/policy/test_resources.py::test_pip_package_is_installed_into_the_virtualenv_and_removed":
        "a real pip install into a virtualenv",
    "tests/runs/test_executor.py::test_commands_never_close_a_descriptor_another_thread_opened":
        "hundreds of commands started from several threads",
    "tests/simulation/test_cli.py::test_same_seed_gives_the_same_json_in_fresh_processes":
        "the simulator in two fresh interpreters",
}
SLOW_FILES = {  # every test in these starts agent processes, some without one of the fixtures above
    "tests/runs/test_demo.py": "runs `grapevine demo`, which starts its own agents",
    "tests/runs/test_runs.py": "runs on a mesh of agent processes",
    "tests/runs/test_fleet_cli.py": "the fleet commands against a mesh of agent processes",
    "tests/hostile/test_hostile_node.py": "a hostile peer among agent processes",
    "tests/node/test_scope_agents.py": "grants and conflicts on agent processes (its own fixture)",
    "tests/hostile/test_flood.py": "a flood of strangers at agent processes (its own fixture)",
}


def _relpath(item: pytest.Item) -> str:
    return item.path.relative_to(item.config.rootpath).as_posix()


TIER: dict = {}  # the fast tier of this run: sizes, ids, time spent in it


def pytest_sessionstart(session: pytest.Session) -> None:
    TIER["t0"] = time.monotonic()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        by_fixture = SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ()))
        if by_fixture or _relpath(item) in SLOW_FILES or item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    fast_ids = {item.nodeid for item in items if item.get_closest_marker("slow") is None}
    TIER.update(collected=len(items), fast_ids=fast_ids, fast_s=0.0, ran_fast=0)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid in TIER.get("fast_ids", ()):
        TIER["fast_s"] += report.duration
        TIER["ran_fast"] += report.when == "call"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if "fast_ids" not in TIER:
        return
    wall = time.monotonic() - TIER["t0"]
    terminalreporter.write_line(
        f"fast tier: {len(TIER['fast_ids'])} of {TIER['collected']} tests (not marked slow: "
        f'pytest -m "not slow"); {TIER["ran_fast"]} of them ran here, in {TIER["fast_s"]:.1f} s '
        f"of this run's {wall:.1f} s")
