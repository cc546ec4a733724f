"""The local API: an aiohttp app on a Unix socket (mode 0600) that the CLI talks to.

Only the agent's owner can open the socket, so the API carries no
authentication of its own; anything that changes the mesh still needs an
author's signature (the CLI signs on the operator's side).

Routes (JSON in and out unless noted):

    GET  /v1/status                     node state, "stale since <time>" when the mesh went quiet
    GET  /v1/members                    active and passive views, open links
    GET  /v1/bundles                    every stored bundle: version, target, targeted here, applied
    GET  /v1/history?name=NAME          every accepted version of bundle NAME
    GET  /v1/item?key=K&version=V       one stored version (base64 of the packed item)
    POST /v1/inject                     body: a packed SignedItem (application/octet-stream)
    POST /v1/converge                   {"bundles": [...], "dry_run": false} -> report
    GET  /v1/reports?limit=N            recent converge reports
    GET  /v1/netkeys                    installed network keys, which one is in use
    POST /v1/netkeys/install            {"key": base64, "use": false}
    POST /v1/netkeys/use                {"key_id": ...}
    POST /v1/netkeys/remove             {"key_id": ...}

Services add routes with ``Agent.add_api_route`` (into ``ApiLink.routes``);
they are looked up at request time, so they may be added before or after the
server starts. The API gets an ``ApiLink``, never the agent.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from grapevine.gossip.errors import ConfigError, GrapevineError, Reason
from grapevine.gossip.item import SignedItem, Version
from grapevine.policy import runorder

from .netkey import KEY_BYTES

if TYPE_CHECKING:
    from .keystore import NetworkKeys

log = logging.getLogger("grapevine.node")

MAX_API_BODY = 8 * 1024 * 1024  # one packed item (4 MiB payload) with room to spare
# ...or a preview order, which carries its candidate bundles and travels hex-encoded in /v1/run
MAX_API_BODY = max(MAX_API_BODY, 2 * runorder.MAX_PREVIEW_ORDER_BYTES + 64 * 1024)


def _error(status: int, error: Reason | str, detail: str) -> web.Response:
    """The local API's one error document: ``error`` is a ``Reason``, the word metrics and logs use."""
    return web.json_response({"error": Reason(error), "detail": detail}, status=status)


async def _json_body(request: web.Request) -> dict:
    try:
        doc = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "BadRequest", "detail": "body must be JSON"}', content_type="application/json")
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text='{"error": "BadRequest", "detail": "body must be a JSON object"}', content_type="application/json")
    return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiLink:
    """What the local API reads and calls: the agent builds it from bound methods, and nothing else is reachable."""

    node_id: str
    facts: dict
    state: Any  # node/state.py: applied, history, get_version, reports
    netkeys: NetworkKeys
    status: Callable[[], dict]
    members: Callable[[], dict]
    bundles: Callable[[], list]
    targeted_bundles: Callable[[], list]
    stored_item: Callable[[str], SignedItem | None]
    publish: Callable[[SignedItem], tuple[bool, str, str]]
    converge_now: Callable[..., Awaitable[dict]]
    routes: dict[tuple[str, str], Callable] = field(default_factory=dict)  # routes services add (runs)


def make_api_app(host: ApiLink) -> web.Application:
    app = web.Application(client_max_size=MAX_API_BODY)

    async def status(request: web.Request) -> web.Response:
        return web.json_response(host.status())

    async def members(request: web.Request) -> web.Response:
        return web.json_response(host.members())

    async def bundles(request: web.Request) -> web.Response:
        from grapevine.policy.bundle import Bundle

        applied = host.state.applied()
        targeted = {b.name for b, _ in host.targeted_bundles()}
        rows = []
        for name, version, is_applied in host.bundles():
            item = host.stored_item("bundle/" + name)
            try:
                target = Bundle.decode(item.payload).target if item else None
            except GrapevineError:
                target = None
            a = applied.get(name)
            rows.append({
                "name": name, "version": str(version), "author": version.author, "target": target,
                "targeted": name in targeted, "applied": is_applied,
                "applied_version": str(a[0]) if a else None, "applied_ok": a[2] if a else None,
                "applied_ms": a[1] if a else None,
            })
        return web.json_response({"node": host.node_id, "bundles": rows})

    async def history(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        key = name if name.startswith(("bundle/", "trust/")) else "bundle/" + name
        entries = host.state.history(key)
        if not entries:
            return _error(404, "NotFound", f"no versions of {key} are stored on {host.node_id}")
        return web.json_response({
            "key": key,
            "versions": [
                {"index": i + 1, "version": str(e.version), "author": e.version.author,
                 "wall_ms": e.version.wall_ms, "accepted_ms": e.accepted_ms, "source": e.source,
                 "size": e.size, "current": e.current}
                for i, e in enumerate(entries)
            ],
        })

    async def item(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        try:
            version = Version.parse(request.query.get("version", ""))
        except ConfigError as exc:
            return _error(400, "BadRequest", str(exc))
        found = host.state.get_version(key, version)
        if found is None:
            return _error(404, "NotFound", f"{key} version {version} is not stored here")
        return web.json_response({"key": key, "version": str(version), "item": base64.b64encode(found.encode()).decode()})

    async def inject(request: web.Request) -> web.Response:
        data = await request.read()
        try:
            signed = SignedItem.decode(data)
        except GrapevineError as exc:
            return _error(400, exc.reason, str(exc))
        accepted, reason, detail = host.publish(signed)
        if not accepted:
            status = 409 if reason == "Stale" else 422
            return _error(status, reason, detail or f"{signed.key} was refused")
        return web.json_response({"accepted": True, "key": signed.key, "version": str(signed.version), "node": host.node_id})

    async def converge(request: web.Request) -> web.Response:
        doc = await _json_body(request) if request.can_read_body else {}
        names = doc.get("bundles") or None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            return _error(400, "BadRequest", "bundles must be a list of names")
        target = doc.get("target")
        if target:
            from grapevine.policy import selectors

            if not selectors.matches(str(target), host.facts):
                return web.json_response({
                    "node": host.node_id, "changed": 0, "unchanged": 0, "failed": 0, "skipped": 0,
                    "resources": [], "skipped_reason": f"this node does not match {target!r}",
                })
        report = await host.converge_now(names, dry_run=bool(doc.get("dry_run")), trigger="api")
        return web.json_response(report)

    async def reports(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(200, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "BadRequest", "limit must be an integer")
        return web.json_response({"reports": [
            {"id": r.id, "at_ms": r.at_ms, "trigger": r.trigger, "bundles": r.bundles, "ok": r.ok, "report": r.report}
            for r in host.state.reports(limit)
        ]})

    def _keys_doc() -> dict:
        return {"node": host.node_id, "keys": host.netkeys.doc()}

    async def netkeys(request: web.Request) -> web.Response:
        return web.json_response(_keys_doc())

    async def netkey_install(request: web.Request) -> web.Response:
        doc = await _json_body(request)
        try:
            key = base64.b64decode(str(doc.get("key", "")), validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "BadRequest", "key must be base64")
        if len(key) != KEY_BYTES:
            return _error(400, "BadRequest", f"key must be {KEY_BYTES} bytes")
        kid = host.netkeys.install(key, use=bool(doc.get("use")))
        return web.json_response({**_keys_doc(), "installed": kid})

    async def netkey_use(request: web.Request) -> web.Response:
        doc = await _json_body(request)
        try:
            host.netkeys.use(str(doc.get("key_id", "")))
        except ConfigError as exc:
            return _error(404, "UnknownKey", str(exc))
        return web.json_response(_keys_doc())

    async def netkey_remove(request: web.Request) -> web.Response:
        doc = await _json_body(request)
        kid = str(doc.get("key_id", ""))
        try:
            host.netkeys.remove(kid)
        except ConfigError as exc:
            code = 404 if "not installed" in str(exc) else 409
            return _error(code, "UnknownKey" if code == 404 else "KeyInUse", str(exc))
        return web.json_response(_keys_doc())

    builtin: dict[tuple[str, str], Any] = {
        ("GET", "/v1/status"): status,
        ("GET", "/v1/members"): members,
        ("GET", "/v1/bundles"): bundles,
        ("GET", "/v1/history"): history,
        ("GET", "/v1/item"): item,
        ("POST", "/v1/inject"): inject,
        ("POST", "/v1/converge"): converge,
        ("GET", "/v1/reports"): reports,
        ("GET", "/v1/netkeys"): netkeys,
        ("POST", "/v1/netkeys/install"): netkey_install,
        ("POST", "/v1/netkeys/use"): netkey_use,
        ("POST", "/v1/netkeys/remove"): netkey_remove,
    }

    async def dispatch(request: web.Request) -> web.StreamResponse:
        key = (request.method, request.path)
        handler = builtin.get(key) or host.routes.get(key)
        if handler is None:
            return _error(404, "NotFound", f"no API route {request.method} {request.path}")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except GrapevineError as exc:
            return _error(400, exc.reason, str(exc))
        except Exception as exc:
            log.exception("API %s %s failed", request.method, request.path)
            return _error(500, "InternalError", f"{type(exc).__name__}: {exc}")

    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
