"""Push-style runs and fleet queries, on top of the agent's extension API.

Two roles live here; every agent plays both.

*Origin* (the agent the command line talks to):
  1. checks the signed order it was handed (signature, scope, deadline);
  2. discovery: one ephemeral broadcast over the gossip tree; every node whose
     facts match the selector answers straight to the origin with its node id
     and node public key. Discovery counts as done once answers stop arriving
     (a quiet window after the last one, stretched when answers trickle in
     slowly), bounded in time, but it stays open until the run ends: a node
     that answers late is still started, and listed in ``late_targets``;
  3. posts the signed order to the targets directly. Without batches each
     target is started the moment its answer arrives, so the quiet window
     overlaps the commands; with batches, each batch starts after the
     previous one finished, late answerers make one more batch, and no batch
     starts once failures pass ``max_failures``. Each post carries a ticket:
     the origin's node-key signature over (run id, target), so a target that
     holds the order cannot start it on other nodes ahead of their batch;
  4. verifies every result with the node key learned at discovery, once the
     node at that id's address has confirmed it in its reply to the order
     (anyone holding the network key could answer discovery in another
     node's name; only the real node answers at its address); refuses and
     logs anything else (``KeyMismatch``, ``BadSignature``, ``UnknownNode``);
  5. streams progress to the command line as NDJSON lines.

*Node* (every target): checks the order (``policy.runorder.check_order``),
that the id is new, and the origin's ticket (the origin's node key is asked
once of the node at the origin's address, then kept); records the id in the
durable seen-run table; executes it with a timeout and bounded output as the
configured user and signs the result with its node key. A command done within ``INLINE_RESULT_S`` answers in the reply
to the order itself; a longer one is posted to the origin when it ends,
retried until the deadline. Either way the origin verifies the signature.

The same discovery serves fleet queries (``grapevine status --fleet``): each
matching node answers with what it has applied and how its last converge went.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import web

from grapevine.policy import runorder, selectors
from grapevine.policy.keys import PublicKey
from grapevine.policy.runorder import RunRefused, RunResult, SignedOrder, SignedResult

from . import executor
from .discovery import AnswerMemory, Discovery

log = logging.getLogger("grapevine.node")

QUERY_KIND = "query"  # broadcast kind of a discovery query (runs and fleet status)
ANSWER_ROUTE = "query.answer"  # node -> origin: "I match"
ORDER_ROUTE = "run.order"  # origin -> node: the signed order
RESULT_ROUTE = "run.result"  # node -> origin: the signed result
KEY_ROUTE = "run.key"  # node -> origin: the node key held at the origin's address (checks tickets)
TICKET_DOMAIN = "grapevine/run-ticket/1"  # what an origin signs for each node it starts

QUERY_TTL_MS = 10_000  # a query broadcast is dropped from seen-sets after this
INLINE_RESULT_S = 1.0  # a command done this soon rides back in the order's reply (one request, not two)
RESULT_GRACE_MS = 5000  # beyond the command timeout, for the result to travel back
RESULT_RETRY_FIRST_S = 0.2  # result post retries back off from here...
RESULT_RETRY_MAX_S = 5.0  # ...to here, until the deadline
MAX_CONCURRENT_RUNS = 16  # commands one node runs at once; more wait their turn
MAX_REPORT_BYTES = 64 * 1024  # a converge report attached to a result, diffs dropped past this
MAX_EXECUTED = 1024  # recent executions a repeated order post from the origin is answered from
ORDER_ATTEMPTS = 3  # posts of one order to one node when the reply does not come back (connection lost)
ORDER_RETRY_S = 0.25  # first pause between them, doubled each time
MAX_ORIGIN_KEYS = 1024  # origin node keys a node keeps (one per agent that ever started a run here)
MAX_CLOSED_QUERIES = 256  # ended runs whose stray discovery answers are still named in the log
MAX_DETAIL_CHARS = 240  # refusal details in peer replies: the envelope decoder caps strings at 320


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Run:
    """Origin-side life of one run."""

    signed: SignedOrder
    keys: dict[str, PublicKey] = field(default_factory=dict)  # targets and the keys they answered with
    results: dict[str, RunResult] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (reason, detail)
    unreachable: dict[str, str] = field(default_factory=dict)
    reply_ms: dict[str, float] = field(default_factory=dict)  # order POST -> reply, per node
    confirmed: dict[str, PublicKey] = field(default_factory=dict)  # keys from order replies (address-bound)
    late: set[str] = field(default_factory=set)  # targets that answered after discovery went quiet
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self, node: str) -> bool:
        return node in self.results or node in self.refused or node in self.unreachable


class RunService:
    """Wires push-style runs and fleet queries into an agent."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self._discoveries: dict[str, Discovery] = {}
        self._closed: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()  # qid -> (run, closed at)
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_RUNS)
        self._answered = AnswerMemory()  # who answered each selector's latest discovery here
        self._executed: collections.OrderedDict[str, asyncio.Task] = collections.OrderedDict()  # run id -> execution
        self._origin_keys: dict[str, PublicKey] = {}  # origin node id -> its node key, fetched at its address
        self.refusals: collections.Counter[str] = collections.Counter()  # orders and results refused here

    def _refused(self, reason: str) -> None:
        """Count a refused order or result here and in the agent's /metrics."""
        self.refusals[reason] += 1
        metrics = getattr(self.agent, "metrics", None)
        if metrics is not None:
            metrics.run_refusals.labels(reason).inc()

    def _count_late(self, when: str) -> None:
        metrics = getattr(self.agent, "metrics", None)
        if metrics is not None:
            metrics.late_answers.labels(when).inc()

    def install(self) -> None:
        a = self.agent
        a.on_broadcast(QUERY_KIND, self._on_query)
        a.add_peer_route(ANSWER_ROUTE, self._on_answer)
        a.add_peer_route(ORDER_ROUTE, self._on_order)
        a.add_peer_route(RESULT_ROUTE, self._on_result)
        a.add_peer_route(KEY_ROUTE, self._on_key_request)
        a.add_api_route("GET", "/v1/run/origin", self._api_origin)
        a.add_api_route("POST", "/v1/run", self._api_run)
        a.add_api_route("POST", "/v1/fleet/query", self._api_query)
        a.add_api_route("GET", "/v1/run/stats", self._api_stats)

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

    # ------------------------------------------------------------- discovery
    async def discover(self, kind: str, selector: str) -> tuple[Discovery, float]:
        """Broadcast a query and collect the answers until they stop."""
        disc = await self._open_discovery(kind, selector)
        try:
            took = await disc.settle()
        finally:
            self._discoveries.pop(disc.qid, None)
        self._answered.remember(selector, disc)
        return disc, took


    async def _open_discovery(self, kind: str, selector: str, arrived: asyncio.Event | None = None) -> Discovery:
        """Broadcast a query; answers collect in the returned discovery until the caller drops it."""
        selectors.parse(selector or None)  # a bad selector is refused here, not by every node
        qid = runorder.new_run_id()
        expected = self._answered.expected(selector)
        awaited = expected
        if not selector:
            # Everyone matches: the peers this node knows are alive (its views) should answer too.
            node = self.agent.node
            awaited = awaited.union(node.active_view, node.passive_view)
        disc = self._discoveries[qid] = Discovery(qid=qid, expected=expected, awaited=awaited - {self.agent.node_id})
        if arrived is not None:
            disc.arrived = arrived
        body = {"q": qid, "o": self.agent.node_id, "s": selector, "k": kind}
        try:
            self.agent.broadcast(QUERY_KIND, body, QUERY_TTL_MS)
            await self._on_query(self.agent.node_id, body, b"")  # the origin is a node too
        except BaseException:
            self._discoveries.pop(qid, None)
            raise
        return disc

    async def _on_query(self, origin: str, body: Any, msg_id: bytes) -> None:
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("q", "o", "s", "k")):
            log.info("malformed query from %s ignored", origin)
            return
        try:
            if not selectors.matches(body["s"] or None, self.agent.facts):
                return
        except selectors.SelectorSyntaxError as exc:
            log.info("query with a bad selector ignored: %s", exc.reason)
            return
        info = self.status_info() if body["k"] == "status" else {}
        answer = {"q": body["q"], "n": self.agent.node_id, "pk": self.agent.node_key.public.raw, "i": info}
        if body["o"] == self.agent.node_id:
            await self._on_answer(answer, remote=False)
            return
        self._spawn(self._send_quietly(body["o"], ANSWER_ROUTE, answer))

    async def _send_quietly(self, node: str, route: str, body: Any) -> None:
        try:
            await self.agent.send_direct(node, route, body)
        except Exception as exc:  # the origin went away: nothing to do but note it
            log.info("%s to %s failed: %s", route, node, exc)

    async def _on_answer(self, body: Any, remote: bool = True) -> dict:
        if not isinstance(body, dict):
            return {"ok": False}
        qid = body.get("q")
        disc = self._discoveries.get(qid) if isinstance(qid, str) else None
        if disc is None:
            closed = self._closed.get(qid) if isinstance(qid, str) else None
            if closed is not None:
                # A target that answered after its run ended was not started: say so, by name.
                self._count_late("after_run")
                log.warning("run %s: %.80r answered discovery %.0f ms after the run had ended; it was not started",
                            closed[0], body.get("n"), (time.monotonic() - closed[1]) * 1000)
            return {"ok": False, "gone": True}
        node, raw, info = body.get("n"), body.get("pk"), body.get("i")
        if not isinstance(node, str) or not isinstance(raw, bytes) or not isinstance(info, dict):
            return {"ok": False}
        try:
            key = PublicKey.from_bytes(raw)
        except Exception:
            return {"ok": False}
        late = remote and node not in disc.answers and disc.last is not None and time.monotonic() > disc.quiet_end()
        if not disc.add(node, key, info, remote=remote):
            self._refused("KeyMismatch")
        elif late:
            self._count_late("during_run")
        return {"ok": True}

    async def _on_key_request(self, body: Any) -> dict:
        return {"n": self.agent.node_id, "pk": self.agent.node_key.public.raw}

    def status_info(self) -> dict:
        """What this node reports to a fleet status query."""
        a = self.agent
        targeted = {b.name for b, _ in a.targeted_bundles()}
        applied = a.state.applied()
        bundles = []
        for name, version, is_applied in a.bundles():
            done = applied.get(name)
            bundles.append({"name": name, "version": _version_text(version), "targeted": name in targeted,
                            "applied": bool(is_applied),
                            "applied_version": _version_text(done[0]) if done else None,
                            "applied_ms": done[1] if done else None})
        rep = a.last_report
        last = None
        if isinstance(rep, dict):
            last = {k: rep.get(k) for k in ("changed", "unchanged", "failed", "skipped", "at_ms", "trigger")}
            last["error"] = str(rep.get("error") or "")[:MAX_DETAIL_CHARS]
        st = a.status()
        return {"bundles": bundles, "last_report": last, "now_ms": now_ms(), "stale": bool(st.get("stale")),
                "last_heard_ms": st.get("last_heard_ms"), "active": st.get("active")}

    # ------------------------------------------------------------- node side
    async def _on_order(self, body: Any) -> dict:
        try:
            wire = body.get("order") if isinstance(body, dict) else None
            signed = SignedOrder.from_wire(wire)
            order = runorder.check_order(signed, root=self.agent.admission.root, now_ms=now_ms(), facts=self.agent.facts)
            if self.agent.state.run_seen(order.run_id):
                again = self._executed.get(order.run_id)
                if body.get("retry") is True and again is not None and await self._sent_by_origin(order, body.get("ticket")):
                    return self._retry_reply(order, again)
                raise RunRefused("Replayed", f"run {order.run_id} was already received here")
            if not await self._sent_by_origin(order, body.get("ticket")):
                raise RunRefused("NotSentByOrigin", f"origin {order.origin} has not sent run {order.run_id} here")
            if not self.agent.state.mark_run_seen(order.run_id, order.deadline_ms):
                raise RunRefused("Replayed", f"run {order.run_id} was already received here")
        except RunRefused as exc:
            self._refused(exc.reason)
            log.warning("refused run order: %s", exc)
            return {"ok": False, "refused": exc.reason, "detail": exc.detail[:MAX_DETAIL_CHARS]}
        log.info("run %s from %s accepted: %s", order.run_id, order.operator,
                 order.action.describe())
        me_pk = self.agent.node_key.public.raw  # the reply binds this key to the address the order went to
        task = self._spawn(self._execute_and_sign(order))
        self._executed[order.run_id] = task
        if len(self._executed) > MAX_EXECUTED:
            self._executed.popitem(last=False)
        done, _ = await asyncio.wait({task}, timeout=INLINE_RESULT_S)
        if task in done and task.exception() is None:
            return {"ok": True, "pk": me_pk, "result": task.result().to_wire()}  # a quick command: the reply carries it
        self._spawn(self._report_later(order, task))
        return {"ok": True, "pk": me_pk}

    def _retry_reply(self, order: runorder.RunOrder, task: asyncio.Task) -> dict:
        """The origin posted an order again (its first reply was lost): answer, never run it twice.

        A finished command's signed result rides in the reply; one still
        running is reported when it ends, as a long command is.
        """
        log.info("run %s: the origin asked again; answering from the execution already under way", order.run_id)
        reply = {"ok": True, "pk": self.agent.node_key.public.raw}
        if task.done() and not task.cancelled() and task.exception() is None:
            reply["result"] = task.result().to_wire()
        elif not task.done():
            self._spawn(self._report_later(order, task))
        return reply

    async def _sent_by_origin(self, order: runorder.RunOrder, ticket: Any) -> bool:
        """Whether the origin itself sent this order here.

        Any target holds the signed order and could post it to every other
        target ahead of the origin's batches. So the origin signs, with its
        node key, a ticket naming the run and this node for every node it
        starts; the origin's key is asked once of the node listening at the
        origin's address (the id is the address) and then kept.
        """
        if not isinstance(ticket, bytes):
            return False
        data = _ticket_bytes(order.run_id, self.agent.node_id)
        for fresh in (False, True):  # a cached key may be stale: the origin's data dir may have been reset
            key = await self._origin_key(order.origin, fresh)
            if key is None:
                return False
            if key.verify(data, ticket):
                return True
        return False

    async def _origin_key(self, origin: str, fresh: bool) -> PublicKey | None:
        if origin == self.agent.node_id:
            return self.agent.node_key.public
        key = None if fresh else self._origin_keys.get(origin)
        if key is not None:
            return key
        try:
            held = await self.agent.send_direct(origin, KEY_ROUTE, {})
            if not isinstance(held, dict) or held.get("n") != origin or not isinstance(held.get("pk"), bytes):
                raise ValueError("the node at that address is another node")
            key = PublicKey.from_bytes(held["pk"])
        except Exception as exc:  # the origin is gone, unreachable or not who the order names
            log.info("origin %s: its node key could not be fetched at its address: %s", origin, exc)
            return None
        if len(self._origin_keys) >= MAX_ORIGIN_KEYS:
            self._origin_keys.pop(next(iter(self._origin_keys)))
        self._origin_keys[origin] = key
        return key

    async def _execute_and_sign(self, order: runorder.RunOrder) -> SignedResult:
        async with self._slots:
            result = await self._execute(order)
        return SignedResult.sign(result, self.agent.node_key)

    async def _report_later(self, order: runorder.RunOrder, task: asyncio.Task) -> None:
        """Post the result to the origin once the command is done, retrying until the deadline."""
        signed = await task
        delay = RESULT_RETRY_FIRST_S
        while True:
            try:
                if order.origin == self.agent.node_id:
                    reply = await self._on_result(signed.to_wire())
                else:
                    reply = await self.agent.send_direct(order.origin, RESULT_ROUTE, signed.to_wire())
                if isinstance(reply, dict) and reply.get("retry"):
                    raise RuntimeError("the origin has not seen this node's reply to the order yet")
                if isinstance(reply, dict) and not reply.get("ok") and not reply.get("gone"):
                    log.warning("origin %s refused the result of run %s: %s",
                                order.origin, order.run_id, reply.get("refused"))
                return
            except Exception as exc:
                if now_ms() + delay * 1000 > order.deadline_ms:
                    log.warning("result of run %s could not reach %s before the deadline: %s",
                                order.run_id, order.origin, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESULT_RETRY_MAX_S)

    async def _execute(self, order: runorder.RunOrder) -> RunResult:
        action, timeout_s = order.action, order.timeout_ms / 1000
        base = {"run_id": order.run_id, "node": self.agent.node_id}
        if action.kind == "converge":
            return await self._converge(order, base, timeout_s)
        argv = list(action.argv) if action.kind == "command" else executor.shell_argv(action.shell)
        res = await executor.execute(argv, timeout_s=timeout_s, user=self.agent.config.run_user or None)
        return RunResult(**base, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr,
                         duration_ms=res.duration_ms, error=res.error,
                         truncated=bool(res.stdout_dropped or res.stderr_dropped))

    async def _converge(self, order: runorder.RunOrder, base: dict, timeout_s: float) -> RunResult:
        started = time.monotonic()
        names = [b.split("@", 1)[0] for b in order.action.bundles]
        try:
            await asyncio.wait_for(self._await_bundles(order.action.bundles), timeout_s)
            report = await asyncio.wait_for(self.agent.converge_now(names or None),
                                            max(0.01, timeout_s - (time.monotonic() - started)))
        except asyncio.TimeoutError:
            return RunResult(**base, exit_code=executor.TIMEOUT_EXIT, stdout=b"", stderr=b"",
                             duration_ms=int((time.monotonic() - started) * 1000),
                             error=f"converge did not finish within {timeout_s:g} s")
        except Exception as exc:  # a converge that blew up is a failed result, not a dead agent
            log.exception("converge for run %s failed", order.run_id)
            return RunResult(**base, exit_code=1, stdout=b"", stderr=b"", error=f"converge failed: {exc}",
                             duration_ms=int((time.monotonic() - started) * 1000))
        report = report if isinstance(report, dict) else {}
        counts = {k: int(report.get(k) or 0) for k in ("changed", "unchanged", "failed", "skipped")}
        summary = " ".join(f"{k} {v}" for k, v in counts.items()) + "\n"
        packed = msgpack.packb(_jsonable(report), use_bin_type=True)
        if len(packed) > MAX_REPORT_BYTES:
            slim = dict(report, resources=[{k: v for k, v in r.items() if k != "diff"} for r in report.get("resources", [])])
            packed = msgpack.packb(_jsonable(slim), use_bin_type=True)
            if len(packed) > MAX_REPORT_BYTES:
                packed = msgpack.packb(counts)
        return RunResult(**base, exit_code=1 if counts["failed"] else 0, stdout=summary.encode(), stderr=b"",
                         duration_ms=int((time.monotonic() - started) * 1000), report=packed)

    async def _await_bundles(self, specs: tuple[str, ...]) -> None:
        """Wait until this node holds each ``name@wall.counter`` at that version or newer."""
        wanted = {}
        for spec in specs:
            if "@" in spec:
                name, stamp = spec.split("@", 1)
                try:
                    wall, counter = (int(x) for x in stamp.split(".", 1))
                except ValueError:
                    continue
                wanted[name] = (wall, counter)
        delay = 0.02
        while wanted:
            held = {e[0]: _stamp(e[1]) for e in self.agent.bundles()}
            wanted = {n: v for n, v in wanted.items() if held.get(n) is None or held[n] < v}
            if wanted:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------- origin side
    async def _on_result(self, body: Any) -> dict:
        try:
            signed = SignedResult.from_wire(body)
        except RunRefused as exc:
            self._refused(exc.reason)
            log.warning("refused malformed run result: %s", exc)
            return {"ok": False, "refused": exc.reason}
        claimed = signed.result
        run = self._runs.get(claimed.run_id)
        if run is None:
            return {"ok": False, "gone": True}
        try:
            if claimed.node not in run.keys:
                raise RunRefused("UnknownNode", f"result for run {claimed.run_id} from {claimed.node}, which is not a target")
            key = run.confirmed.get(claimed.node)
            if key is None:  # no reply to the order yet: only the discovery key to check against
                signed.verify(run.keys[claimed.node], run_id=claimed.run_id, node=claimed.node)
                return {"ok": False, "retry": True}  # kept until the node's own address confirms the key
            result = signed.verify(key, run_id=claimed.run_id, node=claimed.node)
        except RunRefused as exc:
            self._refused(exc.reason)
            log.warning("refused run result: %s", exc)
            run.events.put_nowait({"event": "refused_result", "node": claimed.node, "reason": exc.reason,
                                   "detail": exc.detail})
            return {"ok": False, "refused": exc.reason}
        if result.node not in run.results:
            run.results[result.node] = result
            run.events.put_nowait({"event": "result", **result.to_json()})
            run.changed.set()
        return {"ok": True}

    async def _post_order(self, run: _Run, node: str) -> None:
        """Post the order to one target; a lost reply is asked again (the node never runs it twice)."""
        body = {"order": run.signed.to_wire(),
                "ticket": self.agent.node_key.sign(_ticket_bytes(run.signed.order.run_id, node))}
        sent = time.monotonic()
        pause = ORDER_RETRY_S
        for attempt in range(ORDER_ATTEMPTS):
            try:
                if node == self.agent.node_id:
                    reply = await self._on_order(body)
                else:
                    reply = await self.agent.send_direct(node, ORDER_ROUTE, body)
                break
            except Exception as exc:
                if attempt + 1 < ORDER_ATTEMPTS and now_ms() + pause * 1000 < run.signed.order.deadline_ms:
                    log.info("run %s: order to %s got no reply (%s); asking again", run.signed.order.run_id, node, exc)
                    await asyncio.sleep(pause)
                    pause *= 2
                    body["retry"] = True
                    continue
                run.unreachable[node] = str(exc) or type(exc).__name__
                run.events.put_nowait({"event": "unreachable", "node": node, "detail": run.unreachable[node]})
                run.changed.set()
                return
        run.reply_ms[node] = (time.monotonic() - sent) * 1000
        if isinstance(reply, dict) and reply.get("ok"):
            self._bind_key(run, node, reply.get("pk"))
            if reply.get("result") is not None:
                await self._on_result(reply["result"])
        elif isinstance(reply, dict) and not reply.get("ok"):
            reason, detail = str(reply.get("refused") or "Refused"), str(reply.get("detail") or "")
            run.refused[node] = (reason, detail)
            run.events.put_nowait({"event": "refused", "node": node, "reason": reason, "detail": detail})
            run.changed.set()

    def _bind_key(self, run: _Run, node: str, raw: Any) -> None:
        """The key in the order reply came from the node at that id's address: results verify with it.

        Anyone holding the network key can answer discovery in another node's
        name; only the node listening at the id's address answers the order.
        """
        try:
            key = PublicKey.from_bytes(raw) if isinstance(raw, bytes) else None
        except Exception:
            key = None
        if key is None:
            return  # results stay unverifiable for this node and are refused
        if run.keys.get(node) != key:
            self._refused("KeyMismatch")
            log.warning("run %s: discovery named key %s for %s, the node at its address holds %s",
                        run.signed.order.run_id, getattr(run.keys.get(node), "key_id", None), node, key.key_id)
        run.confirmed[node] = key

    async def run(self, signed: SignedOrder, *, batch: runorder.BatchSize | None,
                  max_failures: int | None) -> dict:
        """Drive one run to the end; progress goes to ``self._runs[id].events``.

        Discovery stays open for as long as the run does: a node whose answer
        comes after the quiet window (its copy of the query took a repaired
        path through the tree, or it was busy) is still started, in the
        running batch or in one more batch after the planned ones, and is
        listed in ``late_targets``.
        """
        order = signed.order
        run = self._runs[order.run_id]
        disc = await self._open_discovery("run", order.selector, arrived=run.changed)
        try:
            if batch is None:
                took, batches = await self._run_at_once(run, disc)
                stopped_reason = None
            else:
                took, batches, stopped_reason = await self._run_in_batches(run, disc, batch, max_failures)
        finally:
            self._discoveries.pop(disc.qid, None)
            self._answered.remember(order.selector, disc)
            self._closed[disc.qid] = (order.run_id, time.monotonic())
            if len(self._closed) > MAX_CLOSED_QUERIES:
                self._closed.popitem(last=False)
        targets = sorted(run.keys)
        ran = [n for b in batches for n in b["nodes"]]
        results = [run.results[n] for n in ran if n in run.results]
        doc = {
            "run_id": order.run_id,
            "origin": order.origin,
            "action": order.action.describe(),
            "selector": order.selector,
            "targets": targets,
            "results": [r.to_json() for r in results],
            "failed": sorted({r.node for r in results if not r.ok} | set(run.refused)),
            "missing": sorted({n for n in ran if n not in run.results and n not in run.refused} | set(disc.silent())),
            "silent": disc.silent(),
            "refused": [{"node": n, "reason": r, "detail": d} for n, (r, d) in sorted(run.refused.items())],
            "not_started": sorted(set(targets) - set(ran)),
            "unreachable": {n: run.unreachable[n] for n in sorted(run.unreachable)},
            "late_targets": sorted(run.late),
            "batches": batches,
            "stopped_reason": stopped_reason,
            "discovery_ms": int(took),
            "last_answer_ms": disc.last_answer_ms(),
            "order_reply_ms": _percentiles(list(run.reply_ms.values())),
            "duration_ms": int((time.monotonic() - disc.started) * 1000),
        }
        doc["ok"] = not doc["failed"] and not doc["missing"] and stopped_reason is None
        return doc

    def _take_answers(self, run: _Run, disc: Discovery, late: bool) -> list[str]:
        """Targets that answered since the last call, now known to the run (arrival order)."""
        new = [n for n in disc.answers if n not in run.keys]
        for node in new:
            run.keys[node] = disc.answers[node][0]
            if late:
                run.late.add(node)
                run.events.put_nowait({"event": "late_target", "node": node,
                                       "after_ms": int((time.monotonic() - disc.started) * 1000)})
        return new

    def _targets_event(self, run: _Run, disc: Discovery, took: float, batches: int) -> None:
        last = int((disc.last - disc.started) * 1000) if disc.last is not None else None
        run.events.put_nowait({"event": "targets", "targets": sorted(run.keys), "discovery_ms": int(took),
                               "last_answer_ms": disc.last_answer_ms(), "batches": batches})

    async def _run_at_once(self, run: _Run, disc: Discovery) -> tuple[float, list[dict]]:
        """No batches: start each target the moment its answer arrives.

        The quiet window that ends discovery then overlaps the commands
        themselves. The run ends once discovery is quiet and every target
        started has settled, or the results' time is up.
        """
        order = run.signed.order
        started: list[str] = []
        posts: list[asyncio.Task] = []
        took: float | None = None
        wait_until = order.deadline_ms
        try:
            while True:
                run.changed.clear()
                new = self._take_answers(run, disc, late=took is not None)
                for node in new:
                    started.append(node)
                    posts.append(self._spawn(self._post_order(run, node)))
                if new:
                    wait_until = min(order.deadline_ms, now_ms() + order.timeout_ms + RESULT_GRACE_MS)
                now = time.monotonic()
                end = disc.quiet_end()  # moves on when a late answer arrives: more may follow it
                if took is None and now >= end:
                    took = (now - disc.started) * 1000
                    self._targets_event(run, disc, took, 1)
                    run.events.put_nowait({"event": "batch", "index": 0, "nodes": sorted(started)})
                if now_ms() >= wait_until or (now >= end and all(run.settled(n) for n in started)):
                    break
                timeout = (wait_until - now_ms()) / 1000
                if now < end:
                    timeout = min(timeout, end - now)
                try:
                    await asyncio.wait_for(run.changed.wait(), max(0.001, timeout))
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in posts:
                if not task.done():
                    task.cancel()
        if took is None:
            took = (time.monotonic() - disc.started) * 1000
            self._targets_event(run, disc, took, 1)
        failed = [n for n in started if not (n in run.results and run.results[n].ok)]
        return took, [{"index": 0, "nodes": sorted(started), "failed": sorted(failed)}]

    async def _run_in_batches(self, run: _Run, disc: Discovery, batch: runorder.BatchSize,
                              max_failures: int | None) -> tuple[float, list[dict], str | None]:
        """Batches in turn over the targets discovery found; late answerers form more batches."""
        order = run.signed.order
        took = await disc.settle()
        plan = runorder.plan_batches(self._take_answers(run, disc, late=False), batch)
        size = len(plan[0]) if plan else 1  # a share of the targets is fixed once, at the first plan
        self._targets_event(run, disc, took, len(plan))
        batches: list[dict] = []
        failures, stopped_reason, index = 0, None, 0
        while plan:
            nodes = plan.pop(0)
            if runorder.should_stop(failures, max_failures):
                stopped_reason = (f"{failures} failure(s) passed --max-failures {max_failures}; "
                                  f"{len(nodes) + sum(len(b) for b in plan)} node(s) not started")
                break
            if now_ms() > order.deadline_ms:
                stopped_reason = "the run deadline passed"
                break
            run.events.put_nowait({"event": "batch", "index": index, "nodes": nodes})
            sent = now_ms()
            await asyncio.gather(*(self._post_order(run, n) for n in nodes))
            wait_until = min(order.deadline_ms, sent + order.timeout_ms + RESULT_GRACE_MS)
            while not all(run.settled(n) for n in nodes) and now_ms() < wait_until:
                run.changed.clear()
                if all(run.settled(n) for n in nodes):
                    break
                try:
                    await asyncio.wait_for(run.changed.wait(), max(0.0, (wait_until - now_ms()) / 1000))
                except asyncio.TimeoutError:
                    pass
            failed_here = [n for n in nodes if not (n in run.results and run.results[n].ok)]
            failures += len(failed_here)
            batches.append({"index": index, "nodes": nodes, "failed": failed_here})
            index += 1
            late = self._take_answers(run, disc, late=True)
            if late:
                plan.extend(runorder.plan_batches(late, runorder.BatchSize(count=size)))
        return took, batches, stopped_reason

    # ------------------------------------------------------------- local API
    async def _api_origin(self, request: web.Request) -> web.Response:
        return web.json_response({"node_id": self.agent.node_id, "now_ms": now_ms()})

    async def _api_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"refusals": dict(self.refusals), "active_runs": len(self._runs)})

    async def _api_query(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
            kind, sel = str(req.get("kind") or "status"), str(req.get("selector") or "")
            disc, took = await self.discover(kind, sel)
        except (ValueError, selectors.SelectorSyntaxError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"answers": {n: _jsonable(i) for n, (_, i) in disc.answers.items()},
                                  "discovery_ms": int(took), "origin": self.agent.node_id})

    async def _api_run(self, request: web.Request) -> web.StreamResponse:
        try:
            req = await request.json()
            signed = SignedOrder.decode(bytes.fromhex(req["order"]))
            batch = runorder.BatchSize.parse(req.get("batch"))
            max_failures = req.get("max_failures")
            if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 0):
                raise ValueError("max_failures must be a non-negative integer")
            runorder.check_order(signed, root=self.agent.admission.root, now_ms=now_ms(), facts=None)
            if signed.order.origin != self.agent.node_id:
                raise RunRefused("WrongOrigin", f"order is for origin {signed.order.origin}, this is {self.agent.node_id}")
            if signed.order.run_id in self._runs:
                raise RunRefused("Replayed", f"run {signed.order.run_id} is already in progress")
        except (ValueError, KeyError, TypeError, RunRefused, runorder.ConfigError) as exc:
            log.warning("run request refused: %s", exc)
            return web.json_response({"error": str(exc)}, status=400)
        run = self._runs[signed.order.run_id] = _Run(signed=signed)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await _write(resp, {"event": "accepted", "run_id": signed.order.run_id, "origin": self.agent.node_id})
        task = asyncio.ensure_future(self.run(signed, batch=batch, max_failures=max_failures))
        try:
            while True:
                getter = asyncio.ensure_future(run.events.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await _write(resp, getter.result())
                    continue
                getter.cancel()
                while not run.events.empty():
                    await _write(resp, run.events.get_nowait())
                await _write(resp, {"event": "done", "summary": task.result()})
                break
        except Exception as exc:  # the client went away or the run failed: end it here
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                log.error("run %s failed: %s", signed.order.run_id, task.exception())
                try:
                    await _write(resp, {"event": "error", "detail": str(task.exception())})
                except Exception:
                    pass
            log.info("run %s stream ended early: %s", signed.order.run_id, exc)
        finally:
            # late results for this id are answered "gone" so nodes stop retrying
            self._runs.pop(signed.order.run_id, None)
        try:
            await resp.write_eof()
        except Exception:
            pass
        return resp


async def _write(resp: web.StreamResponse, event: dict) -> None:
    await resp.write((json.dumps(event, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def _ticket_bytes(run_id: str, node: str) -> bytes:
    return msgpack.packb([TICKET_DOMAIN, run_id, node], use_bin_type=True)


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    v = sorted(values)
    return {"p50": round(v[len(v) // 2], 1), "p90": round(v[min(len(v) - 1, len(v) * 9 // 10)], 1), "max": round(v[-1], 1)}


def _version_text(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (tuple, list)) and len(v) >= 2:
        return f"{v[0]}.{v[1]}" + (f".{v[2]}" if len(v) > 2 else "")
    return str(v)


def _stamp(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)) and len(v) >= 2:
        return int(v[0]), int(v[1])
    if isinstance(v, str):
        parts = v.replace("@", ".").split(".")
        try:
            return int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            return None
    return None
