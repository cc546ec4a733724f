"""Figures of a simulated run: percentiles, traffic windows, process costs.

Everything here is computed from simulated quantities (virtual ms, counted
messages and bytes), so two runs with the same seed give the same figures.
The two exceptions, ``wall_s`` and ``peak_rss_mb``, describe the machine
that ran the simulation and are named so callers can strip them.
"""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import dataclass
from typing import Any, Iterable

from .network import Traffic

# Figures that depend on the machine, not on the seed.
MACHINE_FIELDS = ("wall_s", "peak_rss_mb")


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary(values: Iterable[int]) -> dict[str, int | None]:
    """p50, p90, p99 and max of a set of durations in ms."""
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else None,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficWindow:
    """Traffic between two snapshots of the fleet counters."""

    messages: int
    bytes: int
    payload_copies: int
    lost: int
    failed: int
    by_type: dict[str, list[int]]
    duration_ms: int

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any], duration_ms: int) -> TrafficWindow:
        by_type = {}
        for name, (m, b) in after["by_type"].items():
            m0, b0 = before["by_type"].get(name, (0, 0))
            if m - m0:
                by_type[name] = [m - m0, b - b0]
        return cls(
            messages=after["messages"] - before["messages"],
            bytes=after["bytes"] - before["bytes"],
            payload_copies=after["payload_copies"] - before["payload_copies"],
            lost=after["lost"] - before["lost"],
            failed=after["failed"] - before["failed"],
            by_type=dict(sorted(by_type.items())),
            duration_ms=duration_ms,
        )

    def per_node(self, nodes: int) -> dict[str, float]:
        n = max(1, nodes)
        return {
            "messages_per_node": round(self.messages / n, 3),
            "bytes_per_node": round(self.bytes / n, 1),
            "payload_copies_per_node": round(self.payload_copies / n, 4),
        }

    def rate_per_node(self, nodes: int) -> dict[str, float]:
        """Bytes and messages per node per simulated second."""
        seconds = max(self.duration_ms, 1) / 1000.0
        n = max(1, nodes)
        return {
            "idle_bytes_per_node_per_s": round(self.bytes / n / seconds, 2),
            "idle_messages_per_node_per_s": round(self.messages / n / seconds, 4),
        }


class Recorder:
    """Takes traffic snapshots at phase boundaries."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self._marks: dict[str, tuple[int, dict[str, Any]]] = {}

    def mark(self, name: str, now: int) -> None:
        self._marks[name] = (now, self.traffic.snapshot())

    def since(self, name: str, now: int) -> TrafficWindow:
        t0, snap = self._marks[name]
        return TrafficWindow.between(snap, self.traffic.snapshot(), now - t0)


def strip_machine_fields(doc: Any) -> Any:
    """A copy of a result document without the machine-dependent figures."""
    if isinstance(doc, dict):
        return {k: strip_machine_fields(v) for k, v in doc.items() if k not in MACHINE_FIELDS}
    if isinstance(doc, list):
        return [strip_machine_fields(v) for v in doc]
    return doc
