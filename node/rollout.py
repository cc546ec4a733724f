"""Staged rollouts on a node: the gates of the bundles held here, and the inbox of a driver's node.

Every node (``RolloutService``):

- holds a ``Gate`` (policy/rollout_machines.py) per targeted bundle whose
  stored version carries a rollout plan. Convergence asks ``choose`` which
  version of such a bundle to converge: the new one once the gate opened,
  else the previous signed version this node ran (from its SQLite history),
  or nothing when it ran none;
- feeds the gate the replicated, verified record ``rollout/<name>`` when it
  arrives, and carries out what the gate asks: converge the new version,
  run the plan's health command (node/executor.py: timeout, bounded
  output, the configured run user), converge back to the previous version;
- posts its state (applied, healthy, failed, reverted, rolled_back) to the
  driver's node named in the record, directly (route ``rollout.report``;
  the envelope signs it with the node key). Until the driver's node took
  it, the report is re-sent every ``RESEND_S``; a resume (new driver or
  term) makes every node send its state again. Direct posts, not gossip:
  one small frame per node per state change, and nothing for the nodes
  that are not reporting;
- keeps its gates' state in the ``meta`` table, so a restart in the middle
  of a rollout neither re-applies a version this node failed nor forgets
  the one to go back to.

The node a driver (the CLI that injected, or ``rollout resume``) is attached
to keeps the reports in memory; the driver reads them through the local API
(``GET /v1/rollout/reports``, which also marks the driver attached). Any node
answers ``GET /v1/rollout/status?bundle=NAME`` from the replicated record,
asking the driver's node (route ``rollout.status``) whether a driver is
attached and what it has heard; a running rollout without one is paused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from aiohttp import web

from grapevine.gossip import wire
from grapevine.gossip.errors import GrapevineError, ProtocolError, Reason
from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.wire import MAX_DETAIL_CHARS, MAX_KEY_LEN
from grapevine.policy.bundle import BUNDLE_KEY_PREFIX, Bundle
from grapevine.policy.rollout import ROLLOUT_KEY_PREFIX, RolloutRecord, record_of, stage_hash, stage_of, status_document
from grapevine.policy.rollout_machines import REPORT_STATES, Apply, Gate, Report, Revert, RunHealth

from . import executor

log = logging.getLogger("grapevine.node")

REPORT_ROUTE = wire.ROUTE_ROLLOUT_REPORT
STATUS_ROUTE = wire.ROUTE_ROLLOUT_STATUS
TICK_S = 0.25  # gate deadlines (health re-checks) and report re-sends are looked at this often
RESEND_S = 1.0  # a report the driver's node did not take is sent again after this
ATTACHED_S = 5.0  # a driver that has not read its reports for this long is gone (the rollout is paused)
ASK_DRIVER_S = 2.0  # how long `rollout status` waits for the driver's node
MAX_INBOX = 1_000_000  # reports one driver's node keeps (one per node and rollout; ~200 bytes each)
META_PREFIX = "rollout.gate/"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReport:
    """A node's gate state for one bundle version, as posted to the driver (the envelope signs it)."""

    bundle: str
    version: Version
    state: str
    detail: str = ""
    term: int = 0

    def to_wire(self) -> dict:
        return {"b": self.bundle, "v": str(self.version), "s": self.state, "d": self.detail[:MAX_DETAIL_CHARS],
                "t": self.term}


def _bundle_and_version(body: Any, what: str) -> tuple[str, Version]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a map", reason="BadRouteBody")
    b, v = body.get("b"), body.get("v")
    if not isinstance(b, str) or not b or len(b) > MAX_KEY_LEN or not isinstance(v, str) or len(v) > 2 * MAX_KEY_LEN:
        raise ProtocolError(f"{what} must name a bundle and a version", reason="BadRouteBody")
    try:
        return b, Version.parse(v)
    except GrapevineError:
        raise ProtocolError(f"{what}: {v[:40]!r} is not a version", reason="BadRouteBody") from None


def decode_report(body: Any) -> NodeReport:
    """A ``rollout.report`` route body (the transport bounded it at MAX_ROUTE_BODY_BYTES first)."""
    bundle, version = _bundle_and_version(body, "rollout report")
    state, detail, term = body.get("s"), body.get("d", ""), body.get("t", 0)
    if state not in REPORT_STATES:
        raise ProtocolError(f"rollout report state must be one of {REPORT_STATES}", reason="BadRouteBody")
    if not isinstance(detail, str) or not isinstance(term, int) or isinstance(term, bool) or not 0 <= term < 2**32:
        raise ProtocolError("rollout report: detail must be text and term a small number", reason="BadRouteBody")
    return NodeReport(bundle=bundle, version=version, state=state, detail=detail[:MAX_DETAIL_CHARS], term=term)


def decode_status_request(body: Any) -> tuple[str, Version]:
    """A ``rollout.status`` route body: which rollout is asked about."""
    return _bundle_and_version(body, "rollout status request")


def _wall() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RolloutLink:
    """What the rollout service needs of its node (the agent builds it from bound methods)."""

    stored: Callable[[str], SignedItem | None]  # the live item under a key
    version_item: Callable[[str, Version], SignedItem | None]  # one stored version (SQLite history)
    history: Callable[[str], list]  # HistoryEntry rows of a key, oldest first
    applied: Callable[[], dict]  # bundle name -> (version, at_ms, ok) last applied
    targets_me: Callable[[Any], bool]  # does a bundle target this node
    converge: Callable[[list[str]], Awaitable[dict]]  # converge these bundles now; the report
    send: Callable[[str, str, object], Awaitable[object]]  # a peer route request to a node id
    load: Callable[[str], str | None]  # meta table
    save: Callable[[str, str], None]
    spawn: Callable[[Awaitable[Any], str], Any]


class RolloutService:
    def __init__(self, *, me: str, link: RolloutLink, run_user: str | None = None,
                 wall: Callable[[], int] = _wall, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.link = link
        self.run_user = run_user or None
        self.wall = wall
        self.clock = clock
        self.gates: dict[str, Gate] = {}  # bundle name -> the gate of the version held
        self._plans: dict[tuple[str, Version], Any] = {}  # decoded plans of stored versions (None: no plan)
        self._locks: dict[str, asyncio.Lock] = {}
        self._sent: dict[str, tuple] = {}  # name -> (driver, term, state, detail) the driver's node took
        self._sent_at: dict[str, float] = {}
        # the driver's side: (bundle, version text) -> node -> [state, detail, seq]
        self.inbox: dict[tuple[str, str], dict[str, list]] = {}
        self._seq = 0
        self._polled: dict[tuple[str, str], float] = {}

    # -- which version convergence applies -----------------------------------------------
    def _plan_of(self, item: SignedItem) -> Any:
        key = (item.key, item.version)
        if key not in self._plans:
            try:
                self._plans[key] = Bundle.decode(item.payload).rollout
            except GrapevineError:
                self._plans[key] = None
            if len(self._plans) > 4096:  # versions come and go; decoded plans are cheap to redo
                self._plans.pop(next(iter(self._plans)))
        return self._plans[key]

    def choose(self, item: SignedItem, bundle: Any) -> SignedItem | None:
        """The version of a targeted bundle to converge: ``item`` itself, its previous version, or None."""
        if getattr(bundle, "rollout", None) is None:
            return item
        gate = self._gate(item, bundle)
        if gate.runs_new:
            return item
        if gate.previous is None:
            return None
        return self.link.version_item(item.key, gate.previous)

    def _gate(self, item: SignedItem, bundle: Any) -> Gate:
        name = bundle.name
        gate = self.gates.get(name)
        if gate is not None and gate.version == item.version:
            return gate
        effects: list = []
        saved = self.link.load(META_PREFIX + name)
        snap = json.loads(saved) if saved else None
        if snap and snap.get("version") == str(item.version) and snap.get("node") == self.me:
            gate, effects = Gate.restore(snap, bundle.rollout, self.wall())
        else:
            gate = Gate(self.me, name, item.version, bundle.rollout, self._previous(item))
        self.gates[name] = gate
        record = record_of(self.link.stored(ROLLOUT_KEY_PREFIX + name))
        if record is not None:
            effects += gate.on_record(record, self.wall())
        self._save(gate)
        if effects:
            self.link.spawn(self._perform(name, effects), f"rollout:{name}")
        log.info("rollout gate for %s %s: %s (previous %s)", name, item.version, gate.state, gate.previous)
        return gate

    def _previous(self, item: SignedItem) -> Version | None:
        """The version this node ran before ``item``: the one it applied, else the newest older one held."""
        name = item.key[len(BUNDLE_KEY_PREFIX):]
        done = self.link.applied().get(name)
        if done is not None and done[0] < item.version and self.link.version_item(item.key, done[0]) is not None:
            return done[0]
        older = [e.version for e in self.link.history(item.key) if e.version < item.version]
        return max(older) if older else None

    def _save(self, gate: Gate) -> None:
        try:
            self.link.save(META_PREFIX + gate.bundle, json.dumps(gate.snapshot()))
        except Exception:  # bookkeeping: losing it costs a health re-check after a restart
            log.exception("rollout gate of %s not saved", gate.bundle)

    # -- what arrives ------------------------------------------------------------------------
    def on_accepted(self, items: Iterable[SignedItem]) -> None:
        """Items the store just accepted: records go to their gate; a new planned version gets one."""
        for item in items:
            if item.key.startswith(ROLLOUT_KEY_PREFIX):
                record = record_of(item)
                gate = self.gates.get(record.bundle) if record is not None else None
                if gate is not None:
                    effects = gate.on_record(record, self.wall())
                    self._save(gate)
                    if effects:
                        self.link.spawn(self._perform(gate.bundle, effects), f"rollout:{gate.bundle}")
                    self._sent_at.pop(gate.bundle, None)  # a new driver or term: report at once
            elif item.key.startswith(BUNDLE_KEY_PREFIX) and self._plan_of(item) is None:
                self.gates.pop(item.key[len(BUNDLE_KEY_PREFIX):], None)  # a new version without a plan: no gate
            elif item.key.startswith(BUNDLE_KEY_PREFIX):
                try:
                    bundle = Bundle.decode(item.payload)
                except GrapevineError:
                    continue
                if self.link.targets_me(bundle):
                    self._gate(item, bundle)

    async def _perform(self, name: str, effects: list) -> None:
        """Carry out a gate's effects one after another (one bundle's work never overlaps)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            queue = list(effects)
            while queue:
                e = queue.pop(0)
                gate = self.gates.get(name)
                if gate is None:
                    return
                now = self.wall()
                if isinstance(e, Report):
                    self._sent_at.pop(name, None)
                    self.link.spawn(self._send_report(name), f"rollout-report:{name}")
                    continue
                if isinstance(e, (Apply, Revert)):
                    ok, detail = await self._converge(name)
                    more = gate.on_applied(ok, detail, now) if isinstance(e, Apply) else gate.on_reverted(ok, detail, now)
                elif isinstance(e, RunHealth):
                    ok, detail = await self._health(e)
                    more = gate.on_health(ok, detail, self.wall())
                else:
                    more = []
                self._save(gate)
                queue.extend(more)

    async def _converge(self, name: str) -> tuple[bool, str]:
        try:
            doc = await self.link.converge([name])
        except Exception as exc:  # a converge that blew up is a failure of this version here
            log.exception("rollout converge of %s failed", name)
            return False, f"converge failed: {exc}"[:MAX_DETAIL_CHARS]
        if doc.get("error"):
            return False, str(doc["error"])[:MAX_DETAIL_CHARS]
        if doc.get("failed"):
            bad = [r.get("id", "?") for r in doc.get("resources", []) if r.get("status") == "failed"]
            return False, f"{doc['failed']} resource(s) failed: {', '.join(map(str, bad[:3]))}"[:MAX_DETAIL_CHARS]
        return True, f"{doc.get('changed', 0)} changed"

    async def _health(self, e: RunHealth) -> tuple[bool, str]:
        res = await executor.execute(list(e.argv), timeout_s=e.timeout_ms / 1000, user=self.run_user)
        if res.error:
            return False, f"health check: {res.error}"[:MAX_DETAIL_CHARS]
        if res.exit_code != 0:
            tail = (res.stderr or res.stdout or b"").decode("utf-8", "replace").strip().splitlines()
            last = f": {tail[-1]}" if tail else ""
            return False, f"health check exited {res.exit_code}{last}"[:MAX_DETAIL_CHARS]
        return True, ""

    # -- reports to the driver ------------------------------------------------------------------
    async def _send_report(self, name: str) -> None:
        gate = self.gates.get(name)
        record = record_of(self.link.stored(ROLLOUT_KEY_PREFIX + name))
        if gate is None or gate.report is None or record is None or record.version != gate.version or not record.driver:
            return
        sig = (record.driver, record.term, gate.report, gate.detail)
        if self._sent.get(name) == sig:
            return
        self._sent_at[name] = self.clock()
        body = NodeReport(bundle=name, version=gate.version, state=gate.report, detail=gate.detail,
                          term=record.term).to_wire()
        try:
            if record.driver == self.me:
                reply = self.on_report(self.me, body)
            else:
                reply = await self.link.send(record.driver, REPORT_ROUTE, body)
        except Exception as exc:  # unreachable driver: the tick sends it again
            log.debug("rollout report of %s to %s not delivered: %s", name, record.driver, exc)
            return
        if isinstance(reply, dict) and reply.get("ok"):
            self._sent[name] = sig

    async def loop(self) -> None:
        """The shell's timer: gate deadlines (health re-checks) and reports not yet taken."""
        while True:
            await asyncio.sleep(TICK_S)
            now, mono = self.wall(), self.clock()
            for name, gate in list(self.gates.items()):
                due = gate.next_deadline()
                if due is not None and now >= due:
                    effects = gate.on_tick(now)
                    if effects:
                        self.link.spawn(self._perform(name, effects), f"rollout:{name}")
                if gate.report is not None and mono - self._sent_at.get(name, float("-inf")) >= RESEND_S:
                    record = record_of(self.link.stored(ROLLOUT_KEY_PREFIX + name))
                    if record is not None and (record.state == "running" or name not in self._sent_at):
                        self.link.spawn(self._send_report(name), f"rollout-report:{name}")

    # -- the driver's node ------------------------------------------------------------------------
    def on_report(self, sender: str, body: Any) -> dict:
        """A node's report (route ``rollout.report``), kept for the driver attached here."""
        try:
            rep = decode_report(body)
        except ProtocolError as exc:
            return {"ok": False, "refused": exc.reason, "detail": str(exc)[:MAX_DETAIL_CHARS]}
        record = record_of(self.link.stored(ROLLOUT_KEY_PREFIX + rep.bundle))
        if record is None or record.version != rep.version or record.driver != self.me:
            return {"ok": False, "refused": Reason.WRONG_ORIGIN,
                    "detail": f"this node does not drive the rollout of {rep.bundle} {rep.version}"}
        key = (rep.bundle, str(rep.version))
        box = self.inbox.setdefault(key, {})
        if sender not in box and sum(len(b) for b in self.inbox.values()) >= MAX_INBOX:
            return {"ok": False, "refused": Reason.RATE_LIMITED, "detail": "the driver's inbox is full"}
        for other in [k for k in self.inbox if k[0] == rep.bundle and k != key]:
            del self.inbox[other]  # an older version's rollout is over
        self._seq += 1
        box[sender] = [rep.state, rep.detail, self._seq]
        return {"ok": True}

    def _live_counts(self, bundle: str, record: RolloutRecord) -> list[list[int]]:
        """(applied, healthy, failed) per opened stage from the reports held here."""
        out = [[0, 0, 0] for _ in record.thresholds]
        for node, (state, _detail, _seq) in self.inbox.get((bundle, str(record.version)), {}).items():
            k = stage_of(stage_hash(node, record.version), record.thresholds)
            if k is None:
                continue
            out[k][0] += 1
            out[k][1] += state == "healthy"
            out[k][2] += state in ("failed", "reverted")
        return out

    def attached(self, bundle: str, version: Version) -> bool:
        return self.clock() - self._polled.get((bundle, str(version)), float("-inf")) < ATTACHED_S

    async def on_status_request(self, body: Any) -> dict:
        """Route ``rollout.status``: is a driver attached here, and what has it heard."""
        bundle, version = decode_status_request(body)
        record = record_of(self.link.stored(ROLLOUT_KEY_PREFIX + bundle))
        if record is None or record.version != version:
            return {"attached": False, "counts": None}
        return {"attached": self.attached(bundle, version), "counts": self._live_counts(bundle, record)}

    async def status(self, bundle: str) -> dict | None:
        """The rollout status document of ``bundle`` as this node knows it (None: no rollout here)."""
        item = self.link.stored(BUNDLE_KEY_PREFIX + bundle)
        stored = self.link.stored(ROLLOUT_KEY_PREFIX + bundle)
        record = record_of(stored)
        if record is not None and (item is None or item.version != record.version):
            item = self.link.version_item(BUNDLE_KEY_PREFIX + bundle, record.version)  # the version rolled out
        plan = self._plan_of(item) if item is not None else None
        if record is None and plan is None:
            return None
        version = record.version if record is not None else item.version
        paused, live = False, None
        if record is not None and record.state == "running":
            if record.driver == self.me:
                paused, live = not self.attached(bundle, version), self._live_counts(bundle, record)
            else:
                try:
                    answer = await asyncio.wait_for(
                        self.link.send(record.driver, STATUS_ROUTE, {"b": bundle, "v": str(version)}), ASK_DRIVER_S)
                    paused = not (isinstance(answer, dict) and answer.get("attached"))
                    counts = answer.get("counts") if isinstance(answer, dict) else None
                    live = counts if isinstance(counts, list) else None
                except Exception:  # the driver's node is unreachable: nobody is opening stages
                    paused = True
        elif record is not None and record.driver == self.me and self.inbox.get((bundle, str(version))):
            live = self._live_counts(bundle, record)
        doc = status_document(plan, record, bundle=bundle, version=version, paused=paused, live=live)
        doc["record_version"] = None if stored is None else str(stored.version)
        gate = self.gates.get(bundle)
        doc["here"] = None if gate is None or gate.version != version else {
            "node": self.me, "gate": str(gate.state), "report": gate.report, "detail": gate.detail}
        return doc

    def recent(self, items: Iterable[SignedItem], limit: int = 20) -> list[dict]:
        """The rollouts whose records this node holds, newest first, as status documents (from the
        records alone: the fleet page's list, no driver asked)."""
        held = sorted((it for it in items if it.key.startswith(ROLLOUT_KEY_PREFIX)), key=lambda it: it.version,
                      reverse=True)[:limit]
        out = []
        for it in held:
            record = record_of(it)
            if record is None:
                continue
            bundle = self.link.version_item(BUNDLE_KEY_PREFIX + record.bundle, record.version)
            plan = self._plan_of(bundle) if bundle is not None else None
            out.append(status_document(plan, record, bundle=record.bundle, version=record.version))
        return out

    # -- wiring -----------------------------------------------------------------------------------
    def peer_routes(self) -> dict[str, tuple[Callable, bool]]:
        return {REPORT_ROUTE: (self.on_report, True), STATUS_ROUTE: (self.on_status_request, False)}

    def api_routes(self) -> dict[tuple[str, str], Callable]:
        return {("GET", "/v1/rollout/reports"): self._api_reports, ("GET", "/v1/rollout/status"): self._api_status}

    async def _api_reports(self, request: web.Request) -> web.Response:
        """``?bundle=B&version=V&since=SEQ``: reports newer than SEQ, for the driver attached here."""
        bundle = request.query.get("bundle", "")
        try:
            version = Version.parse(request.query.get("version", ""))
            since = int(request.query.get("since", "0"))
        except (GrapevineError, ValueError) as exc:
            return web.json_response({"error": Reason.BAD_REQUEST, "detail": str(exc)}, status=400)
        key = (bundle, str(version))
        self._polled[key] = self.clock()
        rows = [[n, s, d, q] for n, (s, d, q) in self.inbox.get(key, {}).items() if q > since]
        stored = self.link.stored(ROLLOUT_KEY_PREFIX + bundle)
        record = record_of(stored)
        return web.json_response({"node": self.me, "reports": sorted(rows, key=lambda r: r[3]), "seq": self._seq,
                                  "record": None if record is None else record.summary(),
                                  "record_version": None if stored is None else str(stored.version)})

    async def _api_status(self, request: web.Request) -> web.Response:
        bundle = request.query.get("bundle", "")
        doc = await self.status(bundle)
        if doc is None:
            return web.json_response({"error": Reason.NOT_FOUND,
                                      "detail": f"no rollout of {bundle!r} is known here"}, status=404)
        return web.json_response(doc)
