"""Converge reports: per-resource outcome, counts, JSON and a table.

A report is plain data (frozen dataclasses of str/int/bool), so the daemon
can store ``to_json()`` and read it back with ``Report.from_json``.

Statuses: ``unchanged`` (check found nothing to do; ``reason`` says why),
``changed`` (a difference was found and applied; in a dry run, would be
applied), ``failed`` (``error`` says why), ``skipped`` (something it
requires failed or was skipped). Resources whose ``when`` selector does
not match this node are not part of the converge and do not appear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grapevine.gossip.errors import PolicyError

STATUSES = ("unchanged", "changed", "failed", "skipped")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceReport:
    id: str
    bundle: str
    status: str
    changes: tuple[str, ...] = ()
    diff: str = ""
    error: str = ""
    reason: str = ""
    output: str = ""
    duration_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise PolicyError(f"resource {self.id!r}: unknown status {self.status!r} (one of {', '.join(STATUSES)})")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": self.bundle,
            "status": self.status,
            "changes": list(self.changes),
            "diff": self.diff,
            "error": self.error,
            "reason": self.reason,
            "output": self.output,
            "duration_ms": round(self.duration_ms, 3),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ResourceReport":
        return cls(
            id=str(doc["id"]),
            bundle=str(doc.get("bundle", "")),
            status=str(doc["status"]),
            changes=tuple(doc.get("changes") or ()),
            diff=str(doc.get("diff") or ""),
            error=str(doc.get("error") or ""),
            reason=str(doc.get("reason") or ""),
            output=str(doc.get("output") or ""),
            duration_ms=float(doc.get("duration_ms") or 0.0),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    resources: tuple[ResourceReport, ...]
    dry_run: bool = False
    node: str = ""
    root: str = "/"
    bundles: tuple[str, ...] = ()
    started_ms: int = 0  # wall clock, Unix epoch milliseconds
    duration_ms: float = 0.0
    counts: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        counts = {s: 0 for s in STATUSES}
        for r in self.resources:
            counts[r.status] += 1
        object.__setattr__(self, "counts", counts)

    @property
    def changed(self) -> int:
        return self.counts["changed"]

    @property
    def unchanged(self) -> int:
        return self.counts["unchanged"]

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.skipped == 0

    def by_id(self) -> dict[str, ResourceReport]:
        return {r.id: r for r in self.resources}

    def with_status(self, status: str) -> list[str]:
        return [r.id for r in self.resources if r.status == status]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.counts,
            "dry_run": self.dry_run,
            "node": self.node,
            "root": self.root,
            "bundles": list(self.bundles),
            "started_ms": self.started_ms,
            "duration_ms": round(self.duration_ms, 3),
            "resources": [r.to_json() for r in self.resources],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Report":
        return cls(
            resources=tuple(ResourceReport.from_json(r) for r in doc.get("resources", ())),
            dry_run=bool(doc.get("dry_run", False)),
            node=str(doc.get("node", "")),
            root=str(doc.get("root", "/")),
            bundles=tuple(doc.get("bundles") or ()),
            started_ms=int(doc.get("started_ms") or 0),
            duration_ms=float(doc.get("duration_ms") or 0.0),
        )

    def summary_line(self) -> str:
        verb = "would change" if self.dry_run else "changed"
        return (
            f"{self.changed} {verb}, {self.unchanged} unchanged, {self.failed} failed, "
            f"{self.skipped} skipped in {self.duration_ms:.0f} ms"
        )
