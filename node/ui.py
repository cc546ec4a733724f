"""The fleet web page: ``grapevine agent --ui HOST:PORT`` (off by default).

One read-only page, served by the agent on the address it is told, with
everything it needs shipped in the package (``static/``: HTML, CSS,
JavaScript; nothing is loaded from elsewhere). The page asks ``/api/fleet``
every few seconds; that answer is the same fleet status query as
``grapevine status --fleet`` (a discovery broadcast answered by every node,
summarised by ``node/fleetview.py``) plus this agent's own status and
members. Rollouts and the run audit trail are shown when the fleet status
carries them (``rollouts``, ``runs``); the page says so when it does not.

Only GET routes exist, so nothing can be changed through it; at most one
fleet query is in flight and an answer is reused for ``MIN_QUERY_S``, so
many open pages cost the mesh one query every few seconds. There is no
login: bind it to loopback or a management address.

Imported only when ``ui`` is set, so an agent without the page does not
load it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from grapevine.gossip.errors import ConfigError

from .config import parse_hostport
from .fleetview import summarize

log = logging.getLogger("grapevine.node")

STATIC = Path(__file__).with_name("static")
ASSETS = {"ui.js": "application/javascript", "ui.css": "text/css"}
MIN_QUERY_S = 2.0  # fleet answers are reused this long, however many pages ask
QUERY_TIMEOUT_S = 15.0  # discovery ends within 8 s; a query that takes longer is reported as failed
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class UiLink:
    """What the page reads from the agent: a fleet status query, this node's status and links."""

    fleet_query: Callable[[str, str], Awaitable[dict]]
    status: Callable[[], dict]
    members: Callable[[], dict]
    rollouts: Callable[[], list] = lambda: []  # recent staged rollouts from the replicated records


def ui_link(agent: Any) -> UiLink:
    """The page's port, built from the agent's run service (fleet queries) and its status calls."""
    runs = next((ext for ext in agent.extensions if hasattr(ext, "fleet_query")), None)

    async def fleet_query(kind: str, selector: str) -> dict:
        if runs is None:
            raise ConfigError("this agent answers no fleet queries (push-style runs are not installed)")
        return await runs.fleet_query(kind, selector)

    rollouts = getattr(agent, "rollouts", None)
    recent = (lambda: rollouts.recent(agent.node.store.items())) if rollouts is not None else (lambda: [])
    return UiLink(fleet_query=fleet_query, status=agent.status, members=agent.members, rollouts=recent)


class FleetPage:
    """The page's data source: one shared fleet query at a time, its answer kept for MIN_QUERY_S."""

    def __init__(self, link: UiLink) -> None:
        self.link = link
        self._lock = asyncio.Lock()
        self._doc: dict | None = None
        self._at = 0.0

    async def _query(self) -> dict:
        return summarize(await asyncio.wait_for(self.link.fleet_query("status", ""), QUERY_TIMEOUT_S))

    async def document(self) -> dict:
        async with self._lock:
            if self._doc is None or time.monotonic() - self._at >= MIN_QUERY_S:
                try:
                    fleet, error = await self._query(), None
                except Exception as exc:  # the page shows the error and keeps the last answer it had
                    log.info("fleet page: fleet query failed: %s", exc or type(exc).__name__)
                    fleet, error = (self._doc or {}).get("fleet"), str(exc) or type(exc).__name__
                if isinstance(fleet, dict):
                    try:
                        fleet = {**fleet, "rollouts": self.link.rollouts()}
                    except Exception:  # the list is extra: the page works without it
                        log.exception("fleet page: rollouts not listed")
                self._doc = {
                    "generated_ms": _now_ms(),
                    "fleet": fleet,
                    "error": error,
                    "local": self.link.status(),
                    "links": self.link.members(),
                }
                self._at = time.monotonic()
            return self._doc


def make_ui_app(link: UiLink) -> web.Application:
    page = FleetPage(link)

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html",
                            charset="utf-8", headers=HEADERS)

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name], charset="utf-8",
                            headers=HEADERS)

    async def fleet(request: web.Request) -> web.Response:
        return web.json_response(await page.document(), headers=HEADERS)

    app = web.Application(client_max_size=1024)  # nothing is uploaded to a read-only page
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/fleet", fleet)
    return app


async def start_ui(agent: Any, address: str) -> web.AppRunner:
    """Serve the page on ``address`` (HOST:PORT); the caller cleans the returned runner up."""
    host, port = parse_hostport(address, "ui")
    runner = web.AppRunner(make_ui_app(ui_link(agent)), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"ui: cannot listen on {address}: {exc.strerror or exc}") from None
    log.info("fleet page on http://%s/", address)
    return runner
