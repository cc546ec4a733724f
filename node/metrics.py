"""Prometheus metrics of one agent, in a registry of its own, rendered as Prometheus text (format 0.0.4).

A per-agent ``Registry`` (not a process-global one) keeps tests that start
several agents in one process honest. Label values are small closed sets
(message type names, refusal reasons), never node ids or item keys, so
cardinality stays bounded.

Counters, gauges and histograms with labels, and their text exposition, are
the few dozen lines below rather than a client library: the library loaded
an HTTP server, WSGI, TLS and a multiprocess mode into every daemon for a
page the agent serves itself (about 1.5 MiB of each agent's resident
memory, benchmarks/RESULTS-mesh.md). Counter samples carry the ``_total``
suffix, histograms ``_bucket{le=...}``, ``_sum`` and ``_count``, as
Prometheus expects.
"""

from __future__ import annotations

import math
from typing import Iterator

# converge durations span a no-op check (ms) to package installs (minutes)
CONVERGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Value:
    """One time series: a counter or gauge value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _Buckets:
    """One histogram series: cumulative bucket counts, sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += 1


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, doc: str, labelnames: tuple[str, ...] | list[str] = (), *,
                 registry: Registry) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._series[()] = self._new()
        registry.register(self)

    def _new(self) -> object:
        return _Value()

    def labels(self, *values: str):
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = self._new()
        return s

    def _only(self):
        return self._series[()]

    def lines(self) -> Iterator[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def lines(self) -> Iterator[str]:
        name = self.name + "_total"
        yield f"# HELP {name} {self.doc}"
        yield f"# TYPE {name} counter"
        for key, s in self._series.items():
            yield f"{name}{_labels(self.labelnames, key)} {_number(s.value)}"


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.doc}"
        yield f"# TYPE {self.name} gauge"
        for key, s in self._series.items():
            yield f"{self.name}{_labels(self.labelnames, key)} {_number(s.value)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, doc: str, labelnames=(), *, buckets: tuple[float, ...], registry: Registry) -> None:
        self.bounds = tuple(float(b) for b in buckets) + (math.inf,)
        super().__init__(name, doc, labelnames, registry=registry)

    def _new(self) -> object:
        return _Buckets(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.doc}"
        yield f"# TYPE {self.name} histogram"
        for key, s in self._series.items():
            for b, c in zip(s.bounds, s.counts):
                yield f"{self.name}_bucket{_labels(self.labelnames, key, f'le={chr(34)}{_number(b)}{chr(34)}')} {_number(c)}"
            yield f"{self.name}_count{_labels(self.labelnames, key)} {_number(s.count)}"
            yield f"{self.name}_sum{_labels(self.labelnames, key)} {_number(s.sum)}"


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> None:
        if any(m.name == metric.name for m in self.metrics):
            raise ValueError(f"metric {metric.name} is registered twice")
        self.metrics.append(metric)

    def render(self) -> bytes:
        return ("\n".join(line for m in self.metrics for line in m.lines()) + "\n").encode()


class AgentMetrics:
    content_type = CONTENT_TYPE

    def __init__(self) -> None:
        r = self.registry = Registry()
        self._in: dict[str, tuple] = {}
        self._out: dict[str, tuple] = {}
        self.items = Gauge("grapevine_items", "Items held in the store", registry=r)
        self.admissions = Counter("grapevine_admissions", "Items admitted", ["origin"], registry=r)
        self.refusals = Counter("grapevine_refusals", "Items refused, by reason", ["reason"], registry=r)
        self.messages_in = Counter("grapevine_messages_received", "Peer messages received, by type", ["type"], registry=r)
        self.messages_out = Counter("grapevine_messages_sent", "Peer messages sent, by type", ["type"], registry=r)
        self.bytes_in = Counter("grapevine_bytes_received", "Sealed frame bytes received, by message type", ["type"], registry=r)
        self.bytes_out = Counter("grapevine_bytes_sent", "Sealed frame bytes sent, by message type", ["type"], registry=r)
        self.send_failures = Counter("grapevine_send_failures", "Sends that failed, by transport", ["transport"], registry=r)
        self.bad_frames = Counter("grapevine_bad_frames", "Peer frames refused before use, by reason", ["reason"], registry=r)
        self.run_refusals = Counter(
            "grapevine_run_refusals", "Run orders and run results refused, by reason", ["reason"], registry=r
        )
        self.late_answers = Counter(
            "grapevine_run_late_answers",
            "Run discovery answers that came after the quiet window: during_run (started late) or after_run (not started)",
            ["when"], registry=r,
        )
        self.converge_seconds = Histogram(
            "grapevine_converge_duration_seconds", "Converge durations", ["trigger"], buckets=CONVERGE_BUCKETS, registry=r
        )
        self.converge_failures = Counter("grapevine_converge_failures", "Converges that failed or had failed resources", registry=r)
        self.active_peers = Gauge("grapevine_active_peers", "Peers in the active view", registry=r)
        self.passive_peers = Gauge("grapevine_passive_peers", "Peers in the passive view", registry=r)
        self.links = Gauge("grapevine_links_open", "Open outgoing peer links", registry=r)
        self.ticks = Counter("grapevine_core_ticks", "Timer ticks of the gossip core", registry=r)
        self.strangers_closed = Counter(
            "grapevine_peer_strangers_closed",
            "Unauthenticated peer-port connections closed: Evicted (over the cap) or Expired (deadline)",
            ["reason"], registry=r,
        )
        self.node_key_changes = Counter(
            "grapevine_node_key_changes", "Frames signed with a node key other than the one pinned for their sender's name",
            registry=r,
        )
        self.last_heard = Gauge("grapevine_last_heard_timestamp_seconds", "When a valid frame last arrived", registry=r)

    def inbound(self, type_name: str) -> tuple:
        """(messages, bytes) counters of one received message type, looked up once."""
        pair = self._in.get(type_name)
        if pair is None:
            pair = self._in[type_name] = (self.messages_in.labels(type_name), self.bytes_in.labels(type_name))
        return pair

    def outbound(self, type_name: str) -> tuple:
        """(messages, bytes) counters of one sent message type, looked up once."""
        pair = self._out.get(type_name)
        if pair is None:
            pair = self._out[type_name] = (self.messages_out.labels(type_name), self.bytes_out.labels(type_name))
        return pair

    def render(self) -> bytes:
        return self.registry.render()
