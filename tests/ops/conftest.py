"""Fixtures for the operator-facing tests: real agents from the daemon tests' process helpers."""

from __future__ import annotations


import pytest


from tests.node.agentproc import Fleet, Keys, make_keys  # noqa: E402


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
