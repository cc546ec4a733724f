"""Fixtures for daemon tests: a session's keys and a fleet of agent processes ended after each test."""

from __future__ import annotations

import pytest

from tests.node.agentproc import Fleet, Keys, make_keys


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
