"""The local API routes of push-style runs: the NDJSON run stream, fleet queries, stats, run history.

    GET  /v1/run/origin        {"node_id", "now_ms"}: the id an order must name as its origin
    POST /v1/run               {"order": hex, "batch", "max_failures"} -> NDJSON events, then "done"
    POST /v1/fleet/query       {"kind": "status"|"run"|"runs", "selector"} -> {"answers", "discovery_ms", "origin"}
    GET  /v1/run/stats         refusals by reason, runs in progress
    GET  /v1/runs/history      ?limit=N: this node's run audit trail {"runs": [...]}, newest first
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from grapevine.gossip.errors import ConfigError, GrapevineError, Reason
from grapevine.policy import runorder
from grapevine.policy.runorder import RunRefused, SignedOrder

from .runexec import dumps, jsonable

if TYPE_CHECKING:
    from .runs import RunService

log = logging.getLogger("grapevine.node")


def _refused(exc: Exception) -> web.Response:
    """A refused local request: ``{"error": Reason, "detail": ...}`` like every local API error."""
    reason = exc.reason if isinstance(exc, GrapevineError) else Reason.BAD_REQUEST
    return web.json_response({"error": reason, "detail": str(exc)}, status=400)

HISTORY_DEFAULT = 100  # rows `history --runs` shows without --limit
HISTORY_MAX = 10_000  # rows one request may ask for: the retention bound


class RunApi:
    def __init__(self, svc: RunService) -> None:
        self.svc = svc

    async def origin(self, request: web.Request) -> web.Response:
        return web.json_response({"node_id": self.svc.me, "now_ms": self.svc.wall()})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"refusals": dict(self.svc.refusals), "active_runs": len(self.svc._runs)})

    async def history(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(HISTORY_MAX, int(request.query.get("limit", str(HISTORY_DEFAULT)))))
        except ValueError:
            return web.json_response({"error": Reason.BAD_REQUEST, "detail": "limit must be an integer"}, status=400)
        return web.json_response({"node": self.svc.me, "runs": self.svc.store.run_history(limit)})

    async def query(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
            kind, sel = str(req.get("kind") or "status"), str(req.get("selector") or "")
            answer = await self.svc.fleet_query(kind, sel)
        except (ValueError, GrapevineError) as exc:
            return _refused(exc)
        return web.json_response(answer)

    async def run(self, request: web.Request) -> web.StreamResponse:
        svc = self.svc
        try:
            req = await request.json()
            signed = SignedOrder.decode(bytes.fromhex(req["order"]))
            batch = runorder.BatchSize.parse(req.get("batch"))
            max_failures = req.get("max_failures")
            if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 0):
                raise ConfigError("max_failures must be a non-negative integer")
            runorder.check_order(signed, root=svc.root(), now_ms=svc.wall(), facts=None)
            if signed.order.origin != svc.me:
                raise RunRefused("WrongOrigin", f"order is for origin {signed.order.origin}, this is {svc.me}")
            if svc.running(signed.order.run_id):
                raise RunRefused("Replayed", f"run {signed.order.run_id} is already in progress")
        except (ValueError, KeyError, TypeError, GrapevineError) as exc:
            log.warning("run request refused: %s", exc)
            return _refused(exc)
        live = svc.open_run(signed)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(dumps({"event": "accepted", "run_id": signed.order.run_id, "origin": svc.me}))
        task = asyncio.ensure_future(svc.run(live, batch=batch, max_failures=max_failures))
        try:
            while True:
                getter = asyncio.ensure_future(live.events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await resp.write(dumps(getter.result()))
                    continue
                getter.cancel()
                while not live.events.empty():
                    await resp.write(dumps(live.events.get_nowait()))
                await resp.write(dumps({"event": "done", "summary": task.result()}))
                break
        except Exception as exc:  # the client went away or the run failed: end it here
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                log.error("run %s failed: %s", signed.order.run_id, task.exception())
                try:
                    await resp.write(dumps({"event": "error", "detail": str(task.exception())}))
                except Exception:
                    pass
            log.info("run %s stream ended early: %s", signed.order.run_id, exc)
        finally:
            svc.end_run(signed.order.run_id)
        try:
            await resp.write_eof()
        except Exception:
            pass
        return resp
