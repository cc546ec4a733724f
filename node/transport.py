"""Peer transport: sealed, node-signed msgpack frames over aiohttp, links for the active view.

Wire shape. Every frame is sealed with the fleet network key (node/netkey.py:
a 50-byte authenticated header, then the body) and carries an envelope signed
with the sender's node key (node/frames.py), checked against the key pinned
for the sender's name (node/pins.py). For gossip messages the envelope body is
``grapevine.gossip.codec.encode(msg)``; for peer routes it is msgpack.

Paths on the peer HTTP port:

- ``GET  /v1/link``         WebSocket, opened only for a request carrying a link token
                             (``X-Grapevine-Link``: a sealed, signed, fresh frame addressed
                             to this node); the dialling node then sends gossip frames, one
                             per WebSocket message (one link per direction per active-view pair)
- ``POST /v1/gossip``       one gossip frame (joins to passive peers, shuffle replies, ...)
- ``POST /v1/peer/<name>``  a peer route: one frame in, one sealed frame back
- ``GET  /health``; ``GET /metrics`` only with the ``peer_metrics`` setting

Spend nothing on a stranger. A request is read 50 bytes at a time until it
proves the fleet key: the frame header is read (within the guard's deadline),
opened, and only then is the body read, up to the size the header declares and
the route allows, within a read timeout. Bodies are never inflated
(``Content-Encoding`` is refused; the server does not decompress), a request
without ``Content-Length`` is refused, and a refused request's connection is
closed without reading the rest. Unauthenticated connections are counted and
capped (node/guard.py).

A link is opened when the core reports ``PeerUp`` and closed on ``PeerDown``.
Sends to a peer with a link go down the link (one frame, no request); other
sends are POSTs. A link that closes, a connect that fails, a POST that fails
or times out, all become one ``on_send_failed(peer)`` call, so the core learns
of a dead peer at once.

Every refusal is a ``FrameRefused`` (a ``ProtocolError``), counted by reason in
``grapevine_bad_frames``, logged (at most once per reason every
``REFUSAL_LOG_EVERY_S``, with the count in between) and answered with a 4xx:
413 too large, 411 no length, 415 compressed, 408 too slow, 400 not a frame /
bad envelope / bad message, 401 no link token, 403 a frame no installed key
opens, a bad node signature, a changed node key, a wrong destination. Nothing
refused reaches the core.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import msgpack
from aiohttp import web

from grapevine.gossip.errors import ProtocolError
from grapevine.policy.keys import SigningKey

from .frames import (
    FRAME_HEADER_BYTES, LINK_TOKEN_HEADER, MAX_FRAME_BYTES, MAX_LINK_TOKEN_BYTES, MAX_NODE_ID_LEN,
    MAX_ROUTE_ANSWER_BYTES, MAX_ROUTE_BODY_BYTES, MAX_ROUTE_FRAME_BYTES, Envelope, FrameRefused, LinkTokens,
    link_token_body, pack_envelope, unpack_envelope, unpack_route_body,
)
from .guard import UNAUTH_DEADLINE_S, ConnectionGuard, GuardedSite
from .metrics import AgentMetrics
from .netkey import BadSeal, KeyRing
from .pins import Pins

log = logging.getLogger("grapevine.node")

__all__ = ["Transport", "FrameRefused", "LINK_TOKEN_HEADER", "MAX_FRAME_BYTES", "MAX_NODE_ID_LEN",
           "MAX_ROUTE_BODY_BYTES", "peer_address", "frame_sender"]

LINK_QUEUE_FRAMES = 4096  # frames waiting on one link; a peer this far behind is treated as failed
MAX_POSTS_IN_FLIGHT = 64  # concurrent one-off POSTs; more wait their turn
DRAIN_POLL_S = 0.005  # how often drain() looks at the queues (a frame leaves in well under this)
LINK_BAD_FRAMES_CLOSE = 16  # a link that sent this many bad (but authenticated) frames is closed
# Refusals that mean "not a fleet member" (or a member lying about who it is): a link closes at the first.
AUTH_REASONS = frozenset({"NotAFrame", "Unsealed", "UnknownNetworkKey", "BadSeal", "BadEnvelope", "BadNodeSignature",
                          "NodeKeyChanged", "WrongDestination", "SenderMismatch"})
# Once authenticated, a body must keep arriving: a base allowance plus 1 MiB/s, so the largest frame
# (9 MiB) gets 19 s, and a key holder trickling bytes cannot hold a connection for long.
BODY_READ_BASE_S = 10.0
BODY_READ_MIN_BYTES_PER_S = 1024 * 1024
# aiohttp server limits on the peer port. Keep-alive: an honest client (aiohttp's connector keeps
# idle connections 15 s) reuses its connection; an idle authenticated one is closed after this.
KEEPALIVE_S = 30.0
MAX_REQUEST_LINE = 1024  # "POST /v1/peer/<route> HTTP/1.1"; aiohttp's default is 8190
MAX_HEADER_FIELD = 4096  # the largest header is the link token (MAX_LINK_TOKEN_BYTES in base64)
MAX_HEADERS = 24  # aiohttp's client sends about 8 (10 with a WebSocket upgrade)
REFUSAL_LOG_EVERY_S = 10.0  # a flood of refusals is logged once per reason per window, with the count

PeerMessageHandler = Callable[[str, bytes, int], None]  # (sender, body, frame_size)
SendFailedHandler = Callable[[str], None]
RouteHandler = Callable[[Any], Awaitable[Any] | Any]

# The authenticated sender of the peer-route request being handled (node id), for route handlers.
frame_sender: contextvars.ContextVar[str | None] = contextvars.ContextVar("frame_sender", default=None)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def peer_address(node_id: str) -> str:
    """'name@host:port' -> 'host:port' (ProtocolError if there is no address)."""
    name, sep, addr = node_id.rpartition("@")
    if not sep or not name or not addr or ":" not in addr:
        raise ProtocolError(f"peer id {node_id!r} is not of the form name@host:port")
    return addr


@dataclass(slots=True)
class _Link:
    peer: str
    queue: asyncio.Queue
    task: asyncio.Task | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    closing: bool = False


class Transport:
    def __init__(
        self,
        *,
        node_id: str,
        ring: KeyRing,
        metrics: AgentMetrics,
        on_message: PeerMessageHandler,
        on_send_failed: SendFailedHandler,
        send_timeout_s: float = 5.0,
        heartbeat_s: float = 5.0,
        node_key: SigningKey | None = None,
        pins: Pins | None = None,
        serve_metrics: bool = False,
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.node_id = node_id
        self.ring = ring
        self.metrics = metrics
        self.node_key = node_key or SigningKey.generate()
        self.pins = pins if pins is not None else Pins(on_change=lambda name: metrics.node_key_changes.inc())
        self.pins.pin_self(node_id, self.node_key.public, now_ms())
        self.serve_metrics = serve_metrics
        self.guard = guard or ConnectionGuard()
        self._on_message = on_message
        self._on_send_failed = on_send_failed
        self.send_timeout_s = send_timeout_s
        self.heartbeat_s = heartbeat_s
        self.routes: dict[str, RouteHandler] = {}
        self.sender_routes: set[str] = set()  # routes whose handler takes (sender, body): the frame's sender
        self.links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task] = set()
        self._post_slots = asyncio.Semaphore(MAX_POSTS_IN_FLIGHT)
        self._session: aiohttp.ClientSession | None = None
        self._server_ws: set[web.WebSocketResponse] = set()
        self._site: GuardedSite | None = None
        self._link_tokens = LinkTokens()
        self._refusal_log: dict[str, tuple[float, int]] = {}
        self.health: Callable[[], dict] = lambda: {"ok": True}
        self.closed = False

    # -- lifecycle ------------------------------------------------------
    def make_app(self) -> web.Application:
        # nothing on this port reads a body through aiohttp's buffering: client_max_size only
        # bounds what a handler written by mistake with request.read() could take
        app = web.Application(client_max_size=FRAME_HEADER_BYTES)
        app.router.add_get("/v1/link", self._handle_link)
        app.router.add_post("/v1/gossip", self._handle_gossip)
        app.router.add_post("/v1/peer/{name:[A-Za-z0-9_./-]+}", self._handle_route)
        if self.serve_metrics:
            app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/health", self._handle_health)
        return app

    def make_runner(self, *, shutdown_timeout: float) -> web.AppRunner:
        """The peer port's runner: no decompression, no lingering reads, small header limits."""
        return web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
            auto_decompress=False, lingering_time=0, keepalive_timeout=KEEPALIVE_S,
            max_line_size=MAX_REQUEST_LINE, max_field_size=MAX_HEADER_FIELD, max_headers=MAX_HEADERS,
        )

    def make_site(self, runner: web.AppRunner, host: str, port: int, **kwargs: Any) -> GuardedSite:
        self._site = GuardedSite(runner, host, port, guard=self.guard, on_evict=self._on_evict, **kwargs)
        return self._site

    def _on_evict(self, why: str) -> None:
        self.metrics.strangers_closed.labels(why).inc()
        self._log_refusal(why, "connection", None, f"unauthenticated connection closed ({why})")

    def _authenticated(self, request: web.Request) -> None:
        if self._site is not None:
            self._site.authenticated(request.transport)

    async def __aenter__(self) -> Transport:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.send_timeout_s),
            connector=aiohttp.TCPConnector(limit=MAX_POSTS_IN_FLIGHT * 2, force_close=False),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every link and wait (bounded by the caller) for in-flight sends."""
        self.closed = True
        for link in list(self.links.values()):
            link.closing = True
            if link.task:
                link.task.cancel()
        if self._server_ws:
            closing = [ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown") for ws in list(self._server_ws)]
            await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=self.send_timeout_s)
        pending = [t for t in self._tasks if not t.done()] + [l.task for l in self.links.values() if l.task]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self.links.clear()
        if self._session is not None:
            await self._session.close()

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for queued link frames and POSTs to go out."""
        deadline = time.monotonic() + timeout_s
        while True:
            busy = any(not l.queue.empty() for l in self.links.values()) or any(not t.done() for t in self._tasks)
            if not busy or time.monotonic() >= deadline:
                return
            await asyncio.sleep(DRAIN_POLL_S)

    # -- frames ---------------------------------------------------------
    def seal(self, body: bytes, dest: str = "") -> bytes:
        """A frame carrying ``body`` (bytes) to ``dest`` (a node id, or "" for route requests and answers)."""
        return self.ring.seal(pack_envelope(self.node_key, self.node_id, dest, body))

    def check_envelope(self, plain: bytes, dests: tuple[str, ...]) -> Envelope:
        """Decode an opened frame's envelope and authenticate its sender (pinned node key)."""
        env = unpack_envelope(plain)
        if env.dest not in dests:
            raise FrameRefused(403, "WrongDestination", f"frame from {env.sender} is addressed to {env.dest!r}, not to this node")
        self.pins.check(env, now_ms())
        return env

    def open(self, frame: bytes, dests: tuple[str, ...] | None = None) -> tuple[str, bytes]:
        """(sender, body) of a whole frame in memory, or FrameRefused with status and metrics reason."""
        if not frame:
            raise FrameRefused(400, "Empty", "empty body")
        if len(frame) > MAX_FRAME_BYTES:
            raise FrameRefused(413, "TooLarge", f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
        try:
            plain = self.ring.open(frame)
        except BadSeal as exc:
            raise FrameRefused(400 if exc.reason == "NotAFrame" else 403, exc.reason, str(exc)) from None
        env = self.check_envelope(plain, dests if dests is not None else (self.node_id,))
        return env.sender, env.body

    def _log_refusal(self, reason: str, where: str, remote: str | None, detail: str) -> None:
        now = time.monotonic()
        last, suppressed = self._refusal_log.get(reason, (0.0, 0))
        if now - last < REFUSAL_LOG_EVERY_S:
            self._refusal_log[reason] = (last, suppressed + 1)
            return
        self._refusal_log[reason] = (now, 0)
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        log.warning("refused %s from %s: %s (%s)%s", where, remote or "?", reason, detail, more)

    def _refuse(self, exc: FrameRefused, where: str, remote: str | None) -> None:
        self.metrics.bad_frames.labels(exc.reason).inc()
        self._log_refusal(exc.reason, f"{where} frame", remote, str(exc))

    def _deliver(self, sender: str, body: bytes, size: int) -> None:
        self._on_message(sender, body, size)  # raises FrameRefused(400, "BadMessage") on a bad message

    # -- server side ----------------------------------------------------
    async def _read_frame(self, request: web.Request, cap: int, dests: tuple[str, ...]) -> tuple[Envelope, int]:
        """Header first, authenticate, then the body: nothing beyond 50 bytes is read from a stranger."""
        coding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise FrameRefused(415, "CompressedBody", f"Content-Encoding {coding[:40]!r} refused on the peer port")
        size = request.content_length
        if size is None:
            raise FrameRefused(411, "NoLength", "a frame needs a Content-Length (chunked bodies are refused)")
        if size > cap:
            raise FrameRefused(413, "TooLarge", f"body of {size} bytes exceeds {cap}")
        if size < FRAME_HEADER_BYTES:
            raise FrameRefused(400, "NotAFrame", f"body of {size} bytes is shorter than a frame header")
        content = request.content
        try:
            header = await asyncio.wait_for(content.readexactly(FRAME_HEADER_BYTES), UNAUTH_DEADLINE_S)
        except asyncio.TimeoutError:
            raise FrameRefused(408, "SlowBody", f"frame header not sent within {UNAUTH_DEADLINE_S} s") from None
        except (asyncio.IncompleteReadError, aiohttp.ClientPayloadError, ConnectionError) as exc:
            raise FrameRefused(400, "Truncated", f"frame header cut short: {type(exc).__name__}") from None
        try:
            head = self.ring.open_header(header)
        except BadSeal as exc:
            raise FrameRefused(400 if exc.reason == "NotAFrame" else 403, exc.reason, str(exc)) from None
        self._authenticated(request)  # proved the fleet key: no longer a stranger's connection
        if FRAME_HEADER_BYTES + head.body_bytes != size:
            raise FrameRefused(400, "LengthMismatch", f"frame header says {head.body_bytes} bytes of body, "
                                                      f"Content-Length {size - FRAME_HEADER_BYTES}")
        try:
            body = await asyncio.wait_for(content.readexactly(head.body_bytes),
                                          BODY_READ_BASE_S + size / BODY_READ_MIN_BYTES_PER_S)
        except asyncio.TimeoutError:
            raise FrameRefused(408, "SlowBody", f"frame body of {size} bytes not sent in time") from None
        except (asyncio.IncompleteReadError, aiohttp.ClientPayloadError, ConnectionError) as exc:
            raise FrameRefused(400, "Truncated", f"frame body cut short: {type(exc).__name__}") from None
        try:
            plain = self.ring.open_body(head, body)
        except BadSeal as exc:
            raise FrameRefused(403, exc.reason, str(exc)) from None
        del body
        return self.check_envelope(plain, dests), size

    def _refusal_response(self, exc: FrameRefused) -> web.Response:
        resp = web.json_response({"error": exc.reason, "detail": str(exc)[:300]}, status=exc.status)
        resp.force_close()  # whatever was not read stays unread
        return resp

    async def _handle_gossip(self, request: web.Request) -> web.Response:
        try:
            env, size = await self._read_frame(request, MAX_FRAME_BYTES, (self.node_id,))
            self._deliver(env.sender, env.body, size)
        except FrameRefused as exc:
            self._refuse(exc, "POST", request.remote)
            return self._refusal_response(exc)
        return web.Response(status=204)

    async def _handle_route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        handler = self.routes.get(name)
        if handler is None:
            exc = FrameRefused(404, "UnknownRoute", f"no peer route {name[:64]!r}")
            self._refuse(exc, "route", request.remote)
            return self._refusal_response(exc)
        try:
            env, size = await self._read_frame(request, MAX_ROUTE_FRAME_BYTES, ("", self.node_id))
            body = unpack_route_body(env.body)
        except FrameRefused as exc:
            self._refuse(exc, f"route {name}", request.remote)
            return self._refusal_response(exc)
        sender = env.sender
        self.metrics.messages_in.labels(f"route:{name}").inc()
        self.metrics.bytes_in.labels(f"route:{name}").inc(size)
        token = frame_sender.set(sender)
        try:
            result = handler(sender, body) if name in self.sender_routes else handler(body)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
        except ProtocolError as exc:
            self.metrics.bad_frames.labels("BadRouteBody").inc()
            return web.json_response({"error": "BadRouteBody", "detail": str(exc)}, status=400)
        except Exception:
            log.exception("peer route %s from %s failed", name, sender)
            return web.json_response({"error": "RouteFailed"}, status=500)
        finally:
            frame_sender.reset(token)
        out = self.seal(msgpack.packb(result, use_bin_type=True))
        self.metrics.bytes_out.labels(f"route:{name}").inc(len(out))
        return web.Response(body=out, content_type="application/octet-stream")

    def link_token(self, peer: str) -> str:
        """The header value that opens a link to ``peer``: a fresh frame addressed to it."""
        return base64.b64encode(self.seal(link_token_body(now_ms()), peer)).decode("ascii")

    def _check_link_token(self, request: web.Request) -> str:
        text = request.headers.get(LINK_TOKEN_HEADER)
        if not text:
            raise FrameRefused(401, "NoLinkToken", f"a link needs a {LINK_TOKEN_HEADER} header")
        if len(text) > (MAX_LINK_TOKEN_BYTES * 4) // 3 + 4:
            raise FrameRefused(413, "TooLarge", "link token too long")
        try:
            frame = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FrameRefused(400, "NotAFrame", "link token is not base64") from None
        try:
            plain = self.ring.open(frame)
        except BadSeal as exc:
            raise FrameRefused(400 if exc.reason == "NotAFrame" else 403, exc.reason, str(exc)) from None
        env = self.check_envelope(plain, (self.node_id,))
        self._link_tokens.admit(env, now_ms())
        return env.sender

    async def _handle_link(self, request: web.Request) -> web.StreamResponse:
        try:
            link_sender = self._check_link_token(request)
        except FrameRefused as exc:
            self._refuse(exc, "link", request.remote)
            return self._refusal_response(exc)
        self._authenticated(request)
        # the dialling side pings every heartbeat_s; this side only needs to notice a vanished dialler
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=self.heartbeat_s * 3, timeout=self.send_timeout_s)
        await ws.prepare(request)
        self._server_ws.add(ws)
        bad = 0
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        sender, body = self.open(msg.data)
                        if sender != link_sender:
                            raise FrameRefused(403, "SenderMismatch", f"frame as {sender} on {link_sender}'s link")
                        self._deliver(sender, body, len(msg.data))
                    except FrameRefused as exc:
                        self._refuse(exc, "link", request.remote)
                        bad += 1
                        if exc.reason in AUTH_REASONS or bad >= LINK_BAD_FRAMES_CLOSE:
                            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=exc.reason.encode())
                            break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    exc = ws.exception()
                    if getattr(exc, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                        self._refuse(FrameRefused(413, "TooLarge", str(exc)), "link", request.remote)
                    else:  # the dialling side went away (missed pongs, reset): not a bad frame
                        log.debug("incoming link from %s ended: %s", request.remote, exc)
                    break
                else:
                    self._refuse(FrameRefused(400, "NotAFrame", f"{msg.type.name} message on a link"), "link", request.remote)
                    bad += 1
        finally:
            self._server_ws.discard(ws)
        return ws

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        body = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": self.metrics.content_type})

    async def _handle_health(self, request: web.Request) -> web.Response:
        doc = self.health()
        return web.json_response(doc, status=200 if doc.get("ok") else 503)

    # -- client side ----------------------------------------------------
    def send(self, peer: str, body: bytes, type_name: str) -> None:
        """Queue one gossip message body to ``peer``: down its link if it has one, else a POST."""
        if self.closed:
            return
        frame = self.seal(body, peer)
        msgs, nbytes = self.metrics.outbound(type_name)
        msgs.inc()
        nbytes.inc(len(frame))
        link = self.links.get(peer)
        if link is not None and not link.closing:
            if link.queue.qsize() >= LINK_QUEUE_FRAMES:
                log.warning("link to %s is %d frames behind; closing it", peer, LINK_QUEUE_FRAMES)
                self._fail_link(link)
                return
            link.queue.put_nowait(frame)
            return
        self._spawn(self._post(peer, frame))

    def open_link(self, peer: str) -> None:
        if self.closed or peer == self.node_id:
            return
        old = self.links.get(peer)
        if old is not None and not old.closing:
            return
        link = _Link(peer=peer, queue=asyncio.Queue())
        self.links[peer] = link
        link.task = asyncio.get_running_loop().create_task(self._run_link(link), name=f"link:{peer}")
        self.metrics.links.set(len(self.links))

    def close_link(self, peer: str) -> None:
        """Close a link after the frames already queued on it are sent."""
        link = self.links.get(peer)
        if link is None:
            return
        link.closing = True
        link.queue.put_nowait(None)  # sentinel: the writer closes when it reaches it

    def _fail_link(self, link: _Link) -> None:
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            self.metrics.links.set(len(self.links))
        if not link.closing:
            link.closing = True
            if link.task and link.task is not asyncio.current_task():
                link.task.cancel()
            self.metrics.send_failures.labels("link").inc()
            if not self.closed:
                self._on_send_failed(link.peer)

    async def _run_link(self, link: _Link) -> None:
        assert self._session is not None
        url = f"http://{peer_address(link.peer)}/v1/link"
        reader: asyncio.Task | None = None
        try:
            link.ws = await self._session.ws_connect(
                url, heartbeat=self.heartbeat_s, max_msg_size=MAX_FRAME_BYTES,
                headers={LINK_TOKEN_HEADER: self.link_token(link.peer)},
                timeout=aiohttp.ClientWSTimeout(ws_close=self.send_timeout_s),
            )
            reader = asyncio.get_running_loop().create_task(self._read_link(link))
            while True:
                getter = asyncio.ensure_future(link.queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break  # the link closed under us
                frame = getter.result()
                if frame is None:
                    await link.ws.close()
                    if self.links.get(link.peer) is link:
                        del self.links[link.peer]
                        self.metrics.links.set(len(self.links))
                    return
                await link.ws.send_bytes(frame)
        except asyncio.CancelledError:
            if link.ws is not None and not link.ws.closed:
                await asyncio.shield(link.ws.close())
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
            log.info("link to %s failed: %s", link.peer, exc or type(exc).__name__)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
        if link.ws is not None and not link.ws.closed:
            await link.ws.close()
        self._fail_link(link)

    async def _read_link(self, link: _Link) -> None:
        assert link.ws is not None
        async for _msg in link.ws:
            pass  # the dialled side never writes; reading drives pongs and close frames

    async def _post(self, peer: str, frame: bytes) -> None:
        assert self._session is not None
        try:
            url = f"http://{peer_address(peer)}/v1/gossip"
            async with self._post_slots:
                async with self._session.post(url, data=frame, headers={"Content-Type": "application/octet-stream"}) as resp:
                    if resp.status >= 400:
                        text = (await resp.text())[:200]
                        raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=text)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ProtocolError) as exc:
            log.debug("send to %s failed: %s", peer, exc or type(exc).__name__)
            self.metrics.send_failures.labels("post").inc()
            if not self.closed:
                self._on_send_failed(peer)

    async def request(self, address: str, name: str, body: Any, timeout_s: float | None = None,
                      dest: str = "") -> tuple[str, Any]:
        """POST ``body`` to peer route ``name`` at ``address`` (HOST:PORT); returns (responder id, response body).

        With ``dest`` (a node id) the frame is addressed to that node and the answer must come from it."""
        assert self._session is not None
        frame = self.seal(msgpack.packb(body, use_bin_type=True), dest)
        if len(frame) > MAX_ROUTE_FRAME_BYTES:
            raise ProtocolError(f"peer route body of {len(frame)} bytes exceeds {MAX_ROUTE_BODY_BYTES}")
        self.metrics.messages_out.labels(f"route:{name}").inc()
        self.metrics.bytes_out.labels(f"route:{name}").inc(len(frame))
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.send_timeout_s)
        async with self._session.post(
            f"http://{address}/v1/peer/{name}", data=frame, timeout=timeout,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            size = resp.content_length
            if resp.status != 200 or size is None or size > MAX_ROUTE_ANSWER_BYTES:
                data = await resp.content.read(400)
                raise ProtocolError(f"peer route {name} at {address} answered {resp.status} "
                                    f"({size} bytes): {data[:200]!r}")
            data = await resp.content.readexactly(size)
        try:
            sender, answer = self.open(data, ("", self.node_id))
        except FrameRefused as exc:
            raise ProtocolError(f"peer route {name} at {address}: bad answer: {exc.reason}: {exc}") from None
        if dest and sender != dest:
            raise ProtocolError(f"peer route {name} at {address}: answered by {sender}, not by {dest}")
        try:
            return sender, unpack_route_body(answer)
        except FrameRefused as exc:
            raise ProtocolError(f"peer route {name} at {address}: bad answer: {exc}") from None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
