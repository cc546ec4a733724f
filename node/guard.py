"""Unauthenticated connections on the peer port: few, short, and capped in count.

A connection is *unauthenticated* from accept until a request on it carries a
frame header (or a link token) that opens under the fleet network key. Until
then it is counted in ``ConnectionGuard``, a sans-I/O table fed the time:

- at most ``MAX_UNAUTH_PER_SOURCE`` per source address, and
  ``MAX_UNAUTH_CONNECTIONS`` in all; a new connection past either cap evicts
  the oldest unauthenticated one (of its own source, or of the source holding
  the most), so a flood churns through its own connections while an honest
  peer, which authenticates within milliseconds of connecting, is never the
  oldest for long;
- each is closed ``UNAUTH_DEADLINE_S`` after it was accepted if it has not
  authenticated by then (idle sockets, slow headers, slow bodies).

An authenticated connection leaves the table; aiohttp's keep-alive timeout
(``KEEPALIVE_S`` in node/transport.py) closes it when idle. ``GuardedSite``
is the shell: a TCP site whose protocol factory reports accepts and closes to
the guard and aborts whatever the guard evicts or lets expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any, Callable, Hashable

from aiohttp import web

log = logging.getLogger("grapevine.node")

# An honest peer connects and sends its request with the frame header in one write: it is
# authenticated within one round trip (well under 100 ms even on a loaded box). 3 s leaves
# room for a stalled event loop on either side and still frees a flood's sockets fast.
UNAUTH_DEADLINE_S = 3.0
# Each unauthenticated connection can hold at most aiohttp's header and read buffers (tens
# of KiB); 64 of them bound a flood's memory to a few MiB, far more than honest churn needs
# (a node opens one POST connection per peer at a time, and reuses it).
MAX_UNAUTH_CONNECTIONS = 64
# Half the total: one address cannot take every slot. Agents that share an address (tests on
# loopback, NAT) share this, which is why eviction (not refusal) makes room for newcomers.
MAX_UNAUTH_PER_SOURCE = 32
SWEEP_S = 0.25  # how often expired connections are looked for (deadline precision)


class ConnectionGuard:
    """Unauthenticated connections by source, oldest first; decisions returned, never acted on."""

    def __init__(self, *, max_total: int = MAX_UNAUTH_CONNECTIONS, max_per_source: int = MAX_UNAUTH_PER_SOURCE,
                 deadline_s: float = UNAUTH_DEADLINE_S) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.deadline_s = deadline_s
        self._by_source: dict[str, OrderedDict[Hashable, float]] = {}
        self._source: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self._source)

    def opened(self, conn: Hashable, source: str, now: float) -> list[Hashable]:
        """Count a new connection; returns the connections to close to make room for it."""
        evict: list[Hashable] = []
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.max_per_source:
            evict.append(next(iter(mine)))
        elif len(self._source) >= self.max_total:
            busiest = max(self._by_source.values(), key=len)
            evict.append(next(iter(busiest)))
        for c in evict:
            self.forget(c)
        self._by_source.setdefault(source, OrderedDict())[conn] = now
        self._source[conn] = source
        return evict

    def forget(self, conn: Hashable) -> bool:
        """The connection authenticated or closed: it no longer counts. True if it was counted."""
        source = self._source.pop(conn, None)
        if source is None:
            return False
        conns = self._by_source[source]
        del conns[conn]
        if not conns:
            del self._by_source[source]
        return True

    def expired(self, now: float) -> list[Hashable]:
        """Connections past the deadline (no longer counted: the caller closes them)."""
        out = []
        for conns in list(self._by_source.values()):
            for conn, since in list(conns.items()):
                if now - since < self.deadline_s:
                    break  # oldest first: the rest are younger
                out.append(conn)
        for c in out:
            self.forget(c)
        return out


class _GuardedProtocol(asyncio.Protocol):
    """Wraps aiohttp's request handler: tells the guard when the connection opens and closes."""

    __slots__ = ("_inner", "_site", "transport")

    def __init__(self, inner: Any, site: GuardedSite) -> None:
        self._inner = inner
        self._site = site
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._site.on_open(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.on_close(self.transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are counted by a ``ConnectionGuard`` until they authenticate."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard,
                 on_evict: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard
        self._on_evict = on_evict  # called with "Evicted" or "Expired" per connection closed
        self._sweeper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._loop = loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: _GuardedProtocol(server(), self), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._sweeper = loop.create_task(self._sweep(), name="peer-port-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await super().stop()

    def on_open(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        assert self._loop is not None
        for old in self.guard.opened(transport, source, self._loop.time()):
            self._on_evict("Evicted")
            old.abort()  # type: ignore[attr-defined]

    def on_close(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self.guard.forget(transport)

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self.guard.forget(transport)

    async def _sweep(self) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(SWEEP_S)
            for conn in self.guard.expired(self._loop.time()):
                self._on_evict("Expired")
                conn.abort()  # type: ignore[attr-defined]
