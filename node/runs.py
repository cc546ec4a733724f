"""Push-style runs and fleet queries: the asyncio shell around the run state machines.

Every agent plays both roles. What decides lives in sans-I/O modules that
take the time as an argument and return what to do:

- node/discovery.py: the origin's open queries (``DiscoveryBook``: quiet
  window, who is waited for, answers checked against the frame's sender) and
  every node's ``QueryResponder`` (answer only the query's origin, a known
  member, once, within a token bucket);
- node/origin.py: ``RunCoordinator``, one run at its origin (batches,
  ``--max-failures``, a lost reply asked again, deadlines, late answerers,
  which results count, the summary);
- node/target.py: ``RunTarget``, an order at a target (checks, seen ids, one
  result destination within a token bucket, the audit row).

This module owns the rest: the peer routes and the local API routes, the
timers, the posts, the NDJSON stream to the command line. Execution itself
is node/runexec.py. The agent hands it ports (node/ports.py), never itself.

Wire: ``query`` broadcast ``{"q", "o", "s", "k"}``; ``query.answer``
``{"q", "n", "pk", "i"}``; ``run.order`` ``{"order", "ticket", "retry"?}``
answered ``{"ok", "pk", "result"?}`` or ``{"ok": false, "refused", "detail"}``;
``run.result`` a signed result; ``run.key`` ``{"n", "pk"}``. A command done
within ``INLINE_RESULT_S`` answers in the reply to the order itself; a
longer one is posted to the origin when it ends, retried until the deadline.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable


from grapevine.gossip import wire
from grapevine.gossip.errors import ProtocolError, Reason
from grapevine.policy import runorder, selectors
from grapevine.policy.keys import PublicKey, SigningKey
from grapevine.policy.runorder import RunRefused, RunResult, SignedOrder, SignedResult

from .discovery import Discovery, DiscoveryBook, QueryAnswer, QueryResponder
from .origin import Count, Emit, PostOrder, RunCoordinator
from .ports import NodeWork, Peers, RunStore
from .ratelimit import TokenBucket
from .runapi import RunApi
from .runexec import Execution, dumps, jsonable, report_later
from .target import Admit, RunTarget, audit_row, ticket_bytes, ticket_valid

log = logging.getLogger("grapevine.node")

QUERY_KIND = wire.BROADCAST_QUERY  # broadcast kind of a discovery query (runs and fleet status)
ANSWER_ROUTE = wire.ROUTE_QUERY_ANSWER  # node -> origin: "I match"
ORDER_ROUTE = wire.ROUTE_RUN_ORDER  # origin -> node: the signed order
RESULT_ROUTE = wire.ROUTE_RUN_RESULT  # node -> origin: the signed result
KEY_ROUTE = wire.ROUTE_RUN_KEY  # node -> origin: the node key held at the origin's address (checks tickets)

QUERY_TTL_MS = 10_000  # a query broadcast is dropped from seen-sets after this
INLINE_RESULT_S = 1.0  # a command done this soon rides back in the order's reply (one request, not two)
RESULT_RETRY_FIRST_S = 0.2  # result post retries back off from here...
RESULT_RETRY_MAX_S = 5.0  # ...to here, until the deadline
MAX_ORIGIN_KEYS = 1024  # origin node keys a node keeps (one per agent that ever started a run here)
MIN_WAIT_S = 0.001  # the shortest timer the shell arms
# What a node sends on others' behalf, whatever asks it to: discovery answers and result posts.
ANSWER_RATE, ANSWER_BURST = 50.0, 200  # a status sweep or a burst of runs answered at once, a flood not
RESULT_RATE, RESULT_BURST = 50.0, 100  # results of long commands; a refused post is retried, not lost
FLEET_RUNS = 50  # audit rows each node returns to `history --runs --fleet` (one answer frame stays small)
FLEET_TEXT_CHARS = 200  # command and selector in a fleet answer: the peer envelope caps strings at 320

# kept importable under their old names
_ticket_bytes = ticket_bytes


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Live:
    """The I/O side of one run at its origin: its machine, its stream, its posts."""

    signed: SignedOrder
    coord: RunCoordinator | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    posts: set[asyncio.Task] = field(default_factory=set)


class RunService:
    """Peer routes, local API routes and timers for push-style runs and fleet queries."""

    def __init__(self, *, me: str, node_key: SigningKey, facts: dict, root: Callable[[], Any], peers: Peers,
                 work: NodeWork, store: RunStore, count: Callable[[str], None] = lambda reason: None,
                 count_late: Callable[[str], None] = lambda when: None, run_user: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], int] = now_ms) -> None:
        self.me = me
        self.node_key = node_key
        self.facts = facts
        self.root = root
        self.peers = peers
        self.work = work
        self.store = store
        self._count = count
        self._count_late = count_late
        self.clock = clock
        self.wall = wall
        self.book = DiscoveryBook(me)
        self.responder = QueryResponder(me, is_member=peers.is_member, bucket=TokenBucket(ANSWER_RATE, ANSWER_BURST))
        self.target = RunTarget(me, seen=store, root=root, facts=facts, is_member=peers.is_member,
                                bucket=TokenBucket(RESULT_RATE, RESULT_BURST))
        self.execution = Execution(me, node_key, work, run_user=run_user, on_done=self._audit_done)
        self._runs: dict[str, _Live] = {}
        self._wakes: dict[str, asyncio.Event] = {}  # open query id -> who waits on its answers
        self._tasks: set[asyncio.Task] = set()
        self._origin_keys: dict[str, PublicKey] = {}  # origin node id -> its node key, fetched at its address
        self.refusals: collections.Counter[str] = collections.Counter()  # orders, results, answers refused here

    # -- wiring ---------------------------------------------------------------
    def peer_routes(self) -> dict[str, tuple[Callable, bool]]:
        """Route name -> (handler, whether it takes the frame's sender first)."""
        return {ANSWER_ROUTE: (self.on_answer, True), ORDER_ROUTE: (self.on_order, False),
                RESULT_ROUTE: (self.on_result, False), KEY_ROUTE: (self.on_key_request, False)}

    def api_routes(self) -> dict[tuple[str, str], Callable]:
        api = RunApi(self)
        return {("GET", "/v1/run/origin"): api.origin, ("POST", "/v1/run"): api.run,
                ("POST", "/v1/fleet/query"): api.query, ("GET", "/v1/run/stats"): api.stats,
                ("GET", "/v1/runs/history"): api.history}

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except BaseException:  # cancelled or failed: nothing more to report at shutdown
                pass

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _refused(self, reason: str) -> None:
        self.refusals[reason] += 1
        self._count(reason)

    # -- discovery --------------------------------------------------------------
    async def discover(self, kind: str, selector: str) -> tuple[Discovery, int]:
        """Broadcast a query and collect the answers until they stop (fleet queries)."""
        disc = await self._open_discovery(kind, selector)
        wake = self._wakes[disc.qid] = asyncio.Event()
        try:
            while True:
                now = self.clock()
                if disc.quiet(now):
                    return disc, disc.elapsed_ms(now)
                wake.clear()
                await _wait(wake, disc.quiet_end() - now)
        finally:
            self._wakes.pop(disc.qid, None)
            self.book.finish(disc, selector, run_id=None, now=self.clock())

    async def fleet_query(self, kind: str, selector: str) -> dict:
        """A fleet query's answers as the local API and the fleet page serve them."""
        disc, took = await self.discover(kind, selector)
        return {"answers": {n: jsonable(i) for n, (_, i) in disc.answers.items()},
                "discovery_ms": int(took), "origin": self.me}

    async def _open_discovery(self, kind: str, selector: str) -> Discovery:
        """Broadcast a query; answers collect in the returned discovery until the book finishes it."""
        selectors.parse(selector or None)  # a bad selector is refused here, not by every node
        qid = runorder.new_run_id()
        peers = self.peers.live_peers() if not selector else frozenset()
        disc = self.book.start(qid, selector, peers=peers, now=self.clock())
        body = {"q": qid, "o": self.me, "s": selector, "k": kind}
        try:
            self.peers.broadcast(QUERY_KIND, body, QUERY_TTL_MS)
            await self.on_query(self.me, body, b"")  # the origin is a node too
        except BaseException:
            self.book.drop(qid)
            raise
        return disc

    async def on_query(self, origin: str, body: Any, msg_id: bytes) -> None:
        """A query broadcast arrived (``origin``: the node that broadcast it)."""
        decision = self.responder.decide(origin, body, facts=self.facts, now=self.clock())
        if not isinstance(decision, QueryAnswer):
            if decision.reason is not None:
                if decision.reason != "Malformed":
                    self._refused(decision.reason)
                log.info("query not answered: %s", decision.detail)
            return
        answer = {"q": body["q"], "n": self.me, "pk": self.node_key.public.raw, "i": self._query_info(body["k"])}
        if decision.local:
            self.on_answer(self.me, answer)
            return
        self._spawn(self._send_quietly(decision.to, ANSWER_ROUTE, answer))

    def _query_info(self, kind: str) -> dict:
        if kind == "status":
            return self.work.status_info()
        if kind == "runs":
            rows = self.store.run_history(FLEET_RUNS)
            return {"runs": [dict(r, command=str(r.get("command") or "")[:FLEET_TEXT_CHARS],
                                  selector=str(r.get("selector") or "")[:FLEET_TEXT_CHARS]) for r in rows]}
        return {}

    async def _send_quietly(self, node: str, route: str, body: Any) -> None:
        try:
            await self.peers.send(node, route, body)
        except Exception as exc:  # the origin went away: nothing to do but note it
            log.info("%s to %s failed: %s", route, node, exc)

    def on_answer(self, sender: str, body: Any) -> dict:
        """A discovery answer from ``sender``, the node the transport says sent the frame."""
        out = self.book.on_answer(sender, body, self.clock())
        if out.refused is not None:
            self._refused(out.refused)
            log.warning("discovery answer from %s refused: %s (it names %.80r)", sender, out.refused, out.node)
        if out.late == "after_run":
            # A target that answered after its run ended was not started: say so, by name.
            self._count_late("after_run")
            log.warning("run %s: %.80r answered discovery %d ms after the run had ended; it was not started",
                        out.run_id, out.node, out.after_ms)
        elif out.late == "during_run":
            self._count_late("during_run")
        if out.accepted:
            wake = self._wakes.get(body["q"])
            if wake is not None:
                wake.set()
        return out.reply()

    async def on_key_request(self, body: Any) -> dict:
        return {"n": self.me, "pk": self.node_key.public.raw}

    # -- target side ---------------------------------------------------------------
    async def on_order(self, body: Any) -> dict:
        decision = self.target.check(body, self.wall())
        if isinstance(decision, Admit):
            order = decision.order
            ok = await self._sent_by_origin(order, decision.ticket)
            refusal = self.target.accept(decision, ok)
            if refusal is None and decision.again is not None:
                return self._retry_reply(order, decision.again)
        else:
            refusal = decision
        if refusal is not None:
            self._refused(refusal.reason)
            log.warning("refused run order: %s: %s", refusal.reason, refusal.detail)
            self._audit(audit_row(refusal.order, started_ms=self.wall(), duration_ms=None, exit_code=None,
                                  refused=refusal.reason))
            return refusal.reply()
        log.info("run %s from %s accepted: %s", order.run_id, order.operator, order.action.describe())
        me_pk = self.node_key.public.raw  # the reply binds this key to the address the order went to
        task = self._spawn(self.execution.execute_and_sign(order))
        self.target.started(order, task)
        done, _ = await asyncio.wait({task}, timeout=INLINE_RESULT_S)
        if task in done and task.exception() is None:
            return {"ok": True, "pk": me_pk, "result": task.result().to_wire()}  # a quick command: the reply carries it
        self._spawn(self._report_later(order, task))
        return {"ok": True, "pk": me_pk}

    def _retry_reply(self, order: runorder.RunOrder, task: asyncio.Task) -> dict:
        """The origin posted an order again (its first reply was lost): answer, never run it twice."""
        log.info("run %s: the origin asked again; answering from the execution already under way", order.run_id)
        reply = {"ok": True, "pk": self.node_key.public.raw}
        if task.done() and not task.cancelled() and task.exception() is None:
            reply["result"] = task.result().to_wire()
        elif not task.done():
            self._spawn(self._report_later(order, task))
        return reply

    async def _sent_by_origin(self, order: runorder.RunOrder, ticket: Any) -> bool:
        """Whether the origin itself sent this order here (its node-key ticket for this run and node).

        The origin's key is asked once of the node listening at the origin's
        address (the id is the address) and then kept; a cached key that
        fails is asked again, as the origin's data dir may have been reset.
        """
        if not isinstance(ticket, bytes):
            return False
        for fresh in (False, True):
            key = await self._origin_key(order.origin, fresh)
            if key is None:
                return False
            if ticket_valid(key, ticket, order.run_id, self.me):
                return True
        return False

    async def _origin_key(self, origin: str, fresh: bool) -> PublicKey | None:
        if origin == self.me:
            return self.node_key.public
        key = None if fresh else self._origin_keys.get(origin)
        if key is not None:
            return key
        try:
            held = await self.peers.send(origin, KEY_ROUTE, {})
            if not isinstance(held, dict) or held.get("n") != origin or not isinstance(held.get("pk"), bytes):
                raise ProtocolError("the node at that address is another node", reason=Reason.UNKNOWN_ORIGIN)
            key = PublicKey.from_bytes(held["pk"])
        except Exception as exc:  # the origin is gone, unreachable or not who the order names
            log.info("origin %s: its node key could not be fetched at its address: %s", origin, exc)
            return None
        if len(self._origin_keys) >= MAX_ORIGIN_KEYS:
            self._origin_keys.pop(next(iter(self._origin_keys)))
        self._origin_keys[origin] = key
        return key

    async def _report_later(self, order: runorder.RunOrder, task: asyncio.Task) -> None:
        async def post(signed: SignedResult) -> Any:
            if order.origin == self.me:
                return self.on_result(signed.to_wire())
            return await self.peers.send(order.origin, RESULT_ROUTE, signed.to_wire())  # the one destination

        await report_later(order, task, post=post, may_post=lambda: self.target.result_post(order, self.clock()) is not None,
                           first_s=RESULT_RETRY_FIRST_S, max_s=RESULT_RETRY_MAX_S)

    def _audit_done(self, order: runorder.RunOrder, started_ms: int, result: RunResult) -> None:
        self._audit(audit_row(order, started_ms=started_ms, duration_ms=result.duration_ms,
                              exit_code=result.exit_code, refused=None))

    def _audit(self, row: dict | None) -> None:
        if row is None:
            return
        try:
            self.store.record_run(row)
        except Exception:  # a full disk must not turn a refusal into a crash
            log.exception("run %s: the audit record could not be written", row.get("order"))

    # -- origin side -------------------------------------------------------------------
    def on_result(self, body: Any) -> dict:
        try:
            signed = SignedResult.from_wire(body)
        except RunRefused as exc:
            self._refused(exc.reason)
            log.warning("refused malformed run result: %s", exc)
            return {"ok": False, "refused": exc.reason}
        live = self._runs.get(signed.result.run_id)
        if live is None or live.coord is None:
            return {"ok": False, "gone": True}
        reply, effects = live.coord.on_result(signed, self.clock())
        self._apply(live, effects)
        return reply

    def open_run(self, signed: SignedOrder) -> _Live:
        live = self._runs[signed.order.run_id] = _Live(signed=signed)
        return live

    def end_run(self, run_id: str) -> None:
        # late results for this id are answered "gone" so nodes stop retrying
        self._runs.pop(run_id, None)

    def running(self, run_id: str) -> bool:
        return run_id in self._runs

    async def run(self, live: _Live, *, batch: runorder.BatchSize | None, max_failures: int | None) -> dict:
        """Drive one run to the end; progress goes to ``live.events``.

        Discovery stays open for as long as the run does: a node whose answer
        comes after the quiet window is still started, in the running batch
        or in one more batch after the planned ones, and is listed in
        ``late_targets``.
        """
        order = live.signed.order
        disc = await self._open_discovery("run", order.selector)
        coord = live.coord = RunCoordinator(live.signed, disc, self.clock(), self.wall(), batch, max_failures)
        self._wakes[disc.qid] = live.wake
        try:
            while True:
                self._apply(live, coord.poll(self.clock()))
                if coord.done:
                    return coord.summary
                live.wake.clear()
                await _wait(live.wake, coord.next_deadline() - self.clock())
        finally:
            for task in live.posts:
                task.cancel()
            self._wakes.pop(disc.qid, None)
            self.book.finish(disc, order.selector, run_id=order.run_id, now=self.clock())

    def _apply(self, live: _Live, effects: list) -> None:
        for e in effects:
            if isinstance(e, Emit):
                live.events.put_nowait(e.event)
            elif isinstance(e, PostOrder):
                task = self._spawn(self._post_order(live, e))
                live.posts.add(task)
                task.add_done_callback(live.posts.discard)
            elif isinstance(e, Count):
                self._refused(e.reason)
                log.warning("%s", e.detail)
        if effects:
            live.wake.set()

    async def _post_order(self, live: _Live, post: PostOrder) -> None:
        """Post the order to one target at ``post.at``; the machine hears the reply or the failure."""
        delay = post.at - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        order = live.signed.order
        body = {"order": live.signed.to_wire(), "ticket": self.node_key.sign(ticket_bytes(order.run_id, post.node))}
        if post.retry:
            body["retry"] = True
        try:
            if post.node == self.me:
                reply = await self.on_order(body)
            else:
                reply = await self.peers.send(post.node, ORDER_ROUTE, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            effects = live.coord.on_post_failed(post.node, str(exc) or type(exc).__name__, self.clock())
        else:
            effects = live.coord.on_reply(post.node, reply, self.clock())
        self._apply(live, effects)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds (the shell's one timer)."""
    try:
        await asyncio.wait_for(event.wait(), max(MIN_WAIT_S, timeout))
    except asyncio.TimeoutError:
        pass


__all__ = ["RunService", "QUERY_KIND", "ANSWER_ROUTE", "ORDER_ROUTE", "RESULT_ROUTE", "KEY_ROUTE",
           "_ticket_bytes", "dumps", "jsonable"]
