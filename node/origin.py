"""The run origin as a sans-I/O state machine: ``RunCoordinator``.

One coordinator drives one run at the agent the command line talks to. It
never sleeps, sends or reads a clock: the shell (node/runs.py) feeds it the
time (monotonic seconds) with every call and carries out the effects it
returns, then calls ``poll`` again at ``next_deadline()`` or when something
arrived.

What it decides:

- whom to start and when. Without batches each target is started the moment
  its discovery answer arrives, so the quiet window overlaps the commands;
  with batches, the first batch starts once discovery is quiet, each batch
  after the previous one settled or ran out of time, targets that answered
  late form more batches of the same size, and no batch starts once failures
  pass ``max_failures`` or the deadline passed;
- asking again when the reply to an order was lost (``ORDER_ATTEMPTS``, the
  pause doubling from ``ORDER_RETRY_S``): the node answers a repeat from the
  execution it already has and never runs an order twice;
- which results count: a result is verified with the node key the node
  confirmed at its own address (its reply to the order); one that comes
  before that reply is answered ``retry``; anything else is refused and
  counted (``UnknownNode``, ``BadSignature``, ``KeyMismatch``);
- when the run is over, and the summary the command line prints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Union

from grapevine.gossip.errors import GrapevineError, Reason
from grapevine.policy import runorder
from grapevine.policy.keys import PublicKey
from grapevine.policy.runorder import RunRefused, RunResult, SignedOrder, SignedResult

from .discovery import Discovery

log = logging.getLogger("grapevine.node")

RESULT_GRACE_MS = 5000  # beyond the command timeout, for the result to travel back
ORDER_ATTEMPTS = 3  # posts of one order to one node when the reply does not come back (connection lost)
ORDER_RETRY_S = 0.25  # first pause between them, doubled each time

# The life of a run at its origin. Discovering: answers arrive, and without
# batches each answerer is already started; running: discovery went quiet
# (it stays open: late answerers are still started); done: the summary is out.
DISCOVERING, RUNNING, DONE = "discovering", "running", "done"
TRANSITIONS = {DISCOVERING: {RUNNING, DONE}, RUNNING: {DONE}, DONE: set()}


class RunStateError(GrapevineError):
    """A run-origin transition that is not in ``TRANSITIONS`` (a bug, never input from outside)."""

    reason = Reason.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class PostOrder:
    """Post the order to ``node`` at time ``at`` (``retry``: a repeat after a lost reply)."""

    node: str
    at: float
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Emit:
    """One progress event for the command line's stream."""

    event: dict


@dataclass(frozen=True, slots=True)
class Count:
    """A refusal to count in /metrics (``reason``)."""

    reason: Reason
    detail: str = ""


Effect = Union[PostOrder, Emit, Count]


@dataclass(slots=True)
class _Batch:
    index: int
    nodes: list[str]
    until: float


@dataclass(slots=True)
class RunCoordinator:
    """Origin-side life of one run."""

    signed: SignedOrder
    disc: Discovery
    now: float  # when the run began (monotonic seconds)
    wall_ms: int  # the wall clock at that moment: order deadlines are wall-clock times
    batch: runorder.BatchSize | None = None
    max_failures: int | None = None
    keys: dict[str, PublicKey] = field(default_factory=dict)  # targets and the keys they answered with
    results: dict[str, RunResult] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (reason, detail)
    unreachable: dict[str, str] = field(default_factory=dict)
    reply_ms: dict[str, float] = field(default_factory=dict)  # order post -> reply, per node
    confirmed: dict[str, PublicKey] = field(default_factory=dict)  # keys from order replies (address-bound)
    late: set[str] = field(default_factory=set)  # targets that answered after discovery went quiet
    summary: dict | None = None  # set once the run is over
    phase: str = DISCOVERING
    _sent: dict[str, float] = field(default_factory=dict)  # node -> first post
    _attempts: dict[str, int] = field(default_factory=dict)
    _took: float | None = None  # discovery time (ms), once it went quiet
    _started: list[str] = field(default_factory=list)  # without batches: targets started so far
    _until: float = 0.0  # without batches: when the results' time is up
    _plan: list[list[str]] | None = None  # batches still to run (None: discovery not quiet yet)
    _size: int = 1
    _current: _Batch | None = None
    _batches: list[dict] = field(default_factory=list)
    _failures: int = 0
    _stopped: str | None = None

    def __post_init__(self) -> None:
        self._until = self._deadline()

    # -- time ------------------------------------------------------------
    def _deadline(self) -> float:
        return self.now + (self.signed.order.deadline_ms - self.wall_ms) / 1000

    def _wall(self, now: float) -> int:
        return self.wall_ms + int((now - self.now) * 1000)

    def _results_due(self, now: float) -> float:
        order = self.signed.order
        return min(self._deadline(), now + (order.timeout_ms + RESULT_GRACE_MS) / 1000)

    @property
    def done(self) -> bool:
        return self.phase == DONE

    def _enter(self, phase: str) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise RunStateError(f"run {self.signed.order.run_id}: no transition from {self.phase} to {phase}")
        self.phase = phase

    def settled(self, node: str) -> bool:
        return node in self.results or node in self.refused or node in self.unreachable

    def next_deadline(self) -> float:
        """When ``poll`` has something to do even if nothing arrives."""
        if self.done:
            return float("inf")
        end = self.disc.quiet_end()
        if self.batch is None:
            return min(self._until, end) if self.phase == DISCOVERING else self._until
        if self.phase == DISCOVERING:
            return end
        return self._current.until if self._current is not None else self.now

    # -- the run -----------------------------------------------------------
    def poll(self, now: float) -> list[Effect]:
        if self.done:
            return []
        out: list[Effect] = []
        if self.batch is None:
            self._poll_at_once(now, out)
        else:
            self._poll_batches(now, out)
        return out

    def _take_answers(self, now: float, late: bool, out: list[Effect]) -> list[str]:
        """Targets that answered since the last call, now known to the run (arrival order)."""
        new = [n for n in self.disc.answers if n not in self.keys]
        for node in new:
            self.keys[node] = self.disc.answers[node][0]
            if late:
                self.late.add(node)
                out.append(Emit({"event": "late_target", "node": node, "after_ms": self.disc.elapsed_ms(now)}))
        return new

    def _targets(self, batches: int, out: list[Effect]) -> None:
        out.append(Emit({"event": "targets", "targets": sorted(self.keys), "discovery_ms": int(self._took or 0),
                         "last_answer_ms": self.disc.last_answer_ms(), "batches": batches}))

    def _post(self, node: str, now: float, out: list[Effect]) -> None:
        self._sent[node] = now
        self._attempts[node] = 1
        out.append(PostOrder(node, now))

    def _poll_at_once(self, now: float, out: list[Effect]) -> None:
        new = self._take_answers(now, self.phase != DISCOVERING, out)
        for node in new:
            self._started.append(node)
            self._post(node, now, out)
        if new:
            self._until = self._results_due(now)
        end = self.disc.quiet_end()  # moves on when a late answer arrives: more may follow it
        if self.phase == DISCOVERING and now >= end:
            self._took = self.disc.elapsed_ms(now)
            self._targets(1, out)
            out.append(Emit({"event": "batch", "index": 0, "nodes": sorted(self._started)}))
            self._enter(RUNNING)
        if now >= self._until or (now >= end and all(self.settled(n) for n in self._started)):
            if self.phase == DISCOVERING:  # the deadline came before discovery went quiet
                self._took = self.disc.elapsed_ms(now)
                self._targets(1, out)
            failed = [n for n in self._started if not (n in self.results and self.results[n].ok)]
            self._batches = [{"index": 0, "nodes": sorted(self._started), "failed": sorted(failed)}]
            self._finish(now)

    def _poll_batches(self, now: float, out: list[Effect]) -> None:
        if self.phase == DISCOVERING:
            if now < self.disc.quiet_end():
                return
            self._took = self.disc.elapsed_ms(now)
            self._plan = runorder.plan_batches(self._take_answers(now, False, out), self.batch)
            self._size = len(self._plan[0]) if self._plan else 1  # a share of the targets is fixed once
            self._targets(len(self._plan), out)
            self._enter(RUNNING)
        cur = self._current
        if cur is not None:
            if not all(self.settled(n) for n in cur.nodes) and now < cur.until:
                return
            failed_here = [n for n in cur.nodes if not (n in self.results and self.results[n].ok)]
            self._failures += len(failed_here)
            self._batches.append({"index": cur.index, "nodes": cur.nodes, "failed": failed_here})
            self._current = None
            late = self._take_answers(now, True, out)
            if late:
                self._plan.extend(runorder.plan_batches(late, runorder.BatchSize(count=self._size)))
        if not self._plan:
            self._finish(now)
            return
        nodes = self._plan.pop(0)
        if runorder.should_stop(self._failures, self.max_failures):
            self._stopped = (f"{self._failures} failure(s) passed --max-failures {self.max_failures}; "
                             f"{len(nodes) + sum(len(b) for b in self._plan)} node(s) not started")
            self._finish(now)
            return
        if self._wall(now) > self.signed.order.deadline_ms:
            self._stopped = "the run deadline passed"
            self._finish(now)
            return
        index = len(self._batches)
        out.append(Emit({"event": "batch", "index": index, "nodes": nodes}))
        self._current = _Batch(index, nodes, self._results_due(now))
        for node in nodes:
            self._post(node, now, out)

    # -- replies and results ----------------------------------------------
    def on_post_failed(self, node: str, detail: str, now: float) -> list[Effect]:
        """The post of the order to ``node`` got no reply: ask again, or give the node up as unreachable."""
        if self.done or self.settled(node):
            return []
        tries = self._attempts.get(node, 1)
        pause = ORDER_RETRY_S * 2 ** (tries - 1)
        if tries < ORDER_ATTEMPTS and self._wall(now) + pause * 1000 < self.signed.order.deadline_ms:
            self._attempts[node] = tries + 1
            log.info("run %s: order to %s got no reply (%s); asking again", self.signed.order.run_id, node, detail)
            return [PostOrder(node, now + pause, retry=True)]
        self.unreachable[node] = detail
        return [Emit({"event": "unreachable", "node": node, "detail": detail})]

    def on_reply(self, node: str, reply: Any, now: float) -> list[Effect]:
        """The node's reply to the order: its key (bound to its address), maybe its result, or a refusal."""
        out: list[Effect] = []
        self.reply_ms[node] = (now - self._sent.get(node, now)) * 1000
        if isinstance(reply, dict) and reply.get("ok"):
            self._bind_key(node, reply.get("pk"), out)
            if reply.get("result") is not None:
                out += self.on_result(reply["result"], now)[1]
        elif isinstance(reply, dict) and not self.settled(node):
            reason, detail = Reason.from_text(reply.get("refused")), str(reply.get("detail") or "")
            self.refused[node] = (reason, detail)
            out.append(Emit({"event": "refused", "node": node, "reason": reason, "detail": detail}))
        return out

    def _bind_key(self, node: str, raw: Any, out: list[Effect]) -> None:
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
        if self.keys.get(node) != key:
            out.append(Count("KeyMismatch", f"run {self.signed.order.run_id}: discovery named key "
                             f"{getattr(self.keys.get(node), 'key_id', None)} for {node}, the node at its address "
                             f"holds {key.key_id}"))
        self.confirmed[node] = key

    def on_result(self, wire: Any, now: float) -> tuple[dict, list[Effect]]:
        """A signed result posted by a target (or riding in its reply): the reply to send, and the effects."""
        try:
            signed = wire if isinstance(wire, SignedResult) else SignedResult.from_wire(wire)
        except RunRefused as exc:
            return {"ok": False, "refused": exc.reason}, [Count(exc.reason, f"malformed run result: {exc}")]
        claimed = signed.result
        try:
            if claimed.run_id != self.signed.order.run_id:
                raise RunRefused("Malformed", f"result names run {claimed.run_id}, this is {self.signed.order.run_id}")
            if claimed.node not in self.keys:
                raise RunRefused("UnknownNode", f"result for run {claimed.run_id} from {claimed.node}, which is not a target")
            key = self.confirmed.get(claimed.node)
            if key is None:  # no reply to the order yet: only the discovery key to check against
                signed.verify(self.keys[claimed.node], run_id=claimed.run_id, node=claimed.node)
                return {"ok": False, "retry": True}, []  # kept until the node's own address confirms the key
            result = signed.verify(key, run_id=claimed.run_id, node=claimed.node)
        except RunRefused as exc:
            return {"ok": False, "refused": exc.reason}, [
                Count(exc.reason, f"refused run result: {exc}"),
                Emit({"event": "refused_result", "node": claimed.node, "reason": exc.reason, "detail": exc.detail})]
        if result.node in self.results:
            return {"ok": True}, []
        self.results[result.node] = result
        return {"ok": True}, [Emit({"event": "result", **result.to_json()})]

    # -- the end -------------------------------------------------------------
    def _finish(self, now: float) -> None:
        order, disc = self.signed.order, self.disc
        batches = self._batches
        targets = sorted(self.keys)
        ran = [n for b in batches for n in b["nodes"]]
        results = [self.results[n] for n in ran if n in self.results]
        doc = {
            "run_id": order.run_id,
            "origin": order.origin,
            "action": order.action.describe(),
            "selector": order.selector,
            "targets": targets,
            "results": [r.to_json() for r in results],
            "failed": sorted({r.node for r in results if not r.ok} | set(self.refused)),
            "missing": sorted({n for n in ran if n not in self.results and n not in self.refused} | set(disc.silent())),
            "silent": disc.silent(),
            "refused": [{"node": n, "reason": r, "detail": d} for n, (r, d) in sorted(self.refused.items())],
            "not_started": sorted(set(targets) - set(ran)),
            "unreachable": {n: self.unreachable[n] for n in sorted(self.unreachable)},
            "late_targets": sorted(self.late),
            "batches": batches,
            "stopped_reason": self._stopped,
            "discovery_ms": int(self._took or 0),
            "last_answer_ms": disc.last_answer_ms(),
            "order_reply_ms": percentiles(list(self.reply_ms.values())),
            "duration_ms": disc.elapsed_ms(now),
        }
        doc["ok"] = not doc["failed"] and not doc["missing"] and self._stopped is None
        self.summary = doc
        self._enter(DONE)


def percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    v = sorted(values)
    return {"p50": round(v[len(v) // 2], 1), "p90": round(v[min(len(v) - 1, len(v) * 9 // 10)], 1), "max": round(v[-1], 1)}
