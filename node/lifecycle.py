"""Lifecycle helpers of the daemon: background loops, the data-dir lock, the node key file."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable

from grapevine.gossip.errors import ConfigError
from grapevine.policy.keys import SigningKey

log = logging.getLogger("grapevine.node")


def take_lock(path: Path) -> int:
    """An exclusive lock on the data dir (ConfigError when another agent holds it); returns its descriptor."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"data_dir: another agent is running on {path.parent}") from None
    return fd


def load_node_key(path: Path) -> SigningKey:
    """The node key in ``path``, created on first start."""
    if path.exists():
        return SigningKey.load(path)
    key = SigningKey.generate()
    key.save(path)
    log.info("created node key %s in %s", key.key_id, path)
    return key


class GracefulExit(Exception):
    """SIGTERM or SIGINT arrived: leave the mesh and stop."""


class Background:
    """An async context manager around one long-running loop task."""

    def __init__(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.fn = fn
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Background:
        self.task = asyncio.get_running_loop().create_task(self._guard(), name=self.name)
        return self

    async def _guard(self) -> None:
        try:
            await self.fn()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s died", self.name)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is None:
            return
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


