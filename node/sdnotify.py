"""systemd's notify protocol: readiness, stopping and watchdog pings.

A service of ``Type=notify`` tells systemd how it is doing by sending
newline-separated ``KEY=VALUE`` lines in one datagram to the AF_UNIX socket
named by ``$NOTIFY_SOCKET``. A name that starts with ``@`` is in the
abstract namespace (the ``@`` stands for a leading NUL byte). With
``WatchdogSec=`` in the unit, systemd sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``) and restarts the service when no ``WATCHDOG=1`` arrives
within that interval; the agent pings at half of it.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing, so the
agent needs no flag to run in a terminal or a test. A failed send is logged
once and never stops the agent: systemd's own timeouts report a service that
could not say it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping

log = logging.getLogger("grapevine.node")

MAX_DATAGRAM = 4096  # our messages are a few bytes; systemd reads up to PIPE_BUF-ish datagrams


def socket_address(name: str) -> bytes | None:
    """The sockaddr path for $NOTIFY_SOCKET: a file path, or '@name' for the abstract namespace."""
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name.encode()
    return None  # systemd only ever sets an absolute path or an abstract name


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of $WATCHDOG_USEC), or None when no watchdog is asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # the watchdog is meant for another process (a parent that started us)
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends notify messages to systemd; a no-op outside it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = watchdog_interval_s(env, os.getpid()) if self.address else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram with ``fields`` as lines; True when it was handed to the socket."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"notify message of {len(data)} bytes is over {MAX_DATAGRAM}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(data, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notify socket %r: %s", self.address, exc.strerror or exc)
            return False

    def ready(self, status: str = "") -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.send(*fields)

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=draining")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping at half the watchdog interval for as long as the event loop runs it (a stuck loop stops pinging)."""
        if self.watchdog_s is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_s)
