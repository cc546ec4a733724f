"""The daemon tests' names for the local launcher (``grapevine.cli.localfleet``).

New tests use ``LocalFleet`` directly. These names stay, delegating to it,
for tests still written against them: ``Fleet(base, keys)`` starts agents
with the short test intervals (``FAST_ENV``), no gossip preset flag and no
join unless given, ``Fleet.start`` waits until the agents answer, and
``Fleet.close`` SIGKILLs every agent at once, by PID.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from grapevine.cli.client import AgentClient  # noqa: F401 - re-exported
from grapevine.cli.localfleet import (  # noqa: F401 - re-exported
    FAST_ENV,
    READY_TIMEOUT_S as START_TIMEOUT_S,
    FleetKeys as Keys,
    LocalAgent,
    LocalFleet,
    free_ports,
    wait_for,
)


def wait_until(pred, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    return wait_for(pred, timeout, what, interval)


def make_keys(d: Path) -> Keys:
    return Keys.create(d)


class AgentProc(LocalAgent):
    """A LocalAgent whose command line is fixed when it is declared, in ``argv``, which tests may edit."""

    argv: list[str]

    @property
    def sock(self) -> str:
        return self.socket

    def command(self) -> list[str]:
        return self.argv


class Fleet(LocalFleet):
    """A ``LocalFleet`` with the daemon tests' defaults; ``make`` declares, ``start`` starts and waits."""

    agent_class = AgentProc

    def __init__(self, base: Path, keys: Keys, python: str = sys.executable) -> None:
        super().__init__(base, keys=keys, preset=None, env=FAST_ENV, python=python)

    def make(self, name: str, port: int, *, join: list[str] = (), tags: dict[str, str] | None = None,
             host: str = "127.0.0.1", netkey: Path | None | str = "default", netns: str | None = None,
             env: dict[str, str] | None = None, extra: list[str] = ()) -> AgentProc:
        agent = self.add(name, port=port, join=list(join), tags=tags, host=host, netkey=netkey, netns=netns,
                         env=env, extra=extra)
        agent.argv = self.argv(agent)
        return agent

    def start(self, *agents: LocalAgent) -> None:
        self.up(*agents)

    def close(self, grace: float = 0) -> None:
        super().close(grace)


def write_bundle(path: Path, name: str, target: str | None, files: dict[str, str]) -> Path:
    """A policy file with one bundle managing ``files`` (absolute path -> content)."""
    import yaml

    path.write_text(yaml.safe_dump(_bundle_doc(name, target, files)))
    return path


def pack_bundle(keys: Keys, name: str, target: str | None, files: dict[str, str], now_ms: int | None = None):
    from grapevine.policy.bundle import Bundle, pack

    return pack(Bundle.from_document(_bundle_doc(name, target, files), "test"), keys.author_key,
                now_ms or time.time_ns() // 1_000_000)


def _bundle_doc(name: str, target: str | None, files: dict[str, str]) -> dict:
    doc: dict[str, Any] = {"bundle": name, "resources": [{"file": p, "content": c} for p, c in files.items()]}
    if target:
        doc["target"] = target
    return doc
