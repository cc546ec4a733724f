"""Prometheus metrics of one agent, in a registry of its own.

A per-agent ``CollectorRegistry`` (not the process-global one) keeps tests
that start several agents in one process honest and keeps library metrics
out of ``/metrics``. Label values are small closed sets (message type names,
refusal reasons), never node ids or item keys, so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# converge durations span a no-op check (ms) to package installs (minutes)
CONVERGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class AgentMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
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
        return generate_latest(self.registry)
