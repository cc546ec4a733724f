"""The run target's I/O: execute an accepted order and sign what came of it.

``RunTarget`` (node/target.py) decides; this module carries out: a command
through ``executor.execute`` (timeout, bounded output, the configured user),
or a converge (or a preview, node/preview.py) through the node's ``LocalWork`` port, at most
``MAX_CONCURRENT_RUNS`` at once, the result signed with the node key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import msgpack

from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import Version
from grapevine.gossip.wire import MAX_REPORT_BYTES
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunResult, SignedResult

from . import executor

log = logging.getLogger("grapevine.node")

MAX_CONCURRENT_RUNS = 16  # commands one node runs at once; more wait their turn
# A preview's plan is the whole result (no output streams), so it may fill what the two streams
# would (MAX_RESULT_BYTES), less room for the other fields; diff text is dropped past it.
MAX_PLAN_BYTES = runorder.MAX_RESULT_BYTES - 8 * 1024
BUNDLE_POLL_FIRST_S = 0.02  # a converge order waits for the bundles it names: first look after this...
BUNDLE_POLL_MAX_S = 0.5  # ...then backing off to this


class LocalWork(Protocol):
    """What a run order needs of its own node besides a subprocess."""

    async def converge_now(self, bundle_names: list[str] | None = None) -> dict: ...

    def bundles(self) -> list[tuple[str, Any, bool]]: ...

    async def preview(self, items: list, timeout_s: float) -> dict: ...  # node/preview.py


class Execution:
    """Runs accepted orders on this node and signs their results."""

    def __init__(self, me: str, node_key: SigningKey, local: LocalWork, *, run_user: str | None,
                 on_done: Callable[[runorder.RunOrder, int, RunResult], None]) -> None:
        self.me = me
        self.node_key = node_key
        self.local = local
        self.run_user = run_user or None
        self.on_done = on_done  # (order, started wall ms, result): the audit trail
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_RUNS)

    async def execute_and_sign(self, order: runorder.RunOrder) -> SignedResult:
        async with self._slots:
            started = time.time_ns() // 1_000_000
            result = await self._execute(order)
        try:
            self.on_done(order, started, result)
        except Exception:  # the audit trail failing must not lose the result
            log.exception("run %s: the audit record could not be written", order.run_id)
        return SignedResult.sign(result, self.node_key)

    async def _execute(self, order: runorder.RunOrder) -> RunResult:
        action, timeout_s = order.action, order.timeout_ms / 1000
        base = {"run_id": order.run_id, "node": self.me}
        if action.kind == "converge":
            return await self._converge(order, base, timeout_s)
        if action.kind == "preview":
            return await self._preview(order, base, timeout_s)
        argv = list(action.argv) if action.kind == "command" else executor.shell_argv(action.shell)
        res = await executor.execute(argv, timeout_s=timeout_s, user=self.run_user)
        return RunResult(**base, exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr,
                         duration_ms=res.duration_ms, error=res.error,
                         truncated=bool(res.stdout_dropped or res.stderr_dropped))

    async def _converge(self, order: runorder.RunOrder, base: dict, timeout_s: float) -> RunResult:
        started = time.monotonic()
        names = [b.split("@", 1)[0] for b in order.action.bundles]
        try:
            await asyncio.wait_for(self._await_bundles(order.action.bundles), timeout_s)
            report = await asyncio.wait_for(self.local.converge_now(names or None),
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
        return RunResult(**base, exit_code=1 if counts["failed"] else 0, stdout=summary.encode(), stderr=b"",
                         duration_ms=int((time.monotonic() - started) * 1000), report=slim_report(report, counts))

    async def _preview(self, order: runorder.RunOrder, base: dict, timeout_s: float) -> RunResult:
        """Dry-run the order's candidates here (node/preview.py); the plan is the result's report."""
        from grapevine.policy import preview as plans

        started = time.monotonic()
        try:
            plan = await self.local.preview(order.action.candidate_items(), timeout_s)
        except Exception as exc:  # a preview that blew up is a failed result, not a dead agent
            log.exception("preview for run %s failed", order.run_id)
            plan = plans.plan_from_report({"error": f"preview failed: {exc}"}, [])
        why = plans.plan_failure(plan)
        changed = sum(1 for r in plan["resources"] if r["status"] in ("changed", "skipped"))
        return RunResult(**base, exit_code=1 if why else 0, stdout=f"{changed} change(s) planned\n".encode(),
                         stderr=b"", error=(why or "")[:runorder.MAX_STRING],
                         duration_ms=int((time.monotonic() - started) * 1000),
                         report=plans.fit_plan(jsonable(plan), MAX_PLAN_BYTES))

    async def _await_bundles(self, specs: tuple[str, ...]) -> None:
        """Wait until this node holds each ``name@wall.counter`` at that version or newer."""
        wanted = wanted_versions(specs)
        delay = BUNDLE_POLL_FIRST_S
        while wanted:
            held = {e[0]: stamp(e[1]) for e in self.local.bundles()}
            wanted = {n: v for n, v in wanted.items() if held.get(n) is None or held[n] < v}
            if wanted:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BUNDLE_POLL_MAX_S)


def slim_report(report: dict, counts: dict) -> bytes:
    """The converge report packed for a result: without diffs past ``MAX_REPORT_BYTES``, counts only past that."""
    packed = msgpack.packb(jsonable(report), use_bin_type=True)
    if len(packed) > MAX_REPORT_BYTES:
        slim = dict(report, resources=[{k: v for k, v in r.items() if k != "diff"} for r in report.get("resources", [])])
        packed = msgpack.packb(jsonable(slim), use_bin_type=True)
        if len(packed) > MAX_REPORT_BYTES:
            packed = msgpack.packb(counts)
    return packed


def wanted_versions(specs: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    wanted = {}
    for spec in specs:
        if "@" in spec:
            name, text = spec.split("@", 1)
            try:
                wanted[name] = Version.parse_stamp(text)
            except ConfigError:
                continue
    return wanted


async def report_later(order: runorder.RunOrder, task: "asyncio.Task[SignedResult]", *,
                       post: Callable[[SignedResult], Awaitable[Any]], may_post: Callable[[], bool],
                       first_s: float, max_s: float) -> None:
    """Post the result to the origin once the command is done, retrying (backing off) until the deadline.

    ``may_post`` is the outbound token bucket: a post it refuses waits for the next attempt.
    """
    signed = await task
    delay = first_s
    while True:
        try:
            if not may_post():
                raise RuntimeError("outbound result posts are over their rate")
            reply = await post(signed)
            if isinstance(reply, dict) and reply.get("retry"):
                raise RuntimeError("the origin has not seen this node's reply to the order yet")
            if isinstance(reply, dict) and not reply.get("ok") and not reply.get("gone"):
                log.warning("origin %s refused the result of run %s: %s", order.origin, order.run_id, reply.get("refused"))
            return
        except Exception as exc:
            if time.time_ns() // 1_000_000 + delay * 1000 > order.deadline_ms:
                log.warning("result of run %s could not reach %s before the deadline: %s", order.run_id, order.origin, exc)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_s)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def dumps(event: dict) -> bytes:
    return (json.dumps(event, default=_json_default) + "\n").encode()


def stamp(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (tuple, list)) and len(v) >= 2:
        return int(v[0]), int(v[1])
    if isinstance(v, str):
        try:
            return Version.parse_stamp(v.rpartition("@")[2])
        except ConfigError:
            return None
    return None
