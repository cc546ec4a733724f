"""Peer transport: sealed msgpack frames over aiohttp, links for the active view.

Wire shape. Every frame is sealed with the fleet network key (node/netkey.py)
and carries a plaintext *envelope* ``[1, sender_node_id, body]``. For gossip
messages ``body`` is the bytes of ``grapevine.gossip.codec.encode(msg)``; for
peer routes it is any msgpack value.

Paths on the peer HTTP port:

- ``GET  /v1/link``         WebSocket; the dialling node sends gossip frames, one
                             per WebSocket message (one link per direction per
                             active-view pair)
- ``POST /v1/gossip``       one gossip frame (joins to passive peers, shuffle replies, ...)
- ``POST /v1/peer/<name>``  a peer route: one frame in, one sealed frame back
- ``GET  /metrics``, ``GET /health``

A link is opened when the core reports ``PeerUp`` and closed on ``PeerDown``.
Sends to a peer with a link go down the link (one frame, no request); other
sends are POSTs. A link that closes, a connect that fails, a POST that fails
or times out, all become one ``on_send_failed(peer)`` call, so the core learns
of a dead peer at once.

Every refusal is counted by reason in ``grapevine_bad_frames`` and answered
with a 4xx: 413 too large, 400 not a frame / bad envelope / bad message,
403 a frame no installed key opens. Nothing refused reaches the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
import msgpack
from aiohttp import web

from grapevine.gossip.errors import ProtocolError
from grapevine.gossip.item import MAX_PAYLOAD_BYTES

from .metrics import AgentMetrics
from .netkey import SEAL_OVERHEAD, BadSeal, KeyRing

log = logging.getLogger("grapevine.node")

ENVELOPE_VERSION = 1
# One frame carries at most one full item (4 MiB payload) plus message framing;
# 512 KiB of headroom covers digests, signatures and the envelope.
MAX_FRAME_BYTES = MAX_PAYLOAD_BYTES + 512 * 1024
MAX_NODE_ID_LEN = 320  # "name@host:port": 63-char name + an IPv6 literal with brackets and port, generously
MAX_ROUTE_BODY_BYTES = 1024 * 1024  # peer-route bodies (run orders, results, queries) are small
LINK_QUEUE_FRAMES = 4096  # frames waiting on one link; a peer this far behind is treated as failed
MAX_POSTS_IN_FLIGHT = 64  # concurrent one-off POSTs; more wait their turn
DRAIN_POLL_S = 0.005  # how often drain() looks at the queues (a frame leaves in well under this)
LINK_BAD_FRAMES_CLOSE = 16  # a link that sent this many bad frames is closed

PeerMessageHandler = Callable[[str, bytes, int], None]  # (sender, body, frame_size)
SendFailedHandler = Callable[[str], None]
RouteHandler = Callable[[Any], Awaitable[Any] | Any]


def peer_address(node_id: str) -> str:
    """'name@host:port' -> 'host:port' (ProtocolError if there is no address)."""
    name, sep, addr = node_id.rpartition("@")
    if not sep or not name or not addr or ":" not in addr:
        raise ProtocolError(f"peer id {node_id!r} is not of the form name@host:port")
    return addr


class FrameRefused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


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
    ) -> None:
        self.node_id = node_id
        self.ring = ring
        self.metrics = metrics
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
        self.health: Callable[[], dict] = lambda: {"ok": True}
        self.closed = False

    # -- lifecycle ------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FRAME_BYTES)
        app.router.add_get("/v1/link", self._handle_link)
        app.router.add_post("/v1/gossip", self._handle_gossip)
        app.router.add_post("/v1/peer/{name:[A-Za-z0-9_./-]+}", self._handle_route)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/health", self._handle_health)
        return app

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
    def seal(self, body: Any) -> bytes:
        return self.ring.seal(msgpack.packb([ENVELOPE_VERSION, self.node_id, body], use_bin_type=True))

    def open(self, frame: bytes) -> tuple[str, Any]:
        """(sender, body) of a frame, or FrameRefused with status and metrics reason."""
        if not frame:
            raise FrameRefused(400, "Empty", "empty body")
        if len(frame) > MAX_FRAME_BYTES:
            raise FrameRefused(413, "TooLarge", f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
        try:
            plain = self.ring.open(frame)
        except BadSeal as exc:
            status = 400 if exc.reason == "NotAFrame" else 403
            raise FrameRefused(status, exc.reason, str(exc)) from None
        try:
            env = msgpack.unpackb(
                plain, raw=False, use_list=True, max_str_len=MAX_NODE_ID_LEN, max_bin_len=MAX_FRAME_BYTES,
                max_array_len=4096, max_map_len=4096, max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types
            raise FrameRefused(400, "BadEnvelope", f"envelope is not valid msgpack: {exc}") from None
        if not (isinstance(env, list) and len(env) == 3 and env[0] == ENVELOPE_VERSION and isinstance(env[1], str)):
            raise FrameRefused(400, "BadEnvelope", "envelope must be [1, sender, body]")
        try:
            peer_address(env[1])
        except ProtocolError as exc:
            raise FrameRefused(400, "BadEnvelope", str(exc)) from None
        return env[1], env[2]

    def _refuse(self, exc: FrameRefused, where: str, remote: str | None) -> None:
        self.metrics.bad_frames.labels(exc.reason).inc()
        log.warning("refused %s frame from %s: %s (%s)", where, remote or "?", exc.reason, exc)

    def _deliver(self, sender: str, body: Any, size: int) -> None:
        if not isinstance(body, bytes):
            raise FrameRefused(400, "BadEnvelope", "gossip frame body must be bytes")
        self._on_message(sender, body, size)  # raises FrameRefused(400, "BadMessage") on a bad message

    # -- server side ----------------------------------------------------
    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > MAX_FRAME_BYTES:
            raise FrameRefused(413, "TooLarge", f"body of {request.content_length} bytes exceeds {MAX_FRAME_BYTES}")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise FrameRefused(413, "TooLarge", f"body exceeds {MAX_FRAME_BYTES} bytes") from None

    async def _handle_gossip(self, request: web.Request) -> web.Response:
        try:
            frame = await self._read_body(request)
            sender, body = self.open(frame)
            self._deliver(sender, body, len(frame))
        except FrameRefused as exc:
            self._refuse(exc, "POST", request.remote)
            return web.json_response({"error": exc.reason, "detail": str(exc)}, status=exc.status)
        return web.Response(status=204)

    async def _handle_route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        handler = self.routes.get(name)
        if handler is None:
            self.metrics.bad_frames.labels("UnknownRoute").inc()
            return web.json_response({"error": "UnknownRoute", "detail": name}, status=404)
        try:
            frame = await self._read_body(request)
            if len(frame) > MAX_ROUTE_BODY_BYTES + SEAL_OVERHEAD + MAX_NODE_ID_LEN:
                raise FrameRefused(413, "TooLarge", f"peer route body exceeds {MAX_ROUTE_BODY_BYTES} bytes")
            sender, body = self.open(frame)
        except FrameRefused as exc:
            self._refuse(exc, f"route {name}", request.remote)
            return web.json_response({"error": exc.reason, "detail": str(exc)}, status=exc.status)
        self.metrics.messages_in.labels(f"route:{name}").inc()
        self.metrics.bytes_in.labels(f"route:{name}").inc(len(frame))
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
        out = self.seal(result)
        self.metrics.bytes_out.labels(f"route:{name}").inc(len(out))
        return web.Response(body=out, content_type="application/octet-stream")

    async def _handle_link(self, request: web.Request) -> web.StreamResponse:
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
                        self._deliver(sender, body, len(msg.data))
                    except FrameRefused as exc:
                        self._refuse(exc, "link", request.remote)
                        bad += 1
                        if bad >= LINK_BAD_FRAMES_CLOSE:
                            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"too many bad frames")
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
        frame = self.seal(body)
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

    async def request(self, address: str, name: str, body: Any, timeout_s: float | None = None) -> tuple[str, Any]:
        """POST ``body`` to peer route ``name`` at ``address`` (HOST:PORT); returns (responder id, response body)."""
        assert self._session is not None
        frame = self.seal(body)
        if len(frame) > MAX_ROUTE_BODY_BYTES + SEAL_OVERHEAD + MAX_NODE_ID_LEN:
            raise ProtocolError(f"peer route body of {len(frame)} bytes exceeds {MAX_ROUTE_BODY_BYTES}")
        self.metrics.messages_out.labels(f"route:{name}").inc()
        self.metrics.bytes_out.labels(f"route:{name}").inc(len(frame))
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.send_timeout_s)
        async with self._session.post(
            f"http://{address}/v1/peer/{name}", data=frame, timeout=timeout,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise ProtocolError(f"peer route {name} at {address} answered {resp.status}: {data[:200]!r}")
        try:
            return self.open(data)
        except FrameRefused as exc:
            raise ProtocolError(f"peer route {name} at {address}: bad answer: {exc}") from None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
