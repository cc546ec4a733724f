"""The hostile node as a mesh member: a real aiohttp server on loopback that honest agents link to.

It joins through an honest agent under its own id, so it sits in active views
and receives broadcasts. It answers Pings and Neighbor requests like an
honest peer and grafts every announcement, so it is never dropped. Then it
lies: every run-discovery query it sees is answered in the name of every
honest node, with the hostile's own key, and every run order it is sent
(as a target that answered for itself) is met with results forged for every
honest node, signed with that key.

Runs in a thread with its own event loop; ``start`` and ``stop`` are bounded.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import msgpack
from aiohttp import web

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.node.transport import peer_address
from grapevine.policy.runorder import RunResult, SignedOrder, SignedResult
from tests.hostile.hostile_peer import open_answer

START_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 5.0
OWN_RESULT_TRIES = 20  # 0.1 s apart: the origin answers "retry" until it has read the order reply


class HostileServer:
    def __init__(self, peer, port: int, honest_ids: list[str], *, lie: bool = True, replay_orders: bool = False) -> None:
        self.peer = peer  # HostilePeer: network key, node key, frame sealing
        self.port = port
        self.honest_ids = list(honest_ids)
        self.lie = lie  # answer discovery in honest nodes' names too, and forge their results
        self.replay_orders = replay_orders  # post every order it is sent on to every honest node at once
        self.replayed: list[Any] = []  # honest nodes' replies to replayed orders
        self.own_replies: list[Any] = []  # the origin's replies to the hostile's result for itself
        self.queries: list[str] = []  # discovery query ids seen
        self.forged_answers = 0
        self.orders: list[str] = []  # run ids of orders sent to the hostile
        self.forged_results: list[tuple[str, dict]] = []  # (node claimed, origin's reply)
        self.heard: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle (called from the test thread) ----------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hostile-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("hostile server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_S)

    def call(self, coro, timeout: float = SEND_TIMEOUT_S * 2) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/v1/link", self._link)
        app.router.add_post("/v1/gossip", self._gossip)
        app.router.add_post("/v1/peer/{name}", self._route)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S))
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._session.close()
            await runner.cleanup()

    # -- sending ------------------------------------------------------------
    async def send(self, node_id: str, msg: m.Message) -> None:
        try:
            async with self._session.post(f"http://{peer_address(node_id)}/v1/gossip",
                                          data=self.peer.frame(codec.encode(msg), dest=node_id)) as resp:
                await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, RuntimeError):
            pass  # the peer is gone or the hostile is shutting down: nothing to lie to

    async def request(self, node_id: str, route: str, body: Any) -> Any:
        async with self._session.post(f"http://{peer_address(node_id)}/v1/peer/{route}",
                                      data=self.peer.route_frame(body)) as resp:
            data = await resp.read()
            if resp.status != 200:
                return {"http": resp.status}
        return open_answer(self.peer.ring, data)

    async def join(self, contact: str) -> None:
        await self.send(contact, m.Join())

    # -- receiving ----------------------------------------------------------
    def _open(self, frame: bytes) -> tuple[str, Any]:
        env = msgpack.unpackb(self.peer.ring.open(frame), raw=False)  # [2, sender, key, dest, body, sig]
        return env[1], env[4]

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                sender, body = self._open(msg.data)
                await self._on_message(sender, codec.decode(body))
        return ws

    async def _gossip(self, request: web.Request) -> web.Response:
        sender, body = self._open(await request.read())
        await self._on_message(sender, codec.decode(body))
        return web.Response(status=204)

    async def _on_message(self, sender: str, msg: m.Message) -> None:
        self.heard.add(sender)
        if isinstance(msg, m.Ping):
            asyncio.ensure_future(self.send(sender, m.Pong()))
        elif isinstance(msg, m.Neighbor):
            asyncio.ensure_future(self.send(sender, m.NeighborReply(accepted=True)))
        elif isinstance(msg, m.IHave):
            asyncio.ensure_future(self.send(sender, m.Graft(msg_ids=tuple(i for i, _ in msg.entries))))
        elif isinstance(msg, m.Ephemeral):
            kind, body = msgpack.unpackb(msg.payload, raw=False)
            if kind == "query" and isinstance(body, dict):
                asyncio.ensure_future(self._lie_about_query(body))

    async def _lie_about_query(self, body: dict) -> None:
        """Answer the origin in every honest node's name (and its own), all with the hostile's key."""
        self.queries.append(body["q"])
        pk = self.peer.node_key.public.raw
        names = (self.honest_ids if self.lie else []) + [self.peer.node_id]
        sends = [self.request(body["o"], "query.answer", {"q": body["q"], "n": n, "pk": pk, "i": {}})
                 for n in names if n != body["o"]]
        for r in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(r, dict) and r.get("ok"):
                self.forged_answers += 1

    async def _route(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        sender, raw = self._open(await request.read())
        body = msgpack.unpackb(raw, raw=False)
        if name == "hello":
            answer: Any = {"id": self.peer.node_id}
        elif name == "run.order":
            signed = SignedOrder.from_wire(body.get("order"))
            self.orders.append(signed.order.run_id)
            asyncio.ensure_future(self._forge_results(signed))
            answer = {"ok": True, "pk": self.peer.node_key.public.raw}  # what an honest node's reply carries
        else:  # a key or status question: answer with the hostile's own key, as if it were anyone
            answer = {"ok": True, "n": self.peer.node_id, "pk": self.peer.node_key.public.raw}
        return web.Response(body=self.peer.route_frame(answer), content_type="application/octet-stream")

    async def _forge_results(self, signed: SignedOrder) -> None:
        order = signed.order
        if self.replay_orders:  # the genuine order, to every honest node, ahead of the origin's batches
            sends = [self.request(n, "run.order", {"order": signed.to_wire()}) for n in self.honest_ids]
            self.replayed += await asyncio.gather(*sends, return_exceptions=True)
        for node in self.honest_ids if self.lie else []:
            if node == order.origin:
                continue
            lie = RunResult(run_id=order.run_id, node=node, exit_code=0, stdout=b"forged\n", stderr=b"", duration_ms=1)
            try:
                reply = await self.request(order.origin, "run.result", SignedResult.sign(lie, self.peer.node_key).to_wire())
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                reply = {"error": str(exc)}
            self.forged_results.append((node, reply))
        # its own result, so the run does not wait out the timeout for it (withholding it only delays)
        own = RunResult(run_id=order.run_id, node=self.peer.node_id, exit_code=0, stdout=b"", stderr=b"", duration_ms=1)
        for _ in range(OWN_RESULT_TRIES):  # the origin may ask for it again once it has the order reply
            try:
                reply = await self.request(order.origin, "run.result", SignedResult.sign(own, self.peer.node_key).to_wire())
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                reply = {"error": str(exc)}
            self.own_replies.append(reply)
            if not (isinstance(reply, dict) and reply.get("retry")):
                break
            await asyncio.sleep(0.1)  # a pause between retries, as a real node backs off (not a wait in a test)
