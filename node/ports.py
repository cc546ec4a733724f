"""The narrow ports node services get instead of the agent.

A service names the few calls it needs as a ``Protocol``; the agent builds
one small object of bound methods per port (``PeerLink``, ``NodeWork``,
``RunBook``), so a test can hand the service an in-memory stand-in and a
service can never reach into the rest of the agent.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Protocol

from grapevine.gossip.item import Version


class Peers(Protocol):
    """How run services reach other nodes."""

    def send(self, node_id: str, route: str, body: object) -> Awaitable[object]: ...

    def broadcast(self, kind: str, body: object, ttl_ms: int) -> bytes: ...

    def live_peers(self) -> frozenset[str]: ...

    def is_member(self, node_id: str) -> bool: ...


class RunStore(Protocol):
    """Durable run bookkeeping: seen ids (at most once) and the audit trail."""

    def run_seen(self, run_id: str) -> bool: ...

    def mark_run_seen(self, run_id: str, deadline_ms: int) -> bool: ...

    def record_run(self, row: dict) -> None: ...

    def run_history(self, limit: int) -> list[dict]: ...


@dataclass(frozen=True, slots=True)
class PeerLink:
    send: Callable[[str, str, object], Awaitable[object]]
    broadcast: Callable[[str, object, int], bytes]
    live_peers: Callable[[], frozenset[str]]
    is_member: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class NodeWork:
    """``LocalWork`` (node/runexec.py) plus what a fleet status answer reports."""

    converge_now: Callable[..., Awaitable[dict]]
    bundles: Callable[[], list[tuple[str, Any, bool]]]
    status_info: Callable[[], dict]
    preview: Callable[[list, float], Awaitable[dict]] | None = None  # node/preview.py Previewer.preview


@dataclass(frozen=True, slots=True)
class ConvergeLink:
    """``ConvergeHost`` (node/convergence.py): the stored items, the transport's drain, the agent's task set."""

    items: Callable[[], Iterable[Any]]
    drain: Callable[[float], Awaitable[None]]
    spawn: Callable[[Awaitable[Any], str], Any]


@dataclass(frozen=True, slots=True)
class RunBook:
    run_seen: Callable[[str], bool]
    mark_run_seen: Callable[[str, int], bool]
    record_run: Callable[[dict], None]
    run_history: Callable[[int], list[dict]]


class Membership:
    """Who counts as a known member of the mesh: nodes in this node's gossip views, now or before.

    The views (active and passive) change with every shuffle; ``note`` is
    called from the daemon's tick and keeps every node id they held, most
    recent first, up to ``MAX_MEMBERS`` (at most once per ``NOTE_EVERY_S``).
    Add the peers stored for rejoining (read through ``stored`` at most every
    ``refresh_s``) and a node knows, after a few shuffles, most of a fleet it
    never had as a neighbour, while an address no member ever named stays a
    stranger. Times are passed in.
    """

    MAX_MEMBERS = 65_536  # node ids remembered: a large fleet; ~100 bytes each
    NOTE_EVERY_S = 0.5  # the views are read into the memory at most this often

    def __init__(self, me: str, *, views: Callable[[], Iterable[str]], stored: Callable[[], Iterable[str]],
                 refresh_s: float = 5.0) -> None:
        self.me = me
        self.views = views
        self.stored = stored
        self.refresh_s = refresh_s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._noted_at = float("-inf")
        self._known: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def note(self, now: float) -> None:
        """Remember who is in the views now (called on every tick; cheap when called often)."""
        if now - self._noted_at < self.NOTE_EVERY_S:
            return
        self._noted_at = now
        for node in self.views():
            self._seen[node] = None
            self._seen.move_to_end(node)
        while len(self._seen) > self.MAX_MEMBERS:
            self._seen.popitem(last=False)

    def is_member(self, node_id: str, now: float) -> bool:
        if node_id == self.me or node_id in self._seen or node_id in self.views():
            return True
        if now - self._read_at >= self.refresh_s:
            self._known = frozenset(self.stored())
            self._read_at = now
        return node_id in self._known


def fleet_status_info(*, targeted: Iterable[str], applied: dict, bundles: Iterable[tuple[str, Any, bool]],
                      last_report: dict | None, status: dict, now_ms: int, detail_chars: int = 240) -> dict:
    """What a node reports to a fleet status query (``grapevine status --fleet``)."""
    targeted = set(targeted)
    rows = []
    for name, version, is_applied in bundles:
        done = applied.get(name)
        rows.append({"name": name, "version": version_text(version), "targeted": name in targeted,
                     "applied": bool(is_applied), "applied_version": version_text(done[0]) if done else None,
                     "applied_ms": done[1] if done else None})
    last = None
    if isinstance(last_report, dict):
        last = {k: last_report.get(k) for k in ("changed", "unchanged", "failed", "skipped", "at_ms", "trigger")}
        last["error"] = str(last_report.get("error") or "")[:detail_chars]
    return {"bundles": rows, "last_report": last, "now_ms": now_ms, "stale": bool(status.get("stale")),
            "last_heard_ms": status.get("last_heard_ms"), "active": status.get("active")}


def version_text(v: Any) -> str | None:
    """A bundle version as fleet status shows it: ``str(Version)``, the one text form."""
    if v is None or isinstance(v, str):
        return v
    return str(v if isinstance(v, Version) else Version(*v))
