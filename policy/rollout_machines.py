"""Staged rollout, the decisions: a ``Gate`` on every node and one ``Driver``, both sans-I/O.

Neither machine reads a clock, sleeps, signs or sends: time (milliseconds, any
one monotonic or wall scale, the same for all calls to one machine) comes in
as ``now``, and what the shell must do comes back as a list of effects. The
daemon (node/rollout.py), the driver in the CLI (cli/rollout.py) and the
simulator drive these same classes.

API
===

Gate (one per node and bundle version that carries a plan)::

    gate = Gate(node_id, bundle, version, plan, previous)   # previous: Version the node ran before, or None
    gate.on_record(record, now) -> [effects]     # a verified RolloutRecord for this bundle (others ignored)
    gate.on_applied(ok, detail, now) -> [...]    # the shell finished an Apply (converge of the new version)
    gate.on_health(ok, detail, now) -> [...]     # the shell finished a RunHealth
    gate.on_reverted(ok, detail, now) -> [...]   # the shell finished a Revert
    gate.on_tick(now) -> [...]                   # re-checks health while the rollout runs
    gate.next_deadline() -> int | None           # when on_tick has something to do
    gate.runs_new -> bool                        # converge the new version (True) or stay on previous
    gate.state, gate.report, gate.detail         # GateState; last reported state (for re-sending)
    gate.snapshot() -> dict; Gate.restore(snapshot, plan, now) -> Gate    # survive a restart

    effects:  Apply(bundle, version)      converge the new version now, then call on_applied
              RunHealth(bundle, argv, timeout_ms)       run the plan's health command, then on_health
              Revert(bundle, to)          converge the previous version (``to`` None: stop applying), then on_reverted
              Report(bundle, version, state, detail)    tell the driver: applied|healthy|failed|reverted|rolled_back

    A gate holds the new version until a record opens its stage (``stage_hash``
    below the threshold), applies, checks health, reports; a failure reverts
    it to ``previous`` on its own. A halt keeps it from ever applying; a
    ``rolled_back`` record reverts it if it applied. It never applies a
    version it was not given a verified record for, and a halt is final.

Driver (one per rollout, in the process that holds the publisher key)::

    drv = Driver(bundle, version, plan, targets, me, now, config=DriverConfig())
    drv.start(now) -> [Publish(record)]                     # opens stage 0
    Driver.resume(record, plan, targets, me, now) -> Driver # take over; its first effects: drv.start(now)
    drv.on_report(node, state, now, detail="") -> [...]     # a node's Report, as the shell received it
    drv.on_tick(now) -> [...]                               # soaks, timeouts, next stage, halt
    drv.abort(reason, now) -> [Publish(rolled_back record)]
    abort_record(record, reason) -> RolloutRecord           # the same from a node that is not the driver
    drv.next_deadline() -> int | None
    drv.record -> RolloutRecord; drv.state; drv.done; drv.status() -> dict (the rollout status JSON)

    effects:  Publish(record)   sign the RolloutRecord and inject it (it replaces the stored one)

    The driver opens stage k+1 once every node of stages 0..k reported
    healthy and the last of them has been healthy for the plan's soak; it
    halts (``halted``, or ``rolled_back`` with ``on_failure: rollback``) as soon
    as failed nodes pass the plan's budget, and completes after the 100%
    stage soaked. A stage member silent for ``report_timeout_ms`` after its
    stage opened counts as failed. Reports from nodes it did not discover
    (joined later) are counted too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Iterable

from grapevine.gossip.errors import GrapevineError
from grapevine.gossip.item import Version

from .rollout import ALL, RolloutPlan, RolloutRecord, inside, stage_hash, stage_of, threshold_for

# What a node reports: applied, then healthy or failed; after a failure, reverted (still a failure);
# after a rolled_back record, rolled_back (not a failure of its own).
REPORT_STATES = ("applied", "healthy", "failed", "reverted", "rolled_back")
FAILED_STATES = ("failed", "reverted")
MIN_RECHECK_MS = 1_000  # health re-checks during a soak: at most once a second...
RECHECKS_PER_SOAK = 3  # ...and about three times per soak


class RolloutStateError(GrapevineError):
    """A transition the table does not allow (a bug in the caller or here, never bad input)."""


# ============================================================ effects
@dataclass(frozen=True, slots=True, kw_only=True)
class Apply:
    bundle: str
    version: Version


@dataclass(frozen=True, slots=True, kw_only=True)
class RunHealth:
    bundle: str
    argv: tuple[str, ...]
    timeout_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Revert:
    bundle: str
    to: Version | None  # None: there is no earlier version here; stop applying the bundle


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    bundle: str
    version: Version
    state: str  # one of REPORT_STATES
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    record: RolloutRecord


# ============================================================ the gate
class GateState(enum.StrEnum):
    HOLDING = "holding"  # has the new version, its stage is not open
    APPLYING = "applying"  # converging the new version
    CHECKING = "checking"  # running the health command
    HEALTHY = "healthy"  # runs the new version, passed its health check
    REVERTING = "reverting"  # going back to the previous version
    REVERTED = "reverted"  # back on the previous version (failed, or rolled back)
    HALTED = "halted"  # the rollout halted before this node's stage opened: never applies it
    DONE = "done"  # the rollout completed: the new version is simply the bundle


# Every move a gate makes: (state, event) -> next state. Anything else is RolloutStateError.
GATE_MOVES: dict[tuple[GateState, str], GateState] = {
    (GateState.HOLDING, "open"): GateState.APPLYING,
    (GateState.HOLDING, "halt"): GateState.HALTED,
    (GateState.APPLYING, "applied"): GateState.CHECKING,
    (GateState.APPLYING, "applied_unchecked"): GateState.HEALTHY,
    (GateState.APPLYING, "fail"): GateState.REVERTING,
    (GateState.APPLYING, "rollback"): GateState.REVERTING,
    (GateState.CHECKING, "healthy"): GateState.HEALTHY,
    (GateState.CHECKING, "fail"): GateState.REVERTING,
    (GateState.CHECKING, "rollback"): GateState.REVERTING,
    (GateState.CHECKING, "complete"): GateState.DONE,
    (GateState.HEALTHY, "recheck"): GateState.CHECKING,
    (GateState.HEALTHY, "rollback"): GateState.REVERTING,
    (GateState.HEALTHY, "complete"): GateState.DONE,
    (GateState.REVERTING, "reverted"): GateState.REVERTED,
}
RUNS_NEW = (GateState.APPLYING, GateState.CHECKING, GateState.HEALTHY, GateState.DONE)


class Gate:
    def __init__(self, node_id: str, bundle: str, version: Version, plan: RolloutPlan,
                 previous: Version | None) -> None:
        self.node_id = node_id
        self.bundle = bundle
        self.version = version
        self.plan = plan
        self.previous = previous
        self.hash = stage_hash(node_id, version)
        self.state = GateState.HOLDING
        self.report: str | None = None  # the last state reported (re-sent to a new driver)
        self.detail = ""
        self.frozen = False  # halted (keep the version, no more re-checks) or complete
        self.failed = False  # this node failed the version: it never applies it again
        self._recheck_at: int | None = None
        self._reported_healthy = False

    # -- transitions ---------------------------------------------------------------------
    def _go(self, event: str) -> None:
        nxt = GATE_MOVES.get((self.state, event))
        if nxt is None:
            raise RolloutStateError(f"gate {self.bundle}: no move on {event!r} from {self.state}")
        self.state = nxt

    def _report(self, state: str, detail: str = "") -> list:
        self.report, self.detail = state, detail
        return [Report(bundle=self.bundle, version=self.version, state=state, detail=detail)]

    def _fail(self, detail: str) -> list:
        self._go("fail")
        self.failed = True
        self._recheck_at = None
        return self._report("failed", detail) + [Revert(bundle=self.bundle, to=self.previous)]

    @property
    def runs_new(self) -> bool:
        return self.state in RUNS_NEW

    # -- inputs ------------------------------------------------------------------------------
    def on_record(self, record: RolloutRecord, now: int) -> list:
        if record.bundle != self.bundle or record.version != self.version:
            return []
        s = record.state
        if s in ("halted", "rolled_back"):
            self.frozen = True
            self._recheck_at = None
            if self.state == GateState.HOLDING:
                self._go("halt")
                return []
            if s == "rolled_back" and self.state in (GateState.APPLYING, GateState.CHECKING, GateState.HEALTHY):
                self._go("rollback")
                return [Revert(bundle=self.bundle, to=self.previous)]
            return []
        if self.state == GateState.HOLDING and record.opens(self.hash) and not self.failed:
            self._go("open")
            return [Apply(bundle=self.bundle, version=self.version)]
        if s == "complete" and self.state in (GateState.HEALTHY, GateState.CHECKING):
            self._go("complete")
            self.frozen = True
            self._recheck_at = None
        return []

    def on_applied(self, ok: bool, detail: str, now: int) -> list:
        if self.state != GateState.APPLYING:
            return []  # a halt moved on meanwhile
        if not ok:
            return self._fail(detail or "the converge of the new version failed")
        if self.plan.health is None:
            self._go("applied_unchecked")
            self._reported_healthy = True
            return self._report("healthy", detail)
        self._go("applied")
        return self._report("applied") + [self._health()]

    def _health(self) -> RunHealth:
        return RunHealth(bundle=self.bundle, argv=tuple(self.plan.health or ()), timeout_ms=self.plan.health_timeout_ms)

    def on_health(self, ok: bool, detail: str, now: int) -> list:
        if self.state != GateState.CHECKING:
            return []
        if not ok:
            return self._fail(detail or "the health check failed")
        self._go("healthy")
        if not self.frozen:
            self._recheck_at = now + max(MIN_RECHECK_MS, self.plan.soak_ms // RECHECKS_PER_SOAK)
        if self._reported_healthy:
            return []
        self._reported_healthy = True
        return self._report("healthy", detail)

    def on_reverted(self, ok: bool, detail: str, now: int) -> list:
        if self.state != GateState.REVERTING:
            return []
        self._go("reverted")
        if self.failed:
            return self._report("reverted", self.detail if ok else f"{self.detail}; revert failed: {detail}")
        return self._report("rolled_back", "" if ok else f"revert failed: {detail}")

    def on_tick(self, now: int) -> list:
        if self.state == GateState.HEALTHY and not self.frozen and self._recheck_at is not None \
                and now >= self._recheck_at and self.plan.health is not None:
            self._recheck_at = None
            self._go("recheck")
            return [self._health()]
        return []

    def next_deadline(self) -> int | None:
        return self._recheck_at if self.state == GateState.HEALTHY and not self.frozen else None

    # -- persistence -------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """What a restart needs (small, JSON-friendly)."""
        return {"bundle": self.bundle, "version": str(self.version), "node": self.node_id,
                "previous": None if self.previous is None else str(self.previous), "state": str(self.state),
                "report": self.report, "detail": self.detail, "frozen": self.frozen, "failed": self.failed}

    @classmethod
    def restore(cls, snap: dict, plan: RolloutPlan, now: int) -> tuple[Gate, list]:
        """A gate from ``snapshot()`` after a restart, and the effects to resume with: a gate caught
        applying or checking re-runs its health check (or its apply), one caught reverting reverts."""
        prev = snap.get("previous")
        gate = cls(snap["node"], snap["bundle"], Version.parse(snap["version"]), plan,
                   Version.parse(prev) if prev else None)
        gate.state = GateState(snap["state"])
        gate.report, gate.detail = snap.get("report"), snap.get("detail") or ""
        gate.frozen, gate.failed = bool(snap.get("frozen")), bool(snap.get("failed"))
        gate._reported_healthy = gate.report == "healthy"
        if gate.state == GateState.APPLYING:
            return gate, [Apply(bundle=gate.bundle, version=gate.version)]
        if gate.state in (GateState.CHECKING, GateState.HEALTHY) and plan.health is not None and not gate.frozen:
            gate.state = GateState.CHECKING
            return gate, [gate._health()]
        if gate.state == GateState.REVERTING:
            return gate, [Revert(bundle=gate.bundle, to=gate.previous)]
        return gate, []


# ============================================================ the driver
@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    # A node of an open stage that has not reported this long after its stage opened counts as
    # failed: a node that cannot say it is healthy is not (two minutes covers a slow converge
    # and its health timeout; the simulator sets it from its network model).
    report_timeout_ms: int = 120_000
    max_targets: int = 1_000_000  # nodes tracked by one driver (late reporters beyond are ignored)


@dataclass(slots=True)
class _Node:
    hash: int
    state: str | None = None  # last reported
    at: int = 0  # when it was reported (driver's clock)
    detail: str = ""
    member: bool = False  # inside the open stages


def _settled(state: str | None) -> bool:
    """A stage member that no longer holds its stage: healthy, or failed (counted against the budget)."""
    return state == "healthy" or state in FAILED_STATES


class Driver:
    """The rollout of one bundle version as its driver sees it (see the module docstring).

    Bookkeeping is incremental, so a report costs O(1) and a stage opening
    O(n): the simulator drives one driver with 100,000 reporting nodes.
    """

    def __init__(self, bundle: str, version: Version, plan: RolloutPlan, targets: Iterable[str], me: str, now: int,
                 *, config: DriverConfig | None = None) -> None:
        self.bundle, self.version, self.plan, self.me = bundle, version, plan, me
        self.config = config or DriverConfig()
        self.state, self.stage, self.term, self.reason = "running", -1, 0, ""
        self.thresholds: list[int] = []
        self.nodes: dict[str, _Node] = {}
        for n in targets:
            if len(self.nodes) < self.config.max_targets:
                self.nodes[n] = _Node(stage_hash(n, version))
        self.opened_at = now  # when the current stage opened (or the driver took over)
        self._unsettled = 0  # members of the open stages neither healthy nor failed
        self._silent = 0  # members of the open stages that never reported
        self._settled_at = now  # the latest time a member settled
        self._failed: dict[str, str] = {}  # node -> why, for every node that failed
        self._started = False

    @classmethod
    def resume(cls, record: RolloutRecord, plan: RolloutPlan, targets: Iterable[str], me: str, now: int,
               *, config: DriverConfig | None = None) -> Driver:
        """Take over the rollout ``record`` describes (its stages stay as opened); ``start`` publishes the takeover."""
        if record.state != "running":
            raise RolloutStateError(f"the rollout of {record.bundle} is {record.state}: there is nothing to resume")
        drv = cls(record.bundle, record.version, plan, targets, me, now, config=config)
        drv.stage, drv.thresholds, drv.term = record.stage, list(record.thresholds), record.term + 1
        drv._admit_members()
        return drv

    # -- what the driver knows ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state != "running"

    @property
    def healthy_since(self) -> int | None:
        """When the last member of the open stages settled (None while one has not)."""
        if self.stage < 0 or self._unsettled:
            return None
        return max(self._settled_at, self.opened_at)

    def _admit_members(self) -> None:
        """Mark the nodes the last opened threshold lets in (thresholds only grow: members stay members)."""
        if not self.thresholds:
            return
        t = self.thresholds[-1]
        for n in self.nodes.values():
            if not n.member and inside(n.hash, t):
                self._join(n)

    def _join(self, n: _Node) -> None:
        n.member = True
        self._unsettled += not _settled(n.state)
        self._silent += n.state is None

    def _failures(self, now: int) -> int:
        silent = self._silent if now >= self.opened_at + self.config.report_timeout_ms else 0
        return len(self._failed) + silent

    def _first_failure(self) -> tuple[str, str]:
        if self._failed:
            name = min(self._failed)
            return name, self._failed[name]
        name = min(k for k, n in self.nodes.items() if n.member and n.state is None)
        return name, f"no report within {self.config.report_timeout_ms // 1000} s of its stage opening"

    @property
    def record(self) -> RolloutRecord:
        return RolloutRecord(bundle=self.bundle, version=self.version, state=self.state, stage=self.stage,
                             thresholds=tuple(self.thresholds), driver=self.me, term=self.term, reason=self.reason,
                             counts=tuple(self._counts()[: self.stage + 1]), targets=len(self.nodes))

    def _counts(self) -> list[tuple[int, int, int]]:
        """(applied, healthy, failed) per stage, nodes placed by the thresholds opened (or planned)."""
        ths = self._all_thresholds()
        out = [[0, 0, 0] for _ in self.plan.stages]
        for n in self.nodes.values():
            k = stage_of(n.hash, ths)
            if k is None or n.state is None:
                continue
            c = out[k]
            c[0] += 1  # every state a node reports comes after it applied the version
            if n.state == "healthy":
                c[1] += 1
            if n.state in FAILED_STATES:
                c[2] += 1
        return [tuple(c) for c in out]  # type: ignore[misc]

    def _all_thresholds(self) -> list[int]:
        """Opened thresholds, then the ones the plan would give the stages not opened yet."""
        ths = list(self.thresholds)
        hashes = sorted(n.hash for n in self.nodes.values())
        counts = self.plan.stage_counts(len(hashes))
        for k in range(len(ths), len(self.plan.stages)):
            ths.append(max(ths[-1] if ths else 0, threshold_for(hashes, counts[k])))
        return ths

    def status(self, now: int | None = None) -> dict:
        """The ``grapevine rollout status --json`` document, as this driver sees it."""
        n = len(self.nodes)
        counts = self.plan.stage_counts(n)
        rows = []
        for k, (a, h, f) in enumerate(self._counts()):
            rows.append({"fraction": round(counts[k] / n, 4) if n else 1.0, "size": counts[k],
                         "planned": str(self.plan.stages[k]), "open": k <= self.stage,
                         "applied": a, "healthy": h, "failed": f})
        return {"bundle": self.bundle, "version": str(self.version), "state": self.state, "stage": self.stage,
                "stages": rows, "reason": self.reason, "driver": self.me, "term": self.term, "targets": n}

    # -- inputs ---------------------------------------------------------------------------------
    def start(self, now: int) -> list:
        """Publish the first record: stage 0 opened (a new rollout) or the takeover (a resumed one)."""
        if self._started:
            return []
        self._started = True
        self.opened_at = now
        if self.stage < 0:
            return self._open(0, now)
        return [Publish(record=self.record)]

    def _open(self, k: int, now: int) -> list:
        hashes = sorted(n.hash for n in self.nodes.values())
        count = self.plan.stage_counts(len(hashes))[k]
        t = ALL if k == len(self.plan.stages) - 1 else threshold_for(hashes, count)
        self.thresholds.append(max(t, self.thresholds[-1] if self.thresholds else 0))
        self.stage = k
        self.opened_at = self._settled_at = now
        self._admit_members()
        return [Publish(record=self.record)]

    def on_report(self, node: str, state: str, now: int, detail: str = "") -> list:
        if state not in REPORT_STATES or self.done:
            return []
        n = self.nodes.get(node)
        if n is None:
            if len(self.nodes) >= self.config.max_targets:
                return []
            n = self.nodes[node] = _Node(stage_hash(node, self.version))
            if self.thresholds and inside(n.hash, self.thresholds[-1]):
                self._join(n)
        if n.state == state and n.detail == detail:
            return []
        old = n.state
        n.state, n.at, n.detail = state, now, detail
        if state in FAILED_STATES:
            self._failed[node] = detail or state
        else:
            self._failed.pop(node, None)
        if n.member:
            self._silent -= old is None
            self._unsettled += (not _settled(state)) - (not _settled(old))
            if _settled(state):
                self._settled_at = max(self._settled_at, now)
        return self.on_tick(now)

    def abort(self, reason: str, now: int) -> list:
        """Halt and send every node that applied the version back (``rolled_back``)."""
        if self.state == "complete":
            raise RolloutStateError(f"the rollout of {self.bundle} is complete: roll back with a new version instead")
        self.state, self.reason = "rolled_back", reason
        return [Publish(record=self.record)]

    def on_tick(self, now: int) -> list:
        if self.done or not self._started or self.stage < 0:
            return []
        failures = self._failures(now)
        budget = self.plan.failure_budget(len(self.nodes))
        if failures > budget:
            name, why = self._first_failure()
            self.state = "rolled_back" if self.plan.on_failure == "rollback" else "halted"
            self.reason = f"{failures} node(s) failed, over the budget of {budget}; {name}: {why}"
            return [Publish(record=self.record)]
        since = self.healthy_since  # failed members are within the budget here: they do not hold the stage
        if since is None or now < since + self.plan.soak_ms:
            return []
        if self.stage == len(self.plan.stages) - 1:
            self.state = "complete"
            return [Publish(record=self.record)]
        return self._open(self.stage + 1, now)

    def next_deadline(self) -> int | None:
        if self.done or not self._started or self.stage < 0:
            return None
        since = self.healthy_since
        if since is not None:
            return since + self.plan.soak_ms
        if self._silent:
            return self.opened_at + self.config.report_timeout_ms
        return None


def abort_record(record: RolloutRecord, reason: str) -> RolloutRecord:
    """The record that aborts the rollout ``record`` describes, from any node: halted, and every node
    that applied the version goes back (``rolled_back``). A complete rollout cannot be aborted."""
    if record.state == "complete":
        raise RolloutStateError(f"the rollout of {record.bundle} is complete: roll back with a new version instead")
    return replace(record, state="rolled_back", reason=reason)
