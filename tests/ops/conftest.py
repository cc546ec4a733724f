"""Fixtures for the operator-facing tests: real agents from the local launcher."""

from __future__ import annotations

import pytest

from grapevine.cli.localfleet import FAST_ENV, FleetKeys, LocalFleet


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> FleetKeys:
    return FleetKeys.create(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def fleet(tmp_path, keys):
    """Agents with the tests' short intervals (FAST_ENV); each joins only what it is told to."""
    f = LocalFleet(tmp_path, keys=keys, preset=None, env=FAST_ENV)
    try:
        yield f
    finally:
        f.close(grace=0)  # SIGKILL, by PID: the tests are done with them
