"""Fixtures for daemon tests: a session's keys and a fleet of agent processes ended after each test."""

from __future__ import annotations

import sys

import pytest

from tests.node import agentproc
from tests.node.agentproc import Fleet, Keys, make_keys

# Tests on branches written before the tests became a package import this directory's helpers by
# bare name (`from agentproc import ...`, with the directory put on sys.path). This alias keeps them
# working without touching sys.path; remove it once no test imports the bare name.
sys.modules.setdefault("agentproc", agentproc)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def fleet(tmp_path, keys):
    f = Fleet(tmp_path, keys)
    try:
        yield f
    finally:
        f.close()
