"""Staged rollout, the data: the plan a bundle carries, stage membership, and the signed records.

The plan (``RolloutPlan``) is written in the policy file under ``rollout:``
(or built by ``inject --stages ... --soak ... --health ... --max-failures ...
--on-failure ...``) and travels inside the bundle, so the author's signature
covers it::

    rollout:
      stages: [1, 10%, 50%, 100%]   # cumulative: a count or a percentage of the targeted nodes
      soak: 30s                     # healthy this long before the next stage opens
      health: {command: [/usr/bin/curl, -fsS, http://127.0.0.1/health], timeout: 5s}
      max_failures: 0               # or 2%: halt once failed nodes pass this
      on_failure: rollback          # or halt

Stage membership: ``stage_hash(node_id, version)`` is a 64-bit BLAKE2b hash
of the node id and the bundle version. A node is inside the open stages iff
its hash is below the threshold of the last opened stage (``inside``). The
driver knows the discovered targets, sorts their hashes and publishes the
threshold that lets exactly the asked count in (``threshold_for``); the last
stage's threshold is ``ALL``, which lets every node in (also nodes that
joined after discovery). A record so stays a few bytes at any fleet size.

Records (``RolloutRecord``) are signed items under ``rollout/<bundle name>``,
signed by a publisher key whose grant covers the bundle name (the admission
of every node checks it, ``policy/admission.py``), replicated to every node
like bundles, last writer wins. One record says where the rollout of one
bundle version stands: ``state`` (running, halted, rolled_back, complete),
the index of the last opened ``stage`` and the ``thresholds`` of the opened
stages, how many ``targets`` the driver knew, the ``driver`` (node id reports go to) and its ``term`` (bumped by
each resume, so nodes re-send their reports to the new driver), a
``reason`` once halted, and the per-stage ``counts`` the driver saw when it
published. ``paused`` is not a record state: a running rollout whose driver
is gone is paused (``grapevine rollout status`` finds that out).

Everything here is pure: no clock, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import msgpack

from grapevine.gossip.errors import PolicyError, ProtocolError
from grapevine.gossip.item import MAX_KEY_LEN, SignedItem, Version
from grapevine.gossip.wire import (
    MAX_ARGV,
    MAX_DETAIL_CHARS,
    MAX_NODE_ID_BYTES,
    MAX_ROLLOUT_RECORD_BYTES,
    MAX_ROLLOUT_STAGES,
    MAX_STRING,
)

ROLLOUT_KEY_PREFIX = "rollout/"
FORMAT = 1
ALL = 2**64 - 1  # the threshold that lets every node in (the last stage)
HASH_PERSON = b"gv-rollout-v1"  # domain separation of the stage hash
DEFAULT_STAGES = ("1%", "10%", "50%", "100%")
DEFAULT_SOAK_MS = 30_000
DEFAULT_HEALTH_TIMEOUT_MS = 10_000
MAX_SOAK_MS = 7 * 86_400_000  # a week: longer is a schedule, not a soak
MAX_HEALTH_TIMEOUT_MS = 3_600_000  # an hour; a health check is a probe, not a job
ON_FAILURE = ("rollback", "halt")
PLAN_KEYS = {"stages", "soak", "health", "max_failures", "on_failure"}
HEALTH_KEYS = {"command", "timeout"}
STATES = ("running", "halted", "rolled_back", "complete")
TERMINAL = ("halted", "rolled_back", "complete")
# A record may replace one of the same bundle version only moving forward along these ranks:
# running -> halted -> rolled_back, running -> complete (a stage index never goes back either).
STATE_RANK = {"running": 0, "halted": 1, "rolled_back": 2, "complete": 1}
RECORD_KEYS = {"bundle", "counts", "driver", "format", "reason", "stage", "state", "targets", "term", "thresholds",
               "version"}

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*")
_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]{1,2})?)\s*%\s*")


# ============================================================ small parsers
def parse_duration(value: Any, what: str) -> int:
    """``30s``, ``500ms``, ``2m``, ``1h`` or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise PolicyError(f"{what}: {value!r} is not a duration (write 30s, 500ms, 2m)")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise PolicyError(f"{what}: {value!r} must be a non-negative duration")
        return int(round(value * 1000))
    m = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise PolicyError(f"{what}: {value!r} is not a duration (write 30s, 500ms, 2m or 1h)")
    scale = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}[m[2]]
    return int(round(float(m[1]) * scale))


def format_duration(ms: int) -> str:
    return f"{ms}ms" if ms % 1000 else f"{ms // 1000}s"


@dataclass(frozen=True, slots=True)
class Amount:
    """A count of nodes, or a percentage of the targeted nodes (``percent`` in hundredths: 1050 is 10.5%)."""

    count: int | None = None
    hundredths: int | None = None

    @classmethod
    def parse(cls, value: Any, what: str, *, zero_ok: bool) -> Amount:
        if isinstance(value, bool):
            raise PolicyError(f"{what}: {value!r} is neither a count nor a percentage")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            n = int(value)
            if n < (0 if zero_ok else 1) or n > 10**9:
                raise PolicyError(f"{what}: {n} must be a count of nodes {'>= 0' if zero_ok else '>= 1'}")
            return cls(count=n)
        m = _PERCENT.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise PolicyError(f"{what}: {value!r} must be a count (10) or a percentage (10%, 0.5%)")
        h = int(round(float(m[1]) * 100))
        if h > 10_000 or (h == 0 and not zero_ok):
            raise PolicyError(f"{what}: {value!r} must be a percentage in {'[0' if zero_ok else '(0'}, 100]")
        return cls(hundredths=h)

    def of(self, n: int) -> int:
        """How many of ``n`` nodes: a percentage rounds up (1% of 50 is 1 node), capped at n."""
        if self.count is not None:
            return min(self.count, n)
        return min(n, -(-self.hundredths * n // 10_000))

    def floor_of(self, n: int) -> int:
        """A budget: a percentage rounds down (2% of 40 allows 0 failures), a count stays."""
        if self.count is not None:
            return self.count
        return self.hundredths * n // 10_000

    @property
    def is_all(self) -> bool:
        return self.hundredths == 10_000

    def to_plain(self) -> int | str:
        if self.count is not None:
            return self.count
        return f"{self.hundredths / 100:g}%"

    def __str__(self) -> str:
        return str(self.to_plain())


# ============================================================ the plan
@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPlan:
    stages: tuple[Amount, ...]
    soak_ms: int = DEFAULT_SOAK_MS
    health: tuple[str, ...] | None = None  # argv of the health command, run after applying; None: converge ok is healthy
    health_timeout_ms: int = DEFAULT_HEALTH_TIMEOUT_MS
    max_failures: Amount = Amount(count=0)
    on_failure: str = "rollback"

    def __post_init__(self) -> None:
        w = "rollout"
        if not self.stages or len(self.stages) > MAX_ROLLOUT_STAGES:
            raise PolicyError(f"{w}: stages must list 1..{MAX_ROLLOUT_STAGES} cumulative sizes, such as [1, 10%, 100%]")
        if not self.stages[-1].is_all:
            raise PolicyError(f"{w}: the last stage must be 100% (every targeted node), got {self.stages[-1]}")
        for kind in ("count", "hundredths"):
            seq = [getattr(s, kind) for s in self.stages if getattr(s, kind) is not None]
            if any(b <= a for a, b in zip(seq, seq[1:])):
                raise PolicyError(f"{w}: stages are cumulative and must grow: {[str(s) for s in self.stages]}")
        if not 0 <= self.soak_ms <= MAX_SOAK_MS:
            raise PolicyError(f"{w}: soak must be between 0 and {MAX_SOAK_MS // 3_600_000} h")
        if self.health is not None:
            if not self.health or len(self.health) > MAX_ARGV or not all(
                    isinstance(a, str) and a and len(a) <= MAX_STRING and "\0" not in a for a in self.health):
                raise PolicyError(f"{w}: health.command must be 1..{MAX_ARGV} non-empty arguments")
        if not 1 <= self.health_timeout_ms <= MAX_HEALTH_TIMEOUT_MS:
            raise PolicyError(f"{w}: health.timeout must be between 1 ms and 1 h")
        if self.on_failure not in ON_FAILURE:
            raise PolicyError(f"{w}: on_failure must be one of {', '.join(ON_FAILURE)}, got {self.on_failure!r}")

    # -- the author's forms ------------------------------------------------------------
    @classmethod
    def from_document(cls, doc: Any, source: str = "rollout") -> RolloutPlan:
        """The ``rollout:`` mapping of a policy file; ``PolicyError`` naming what is wrong."""
        if not isinstance(doc, Mapping):
            raise PolicyError(f"{source}: rollout must be a mapping with stages, soak, health, max_failures, on_failure")
        unknown = sorted(set(map(str, doc)) - PLAN_KEYS)
        if unknown:
            raise PolicyError(f"{source}: unknown rollout key(s) {unknown}; allowed: {sorted(PLAN_KEYS)}")
        try:
            stages = doc.get("stages", list(DEFAULT_STAGES))
            if isinstance(stages, str):
                stages = [s for s in stages.split(",") if s.strip()]
            if not isinstance(stages, (list, tuple)):
                raise PolicyError("rollout: stages must be a list such as [1, 10%, 100%]")
            if len(stages) > MAX_ROLLOUT_STAGES:
                raise PolicyError(f"rollout: at most {MAX_ROLLOUT_STAGES} stages")
            amounts = tuple(Amount.parse(s, f"rollout: stage #{i + 1}", zero_ok=False) for i, s in enumerate(stages))
            health = doc.get("health")
            command, timeout = None, DEFAULT_HEALTH_TIMEOUT_MS
            if health is not None:
                if isinstance(health, (str, list, tuple)):
                    health = {"command": health}
                if not isinstance(health, Mapping) or "command" not in health:
                    raise PolicyError("rollout: health must be a mapping with a command (and a timeout)")
                extra = sorted(set(map(str, health)) - HEALTH_KEYS)
                if extra:
                    raise PolicyError(f"rollout: unknown health key(s) {extra}; allowed: {sorted(HEALTH_KEYS)}")
                command = split_command(health["command"])
                timeout = parse_duration(health.get("timeout", "10s"), "rollout: health.timeout")
            return cls(
                stages=amounts,
                soak_ms=parse_duration(doc.get("soak", "30s"), "rollout: soak"),
                health=command,
                health_timeout_ms=timeout,
                max_failures=Amount.parse(doc.get("max_failures", 0), "rollout: max_failures", zero_ok=True),
                on_failure=doc.get("on_failure", "rollback"),
            )
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def to_document(self) -> dict:
        """The ``rollout:`` mapping as an author would write it (``from_document`` gives the plan back)."""
        doc: dict[str, Any] = {"stages": [s.to_plain() for s in self.stages], "soak": format_duration(self.soak_ms),
                               "max_failures": self.max_failures.to_plain(), "on_failure": self.on_failure}
        if self.health is not None:
            doc["health"] = {"command": list(self.health), "timeout": format_duration(self.health_timeout_ms)}
        return doc

    # -- the signed form (inside the bundle) ---------------------------------------------
    def to_plain(self) -> dict:
        return {
            "health": None if self.health is None else list(self.health),
            "health_timeout_ms": self.health_timeout_ms,
            "max_failures": self.max_failures.to_plain(),
            "on_failure": self.on_failure,
            "soak_ms": self.soak_ms,
            "stages": [s.to_plain() for s in self.stages],
        }

    @classmethod
    def from_plain(cls, obj: Any) -> RolloutPlan:
        keys = {"health", "health_timeout_ms", "max_failures", "on_failure", "soak_ms", "stages"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise ProtocolError(f"a rollout plan must be a map with exactly the keys {sorted(keys)}")
        try:
            if not isinstance(obj["stages"], list) or not all(isinstance(v, int) for v in
                                                             (obj["soak_ms"], obj["health_timeout_ms"])):
                raise PolicyError("stages must be a list and durations integers")
            health = obj["health"]
            if health is not None and not (isinstance(health, list) and all(isinstance(a, str) for a in health)):
                raise PolicyError("health must be a list of strings")
            plan = cls(stages=tuple(Amount.parse(s, "stage", zero_ok=False) for s in obj["stages"][:MAX_ROLLOUT_STAGES + 1]),
                       soak_ms=obj["soak_ms"], health=None if health is None else tuple(health),
                       health_timeout_ms=obj["health_timeout_ms"],
                       max_failures=Amount.parse(obj["max_failures"], "max_failures", zero_ok=True),
                       on_failure=obj["on_failure"])
        except PolicyError as exc:
            raise ProtocolError(f"rollout plan: {exc}") from None
        if plan.to_plain() != obj:
            raise ProtocolError("rollout plan is not in canonical form")
        return plan

    # -- sizes -----------------------------------------------------------------------------
    def stage_counts(self, n: int) -> list[int]:
        """Cumulative node counts of each stage for ``n`` targets (never shrinking; the last is ``n``)."""
        out, prev = [], 0
        for s in self.stages:
            c = max(prev, s.of(n), 1 if n else 0)
            out.append(min(c, n))
            prev = out[-1]
        out[-1] = n
        return out

    def failure_budget(self, n: int) -> int:
        """Failed nodes tolerated among ``n`` targets; one more halts the rollout."""
        return self.max_failures.floor_of(n)

    def summary(self) -> dict:
        return self.to_document()


def split_command(value: Any) -> tuple[str, ...]:
    """A health command: an argv list, or one string split like a shell would (no shell runs it)."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise PolicyError(f"rollout: health.command {value!r}: {exc}") from None
    elif isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise PolicyError("rollout: health.command must be an argument list or a command line")
    if not argv:
        raise PolicyError("rollout: health.command is empty")
    return tuple(argv)


def plan_from_flags(*, stages: str | None, soak: str | None, health: str | None, health_timeout: str | None = None,
                    max_failures: str | None, on_failure: str | None) -> RolloutPlan | None:
    """``inject --stages 1,10%,100% --soak 30s --health CMD --max-failures N|P% --on-failure rollback|halt``.

    None when no flag is given; any one flag makes a plan (defaults for the rest)."""
    given = {k: v for k, v in (("stages", stages), ("soak", soak), ("max_failures", max_failures),
                               ("on_failure", on_failure)) if v is not None}
    if health is not None:
        given["health"] = {"command": health, **({"timeout": health_timeout} if health_timeout else {})}
    if not given:
        return None
    return RolloutPlan.from_document(given, "inject flags")


# ============================================================ stage membership
def stage_hash(node_id: str, version: Version) -> int:
    """The node's place in the rollout of ``version``: 64 bits, the same on every node and in the driver."""
    data = f"{node_id}\n{version}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=HASH_PERSON).digest(), "big")


def inside(node_hash: int, threshold: int) -> bool:
    """Is a node with this hash inside the stages opened up to ``threshold``?"""
    return threshold == ALL or node_hash < threshold


def threshold_for(sorted_hashes: list[int], count: int) -> int:
    """The smallest threshold that lets exactly the ``count`` lowest hashes in (``ALL`` for all of them)."""
    if count >= len(sorted_hashes):
        return ALL
    if count <= 0:
        return 0
    return sorted_hashes[count - 1] + 1


def stage_of(node_hash: int, thresholds: Iterable[int]) -> int | None:
    """Index of the first opened stage whose threshold lets this hash in, or None."""
    for i, t in enumerate(thresholds):
        if inside(node_hash, t):
            return i
    return None


# ============================================================ the signed record
@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRecord:
    bundle: str
    version: Version  # the bundle version being rolled out
    state: str = "running"
    stage: int = -1  # the last opened stage (-1: none yet)
    thresholds: tuple[int, ...] = ()  # one per opened stage, cumulative (never smaller than the one before)
    driver: str = ""  # node id the nodes report to
    term: int = 0  # bumped by every resume: nodes re-send their reports to the new driver
    reason: str = ""  # why halted (or who aborted)
    counts: tuple[tuple[int, int, int], ...] = ()  # per opened stage: (applied, healthy, failed) when published
    targets: int = 0  # targeted nodes the driver knew when it published

    def __post_init__(self) -> None:
        if not isinstance(self.bundle, str) or not self.bundle or len(self.bundle) > MAX_KEY_LEN - len(ROLLOUT_KEY_PREFIX):
            raise ProtocolError("rollout record: bad bundle name")
        if not isinstance(self.version, Version):
            object.__setattr__(self, "version", Version(*self.version))
        if self.state not in STATES:
            raise ProtocolError(f"rollout record: state {self.state!r} is not one of {STATES}")
        if not isinstance(self.stage, int) or not -1 <= self.stage < MAX_ROLLOUT_STAGES:
            raise ProtocolError(f"rollout record: stage must be -1..{MAX_ROLLOUT_STAGES - 1}")
        th = tuple(self.thresholds)
        if len(th) != self.stage + 1 or not all(isinstance(t, int) and 0 <= t <= ALL for t in th):
            raise ProtocolError("rollout record: one threshold per opened stage, each a 64-bit number")
        if any(b < a for a, b in zip(th, th[1:])):
            raise ProtocolError("rollout record: stage thresholds must not shrink")
        object.__setattr__(self, "thresholds", th)
        if not isinstance(self.driver, str) or len(self.driver.encode()) > MAX_NODE_ID_BYTES:
            raise ProtocolError("rollout record: driver must be a node id")
        if not isinstance(self.term, int) or not 0 <= self.term < 2**32:
            raise ProtocolError("rollout record: term must be a small non-negative number")
        if not isinstance(self.reason, str) or len(self.reason) > MAX_DETAIL_CHARS:
            object.__setattr__(self, "reason", str(self.reason)[:MAX_DETAIL_CHARS])
        counts = tuple(tuple(c) for c in self.counts)
        if len(counts) > MAX_ROLLOUT_STAGES or not all(
                len(c) == 3 and all(isinstance(x, int) and 0 <= x < 2**32 for x in c) for c in counts):
            raise ProtocolError("rollout record: counts must be (applied, healthy, failed) per stage")
        object.__setattr__(self, "counts", counts)
        if not isinstance(self.targets, int) or not 0 <= self.targets < 2**32:
            raise ProtocolError("rollout record: targets must be a count")

    @property
    def item_key(self) -> str:
        return ROLLOUT_KEY_PREFIX + self.bundle

    @property
    def threshold(self) -> int:
        """The threshold of the last opened stage (0 when none is open: nobody is inside)."""
        return self.thresholds[-1] if self.thresholds else 0

    def opens(self, node_hash: int) -> bool:
        """Is a node with this hash allowed to apply the version (its stage is open, nothing halted)?"""
        if self.state == "complete":
            return True
        return self.state == "running" and bool(self.thresholds) and inside(node_hash, self.threshold)

    def to_plain(self) -> dict:
        v = self.version
        return {"bundle": self.bundle, "counts": [list(c) for c in self.counts], "driver": self.driver,
                "format": FORMAT, "reason": self.reason, "stage": self.stage, "state": self.state,
                "targets": self.targets, "term": self.term, "thresholds": list(self.thresholds), "version": [v.wall_ms, v.counter, v.author]}

    def encode(self) -> bytes:
        return msgpack.packb(self.to_plain(), use_bin_type=True)  # to_plain's keys are written in sorted order

    @classmethod
    def decode(cls, data: bytes) -> RolloutRecord:
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_ROLLOUT_RECORD_BYTES:
            raise ProtocolError(f"rollout record must be bytes of at most {MAX_ROLLOUT_RECORD_BYTES}")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0,
                                  max_str_len=MAX_ROLLOUT_RECORD_BYTES, max_array_len=64, max_map_len=16)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"rollout record is not valid msgpack: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != RECORD_KEYS:
            raise ProtocolError(f"rollout record must be a map with exactly the keys {sorted(RECORD_KEYS)}")
        if obj["format"] != FORMAT:
            raise ProtocolError(f"rollout record format {obj['format']!r} is not supported (this version reads {FORMAT})")
        ver = obj["version"]
        if not (isinstance(ver, list) and len(ver) == 3 and isinstance(ver[0], int) and isinstance(ver[1], int)
                and isinstance(ver[2], str) and ver[0] >= 0 and ver[1] >= 0):
            raise ProtocolError("rollout record: version must be [wall_ms, counter, author]")
        for k in ("thresholds", "counts"):
            if not isinstance(obj[k], list) or len(obj[k]) > MAX_ROLLOUT_STAGES:
                raise ProtocolError(f"rollout record: {k} must be a list of at most {MAX_ROLLOUT_STAGES}")
        if not all(isinstance(c, list) for c in obj["counts"]) or not isinstance(obj["reason"], str) \
                or len(obj["reason"]) > MAX_DETAIL_CHARS:
            raise ProtocolError("rollout record: malformed counts or reason")
        record = cls(bundle=obj["bundle"], version=Version(*ver), state=obj["state"], stage=obj["stage"],
                     thresholds=tuple(obj["thresholds"]), driver=obj["driver"], term=obj["term"],
                     reason=obj["reason"], counts=tuple(tuple(c) for c in obj["counts"]), targets=obj["targets"])
        if record.encode() != bytes(data):
            raise ProtocolError("rollout record is not in canonical form")
        return record

    def may_follow(self, current: RolloutRecord) -> str | None:
        """Why this record may not replace ``current`` (same bundle version, moving backwards), or None."""
        if current.version != self.version:
            return None if self.version > current.version else "it names an older bundle version than the stored record"
        if current.state in TERMINAL and STATE_RANK[self.state] <= STATE_RANK[current.state] and self != current:
            if not (current.state == "halted" and self.state == "rolled_back"):
                return f"the rollout of this version is already {current.state}"
        if current.state == "complete" and self.state != "complete":
            return "the rollout of this version is already complete"
        if self.state == "running" and self.stage < current.stage:
            return f"stage {self.stage} is behind the opened stage {current.stage}"
        return None

    def summary(self) -> dict:
        return {"bundle": self.bundle, "version": str(self.version), "state": self.state, "stage": self.stage,
                "driver": self.driver, "term": self.term, "reason": self.reason, "targets": self.targets,
                "thresholds": list(self.thresholds), "counts": [list(c) for c in self.counts]}


def sign_record(record: RolloutRecord, key: Any, now_ms: int, after: Version | None = None) -> SignedItem:
    """The record as the item ``rollout/<bundle>``, signed by ``key``; stamped after ``after`` when given
    (so it replaces the stored record even if this clock is behind the one that wrote it)."""
    payload = record.encode()
    if len(payload) > MAX_ROLLOUT_RECORD_BYTES:
        raise PolicyError(f"rollout record of {len(payload)} bytes exceeds {MAX_ROLLOUT_RECORD_BYTES}")
    wall, counter = int(now_ms), 0
    if after is not None and (wall, counter) <= (after.wall_ms, after.counter):
        wall, counter = after.wall_ms, after.counter + 1
    item = SignedItem(key=record.item_key, version=Version(wall, counter, key.key_id), payload=payload)
    return item.with_signature(key.key_id, key.sign(item.signing_bytes()))


def record_of(item: SignedItem | None) -> RolloutRecord | None:
    """The record in a stored ``rollout/`` item (already admitted), or None."""
    if item is None or not item.key.startswith(ROLLOUT_KEY_PREFIX):
        return None
    try:
        return RolloutRecord.decode(item.payload)
    except (ProtocolError, PolicyError):
        return None


def status_document(plan: RolloutPlan | None, record: RolloutRecord | None, *, bundle: str, version: Version | None,
                    paused: bool = False, live: list | None = None, targets: int | None = None) -> dict:
    """The ``grapevine rollout status --json`` document from what a node holds: the plan (from the
    bundle), the replicated record, and the driver's live per-stage counts when it answered."""
    n = targets if targets is not None else (record.targets if record is not None else 0)
    stages = plan.stages if plan is not None else ()
    sizes = plan.stage_counts(n) if plan is not None else []
    counts = list(live if live is not None else (record.counts if record is not None else ()))
    rows = []
    for k, amount in enumerate(stages):
        a, h, f = counts[k] if k < len(counts) else (0, 0, 0)
        rows.append({"fraction": round(sizes[k] / n, 4) if n else (amount.hundredths or 0) / 10_000,
                     "size": sizes[k], "planned": str(amount), "open": record is not None and k <= record.stage,
                     "applied": a, "healthy": h, "failed": f})
    state = "paused" if record is None else record.state
    if state == "running" and paused:
        state = "paused"
    reason = record.reason if record is not None else "no stage record yet: the driver has not started"
    if state == "paused" and record is not None:
        reason = f"the driver {record.driver} is not running: `grapevine rollout resume {bundle}` takes over"
    return {"bundle": bundle, "version": None if version is None else str(version), "state": state,
            "stage": record.stage if record is not None else -1, "stages": rows, "reason": reason,
            "driver": record.driver if record is not None else None, "term": record.term if record is not None else 0,
            "targets": n, "plan": plan.to_document() if plan is not None else None}
