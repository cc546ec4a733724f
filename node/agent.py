"""The daemon: one asyncio process that drives the gossip core over the network.

``Agent`` wires the pieces together: the sans-I/O ``GossipNode`` (gossip/),
the peer transport (node/transport.py), the SQLite state (node/state.py),
admission (policy/), convergence (node/convergence.py), the local API
(node/api.py).

Effects from the core are applied in one place, ``_apply``: accepted items
are committed to SQLite first, in one transaction, and only then are the
``Send`` effects of the same step handed to the transport, so nothing is
acknowledged or forwarded that a kill -9 could lose.

Lifecycle (``run``): peer server and API server up, background loops entered
as async context managers (ticker, joiner, periodic converge, housekeeping),
wait for SIGTERM/SIGINT, then leave the mesh, drain in-flight sends within
``drain_timeout_s``, leave the loops in reverse order, ``runner.cleanup()``
in ``finally``.

Services get ports, not the agent, each built here from bound methods:
runs (node/runs.py) a ``PeerLink``, a ``NodeWork`` and a ``RunBook``
(node/ports.py); convergence a ``ConvergeLink``; the local API an
``ApiLink``; network keys live in ``NetworkKeys`` (node/keystore.py).
``add_peer_route``, ``on_broadcast`` and ``add_api_route`` install what a
service offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from grapevine.gossip import codec, wire
from grapevine.gossip.effects import Delivered, ItemAccepted, ItemRefused, PeerDown, PeerUp, Send
from grapevine.gossip.errors import ConfigError, GrapevineError, ProtocolError
from grapevine.gossip.item import SignedItem, Version

from .config import AgentConfig
from .convergence import ConvergeSettings, Convergence
from .keystore import NetworkKeys
from .lifecycle import Background, load_node_key, take_lock
from .metrics import AgentMetrics
from .netkey import KeyRing
from .pins import Pins, pin_api_routes
from .ports import ConvergeLink, Membership, NodeWork, PeerLink, RunBook, fleet_status_info
from .preview import Previewer
from .rollout import RolloutLink, RolloutService
from .runs import QUERY_KIND, RunService
from .state import PEERS_KEEP, State
from .transport import FrameRefused, Transport, peer_address

log = logging.getLogger("grapevine.node")

BUNDLE_PREFIX = "bundle/"
ROOT_KEY = "trust/root"
NODE_KEY_FILE = "node.key"
LOCK_FILE = "agent.lock"
PEERS_SAVE_S = 60.0  # the passive view is written back this often (active peers are written when they come up)
MIN_TICK_S = 0.002  # never spin faster than this even if the core asks for "now"
HELLO_ROUTE = wire.ROUTE_HELLO
JOINER_IDLE_S = 30.0  # a connected node re-checks its join list this often (it is woken when isolated)
BroadcastHandler = Callable[[str, Any, bytes], Awaitable[Any] | Any]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


class Agent:
    def __init__(self, config: AgentConfig, *, rng: random.Random | None = None) -> None:
        from grapevine.gossip.node import GossipNode
        from grapevine.gossip.store import ItemStore
        from grapevine.policy import facts as facts_mod
        from grapevine.policy.admission import Admission
        from grapevine.policy.trust_files import load_root_file

        self.config = config
        self.node_id = config.node_id
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.root.mkdir(parents=True, exist_ok=True)  # a test or demo root may not exist yet
        self._lock_fd = take_lock(config.data_dir / LOCK_FILE)
        self.state = State(config.data_dir, history_keep=config.history_keep, reports_keep=config.reports_keep,
                           fsync=config.fsync)
        self.metrics = AgentMetrics()
        self.ring = KeyRing()
        self.netkeys = NetworkKeys(self.ring, self.state)
        self.netkeys.load(config.network_key)
        self.node_key = load_node_key(config.data_dir / NODE_KEY_FILE)
        self.facts = facts_mod.gather(dict(config.tags), name=config.name)

        if config.trust is None:
            raise ConfigError("trust: the agent needs a trust root file (--trust root.gv)")
        root_item, _ = load_root_file(config.trust)
        self.admission = Admission(root_item, node=config.name)
        stored = self.state.load_items()
        self._install_stored_roots()

        preset = config.gossip_config()
        store = ItemStore()
        for item in stored:
            if item.key == ROOT_KEY or self.admission.still_valid(item, now_ms()) is None:
                store.put(item)
            else:
                log.warning("stored %s is no longer trusted by the current root; not served", item.key)
        self.node = GossipNode(self.node_id, config=preset, rng=self.rng, validator=self.admission, store=store)
        self.transport = Transport(
            node_id=self.node_id, ring=self.ring, metrics=self.metrics,
            on_message=self._on_peer_frame, on_send_failed=self._on_send_failed,
            send_timeout_s=config.send_timeout_s, heartbeat_s=config.link_heartbeat_s,
            node_key=self.node_key, serve_metrics=config.peer_metrics,
            pins=Pins(self.state, on_change=lambda name: self.metrics.node_key_changes.inc()),
        )
        self.transport.health = self.health
        self.transport.routes[HELLO_ROUTE] = self._hello
        self._broadcast_handlers: dict[str, BroadcastHandler] = {}
        self.api_routes: dict[tuple[str, str], Callable] = dict(pin_api_routes(self.transport.pins))
        self.started_ms = now_ms()
        self.last_heard_ms = self.started_ms
        self._wake = asyncio.Event()
        self._sleep_until = 0  # wall ms at which the ticker wakes by itself
        self._stop = asyncio.Event()
        self._isolated = asyncio.Event()
        self.convergence = Convergence(
            node_id=self.node_id, admission=self.admission, facts=self.facts, store=self.state, metrics=self.metrics,
            settings=ConvergeSettings(root=config.root, debounce_ms=config.converge_debounce_ms,
                                      interval_s=config.converge_interval_s, splay_s=config.converge_splay_s,
                                      on_start=config.converge_on_start),
            host=ConvergeLink(items=self.node.store.items, drain=self.transport.drain, spawn=self.spawn),
            rng=self.rng, stopping=lambda: self.stopping, node_key=self.node_key,
        )
        self._tasks: set[asyncio.Task] = set()
        self._join_ids: dict[str, str] = {}  # configured HOST:PORT -> node id learned by hello
        self._isolated_since: int | None = None
        self.metrics.items.set(len(self.node.store))
        import grapevine.policy.engine  # noqa: F401  (loaded now, not on the first bundle's critical path)

        self.extensions: list[Any] = []
        self._install_extensions()

    # -- setup helpers --------------------------------------------------
    def _install_stored_roots(self) -> None:
        """Replay stored trust/root versions so a restarted node runs on the newest root it accepted."""
        for entry in self.state.history(ROOT_KEY):
            item = self.state.get_version(ROOT_KEY, entry.version)
            if item is None or item == self.admission.root_item:
                continue
            if self.admission(item, self.admission.root_item, now_ms()) is None:
                self.admission.on_accepted(item)

    def _install_extensions(self) -> None:
        """Push-style runs and fleet queries (node/runs.py), wired through narrow ports."""
        self.membership = Membership(self.node_id, views=self._views, stored=lambda: self.state.known_peers(PEERS_KEEP))
        svc = RunService(
            me=self.node_id, node_key=self.node_key, facts=self.facts, root=lambda: self.admission.root,
            peers=PeerLink(send=self.send_direct, broadcast=self.broadcast, live_peers=self._views,
                           is_member=lambda n: self.membership.is_member(n, time.monotonic())),
            work=NodeWork(converge_now=self.converge_now, bundles=self.bundles, status_info=self._status_info,
                          preview=Previewer(admission=self.admission, convergence=self.convergence,
                                            stored=self.node.store.get, facts=self.facts, root=self.config.root,
                                            node_key=self.node_key, wall=now_ms).preview),
            store=RunBook(run_seen=self.state.run_seen, mark_run_seen=self.state.mark_run_seen,
                          record_run=self._record_run, run_history=self.state.run_history),
            count=lambda reason: self.metrics.run_refusals.labels(reason).inc(),
            count_late=lambda when: self.metrics.late_answers.labels(when).inc(),
            run_user=self.config.run_user or None,
        )
        self.on_broadcast(QUERY_KIND, svc.on_query)
        self.rollouts = RolloutService(me=self.node_id, run_user=self.config.run_user or None, link=RolloutLink(
            stored=self.node.store.get, version_item=self.state.get_version, history=self.state.history,
            applied=self.state.applied, targets_me=self.convergence.targets_me, send=self.send_direct,
            converge=lambda names: self.converge_now(names, trigger="rollout"), load=self.state.get_meta,
            save=self.state.set_meta, spawn=self.spawn))
        self.convergence.gate = self.rollouts.choose  # staged rollouts hold a planned bundle's new version back
        for ext in (svc, self.rollouts):
            for name, (handler, with_sender) in ext.peer_routes().items():
                self.add_peer_route(name, handler, with_sender=with_sender)
            for (method, path), handler in ext.api_routes().items():
                self.add_api_route(method, path, handler)
            self.extensions.append(ext)

    def _views(self) -> frozenset[str]:
        return frozenset(self.node.active_view).union(self.node.passive_view)

    def _status_info(self) -> dict:
        return fleet_status_info(targeted=[b.name for b, _ in self.targeted_bundles()], applied=self.state.applied(),
                                 bundles=self.bundles(), last_report=self.last_report, status=self.status(),
                                 now_ms=now_ms())

    def _record_run(self, row: dict) -> None:
        self.state.record_run(row, keep_rows=self.config.runs_keep, keep_ms=self.config.runs_keep_days * 86_400_000,
                              now_ms=now_ms())

    # -- extension API --------------------------------------------------
    def broadcast(self, kind: str, body: object, ttl_ms: int) -> bytes:
        """Ephemeral broadcast over the gossip tree (not delivered to this node)."""
        payload = wire.Broadcast(kind, body).pack()
        now = now_ms()
        msg_id, effects = self.node.broadcast(payload, now, ttl_ms)
        self._apply(effects, now)
        return msg_id

    def on_broadcast(self, kind: str, handler: BroadcastHandler) -> None:
        self._broadcast_handlers[kind] = handler

    def add_peer_route(self, name: str, handler: Callable[..., Awaitable[Any] | Any], *, with_sender: bool = False) -> None:
        """``with_sender``: the handler takes (sender, body), the sender being the frame's, as the transport opened it."""
        if name == HELLO_ROUTE:
            raise ConfigError(f"peer route {name!r} is reserved")
        self.transport.routes[name] = handler
        if with_sender:
            self.transport.sender_routes.add(name)

    async def send_direct(self, node_id: str, name: str, body: object, timeout_s: float | None = None) -> object:
        _sender, answer = await self.transport.request(peer_address(node_id), name, body, timeout_s, dest=node_id)
        return answer

    def add_api_route(self, method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.api_routes[(method.upper(), path)] = handler

    def bundles(self) -> list[tuple[str, Version, bool]]:
        applied = self.state.applied()
        out = []
        for item in self.node.store.items():
            if not item.key.startswith(BUNDLE_PREFIX):
                continue
            name = item.key[len(BUNDLE_PREFIX):]
            a = applied.get(name)
            out.append((name, item.version, bool(a and a[0] == item.version and a[2])))
        return sorted(out)

    # -- the core -------------------------------------------------------
    def _apply(self, effects: list, now: int) -> None:
        accepted = [e for e in effects if isinstance(e, ItemAccepted)]
        if accepted:
            serial = self.admission.root.serial
            # durable before anything below can acknowledge or forward it
            self.state.put_items(((e.item, now, e.source) for e in accepted),
                                 replicated=all(e.source is not None for e in accepted))
            for e in accepted:
                self.admission.on_accepted(e.item)
                self.metrics.admissions.labels("local" if e.source is None else "peer").inc()
                log.info("accepted %s %s from %s (%d hops)", e.item.key, e.item.version, e.source or "local", e.hops)
            self.metrics.items.set(len(self.node.store))
            self.rollouts.on_accepted(e.item for e in accepted)  # records reach their gates; new plans get one
            if any(e.item.key.startswith(BUNDLE_PREFIX) and self.convergence.concerns_me(e.item, now) for e in accepted):
                self.schedule_converge("bundle")
            elif self.admission.root.serial != serial and self.bundles():
                self.schedule_converge("trust")  # a revoked publisher's bundles stop being applied
        for e in effects:
            if isinstance(e, Send):
                try:
                    body = codec.encode(e.msg)
                except GrapevineError:
                    log.exception("cannot encode %s for %s", type(e.msg).__name__, e.peer)
                    continue
                self.transport.send(e.peer, body, type(e.msg).__name__)
            elif isinstance(e, ItemRefused):
                self.metrics.refusals.labels(e.reason).inc()
                if e.source is not None:
                    log.debug("refused %s from %s: %s %s", e.key, e.source, e.reason, e.detail)
            elif isinstance(e, Delivered):
                if e.origin != self.node_id:
                    self._dispatch_broadcast(e)
            elif isinstance(e, PeerUp):
                self.transport.open_link(e.peer)
                self.state.touch_peers([e.peer], now)  # a restart can rejoin through it
                log.info("peer up %s", e.peer)
            elif isinstance(e, PeerDown):
                self.transport.close_link(e.peer)
                log.info("peer down %s", e.peer)
        active = len(self.node.active_view)
        self.metrics.active_peers.set(active)
        self.metrics.passive_peers.set(len(self.node.passive_view))
        if not active:
            self._isolated.set()
        if self.node.next_deadline() < self._sleep_until:
            self._wake.set()  # the core wants a tick before the ticker would wake by itself

    def _on_peer_frame(self, sender: str, body: bytes, size: int) -> None:
        try:
            msg = codec.decode(body)
        except ProtocolError as exc:
            raise FrameRefused(400, "BadMessage", f"message from {sender}: {exc}") from None
        msg_in, bytes_in = self.metrics.inbound(type(msg).__name__)
        msg_in.inc()
        bytes_in.inc(size)
        now = now_ms()
        self.last_heard_ms = now
        self.metrics.last_heard.set(now / 1000)
        self._apply(self.node.on_message(sender, msg, now), now)

    def _on_send_failed(self, peer: str) -> None:
        now = now_ms()
        self._apply(self.node.on_send_failed(peer, now), now)

    def _dispatch_broadcast(self, e: Any) -> None:
        try:
            cast = wire.unpack_broadcast(e.payload)
        except ProtocolError as exc:
            self.metrics.bad_frames.labels(exc.reason).inc()
            log.warning("undecodable broadcast from %s dropped: %s", e.origin, exc)
            return
        kind, body = cast.kind, cast.body
        handler = self._broadcast_handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            log.debug("broadcast of unknown kind %r from %s ignored", kind, e.origin)
            return
        try:
            result = handler(e.origin, body, e.msg_id)
        except Exception:
            log.exception("broadcast handler %s failed", kind)
            return
        if asyncio.iscoroutine(result):
            self.spawn(result, f"broadcast:{kind}")

    def publish(self, item: SignedItem) -> tuple[bool, str, str]:
        """Admit a locally injected item: (accepted, reason, detail). Durable when accepted."""
        now = now_ms()
        effects = self.node.publish(item, now)
        self._apply(effects, now)
        for e in effects:
            if isinstance(e, ItemAccepted) and e.item.key == item.key:
                return True, "", ""
            if isinstance(e, ItemRefused) and e.key == item.key:
                return False, e.reason, self.admission.refusal_detail(item, e.reason) or e.detail
        return False, "NotAccepted", "the gossip core neither accepted nor refused the item"

    async def _hello(self, body: Any) -> Any:
        return {"id": self.node_id}

    # -- convergence (node/convergence.py) ----------------------------------
    def targeted_bundles(self) -> list[tuple[Any, Version]]:
        return self.convergence.targeted_bundles()

    def schedule_converge(self, trigger: str) -> None:
        self.convergence.schedule(trigger)

    async def converge_now(self, bundle_names: list[str] | None = None, dry_run: bool = False, trigger: str = "api") -> dict:
        """Converge this node to the bundles that target it now; returns the report JSON."""
        return await self.convergence.converge_now(bundle_names, dry_run=dry_run, trigger=trigger)

    @property
    def last_report(self) -> dict | None:
        return self.convergence.last_report

    # -- status ---------------------------------------------------------
    def status(self) -> dict:
        now = now_ms()
        stale = now - self.last_heard_ms > self.config.stale_after_s * 1000
        state = f"stale since {iso(self.last_heard_ms)}" if stale else "ok"
        last = self.last_report
        return {
            "node": self.node_id,
            "name": self.config.name,
            "status": state,
            "stale": stale,
            "last_heard_ms": self.last_heard_ms,
            "started_ms": self.started_ms,
            "uptime_s": round((now - self.started_ms) / 1000, 1),
            "items": len(self.node.store),
            "bundles": len([1 for b in self.bundles()]),
            "active": len(self.node.active_view),
            "passive": len(self.node.passive_view),
            "store_digest": self.node.store.store_digest().hex(),
            "trust_root_serial": self.admission.root.serial,
            "network_key": self.ring.primary,
            "tags": dict(self.config.tags),
            "last_converge": None if last is None else {
                k: last.get(k) for k in ("at_ms", "trigger", "changed", "unchanged", "failed", "skipped", "versions", "error")
            },
        }

    def health(self) -> dict:
        return {"ok": not self._stop.is_set(), "node": self.node_id}

    def members(self) -> dict:
        return {
            "node": self.node_id,
            "active": sorted(self.node.active_view),
            "passive": sorted(self.node.passive_view),
            "links": sorted(self.transport.links),
        }

    # -- background loops -----------------------------------------------
    async def _ticker(self) -> None:
        max_ms = self.config.tick_max_ms
        while True:
            now = now_ms()
            self._sleep_until = 0  # effects applied by this tick never need to wake us
            self.metrics.ticks.inc()
            self._apply(self.node.on_tick(now), now)
            self.membership.note(time.monotonic())  # who the views held: queries and orders from them are answered
            self._wake.clear()
            now = now_ms()
            wake_at = min(max(self.node.next_deadline(), now + int(MIN_TICK_S * 1000)), now + max_ms)
            self._sleep_until = wake_at
            try:
                await asyncio.wait_for(self._wake.wait(), (wake_at - now) / 1000)
            except asyncio.TimeoutError:
                pass

    async def _resolve_joins(self, only_new: bool = False) -> list[str]:
        """Node ids behind the configured join addresses (asked with a sealed hello)."""
        ids = []
        for addr in self.config.join:
            if addr in self._join_ids:
                if not only_new:
                    ids.append(self._join_ids[addr])
                continue
            try:
                _sender, answer = await self.transport.request(addr, HELLO_ROUTE, {}, self.config.send_timeout_s)
                nid = answer.get("id") if isinstance(answer, dict) else None
                if isinstance(nid, str) and nid != self.node_id:
                    peer_address(nid)
                    self._join_ids[addr] = nid
                    ids.append(nid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, refused, timed out, not a grapevine node
                log.debug("join contact %s not reachable: %s", addr, exc or type(exc).__name__)
        return ids

    async def _joiner(self) -> None:
        """Join through every configured address once it answers, and rejoin whenever isolated.

        A node whose contacts were down when it started may already have been
        found by others; it still joins through each configured address as
        soon as that one answers, so two groups that formed apart merge.
        Retries back off from rejoin_min_s to rejoin_max_s, for as long as the
        agent runs.
        """
        delay = self.config.rejoin_min_s
        while True:
            pending = len(self._join_ids) < len(set(self.config.join))
            if self.node.active_view and not pending:
                delay = self.config.rejoin_min_s
                self._isolated_since = None
                self._isolated.clear()
                with contextlib.suppress(asyncio.TimeoutError):  # woken at once when the active view empties
                    await asyncio.wait_for(self._isolated.wait(), JOINER_IDLE_S)
                continue
            isolated = not self.node.active_view
            if isolated and self._isolated_since is None:
                self._isolated_since = now_ms()
            contacts = await self._resolve_joins(only_new=not isolated)
            now = now_ms()
            # Join through every configured contact that answered, not through one of them:
            # nodes that started together and joined through different contacts would
            # otherwise stay two overlays that no broadcast crosses.
            effects = [e for c in contacts for e in self.node.join([c], now)]
            if isolated and not contacts:
                known = [p for p in self.state.known_peers(16) if p != self.node_id]
                if known:
                    effects += self.node.join(known[:8], now)
            if effects:
                self._apply(effects, now)
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, self.config.rejoin_max_s)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(PEERS_SAVE_S)
            peers = [p for p in list(self.node.active_view) + list(self.node.passive_view) if p != self.node_id]
            self.state.touch_peers(peers, now_ms())
            self.state.prune_runs(now_ms() - 3600 * 1000)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """Run ``coro`` as a task the agent awaits (bounded) at shutdown."""
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- lifecycle ------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, ready: Callable[[], None] | None = None, stopping: Callable[[], None] | None = None) -> None:
        from .api import ApiLink, make_api_app

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        host, port = self.config.bind.rsplit(":", 1)
        host = host.strip("[]")
        bound = self.config.drain_timeout_s  # open requests get this long when the servers stop
        peer_runner = self.transport.make_runner(shutdown_timeout=bound)
        api = ApiLink(node_id=self.node_id, facts=self.facts, state=self.state, netkeys=self.netkeys, status=self.status,
                      members=self.members, bundles=self.bundles, targeted_bundles=self.targeted_bundles,
                      stored_item=self.node.store.get, publish=self.publish, converge_now=self.converge_now,
                      routes=self.api_routes)
        api_runner = web.AppRunner(make_api_app(api), access_log=None, handle_signals=False, shutdown_timeout=bound)
        sock = self.config.socket_path
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self.transport)
                await peer_runner.setup()
                try:
                    await self.transport.make_site(peer_runner, host, int(port), reuse_address=True).start()
                except OSError as exc:
                    raise ConfigError(f"bind: cannot listen on {self.config.bind}: {exc.strerror or exc}") from None
                await api_runner.setup()
                with contextlib.suppress(FileNotFoundError):
                    sock.unlink()
                old = os.umask(0o177)
                try:
                    await web.UnixSite(api_runner, str(sock)).start()
                finally:
                    os.umask(old)
                os.chmod(sock, 0o600)
                self._publish_trust_root()
                for loop_name, fn in (
                    ("ticker", self._ticker), ("joiner", self._joiner),
                    ("converge-timer", self.convergence.periodic), ("housekeeping", self._housekeeping),
                    ("rollouts", self.rollouts.loop),
                ):
                    await stack.enter_async_context(Background(loop_name, fn))
                log.info(
                    "agent %s up: peers on %s, API on %s, %d items, trust root serial %d",
                    self.node_id, self.config.bind, sock, len(self.node.store), self.admission.root.serial,
                )
                if ready is not None:
                    ready()
                await self._stop.wait()
                log.info("stopping: leaving the mesh")
                if stopping is not None:
                    stopping()
                await self._shutdown()
        finally:
            await api_runner.cleanup()
            await peer_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            self.state.close()
            os.close(self._lock_fd)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            log.info("agent %s stopped", self.node_id)

    def _publish_trust_root(self) -> None:
        if self.node.store.get(ROOT_KEY) is None:
            accepted, reason, detail = self.publish(self.admission.root_item)
            if not accepted:
                log.warning("trust root not published: %s %s", reason, detail)

    async def _shutdown(self) -> None:
        """Bounded drain: goodbyes and queued frames out, running work given drain_timeout_s."""
        budget = self.config.drain_timeout_s
        deadline = time.monotonic() + budget
        self.convergence.cancel()
        try:
            now = now_ms()
            self._apply(self.node.leave(now), now)
        except GrapevineError:
            log.exception("leave failed")
        await self.transport.drain(max(0.0, deadline - time.monotonic()))
        for ext in self.extensions:
            close = getattr(ext, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(close(), max(0.05, deadline - time.monotonic()))
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            done, still = await asyncio.wait(pending, timeout=max(0.05, deadline - time.monotonic()))
            for t in still:
                t.cancel()
            results = await asyncio.gather(*still, return_exceptions=True)
            for t, r in zip(still, results):
                if isinstance(r, Exception):
                    log.warning("task %s ended with %r during shutdown", t.get_name(), r)
            if still:
                log.warning("cancelled %d tasks still running after %.1f s", len(still), budget)
        peers = [p for p in list(self.node.active_view) + list(self.node.passive_view) if p != self.node_id]
        self.state.touch_peers(peers, now_ms())
