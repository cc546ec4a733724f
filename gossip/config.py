"""Settings of the gossip core: one frozen dataclass, every default explained.

``GossipConfig()`` is the LAN default, sized for fleets of about 10,000
nodes. ``GossipConfig.local()`` shortens every interval so a handful of
daemons on one machine converge within seconds (tests, the demo).
``GossipConfig.for_fleet(n)`` sizes the views for a fleet of ``n`` nodes.

Quantities that scale with the fleet are small pure functions
(``active_view_size``, ``passive_view_size``) with their own tests.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError


def active_view_size(fleet_size: int) -> int:
    """Active view for a fleet of ``fleet_size`` nodes: about log10(N) + 1.

    With log10(N) + 1 random neighbours the active overlay stays connected
    under heavy failure (HyParView's analysis) while the broadcast tree keeps
    few hops. Never below 3: with 2 neighbours one failure can cut a node off.
    """
    n = max(1, int(fleet_size))
    return max(3, math.ceil(math.log10(n)) + 1)


def passive_view_size(fleet_size: int) -> int:
    """Passive view: six times the active view, the backup pool for repairs."""
    return 6 * active_view_size(fleet_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig:
    # --- membership (HyParView) -------------------------------------------
    active_view_size: int = 5  # log10(10,000) + 1: symmetric links kept open and probed
    passive_view_size: int = 30  # 6x active: enough spares to repair several failures at once
    active_walk_length: int = 6  # a forward-join walks 6 hops before the joiner is adopted
    passive_walk_length: int = 3  # at hop 3 of the walk the joiner also lands in a passive view
    shuffle_interval_ms: int = 10_000  # passive views refresh every 10 s (one walk per node)
    shuffle_walk_length: int = 3  # a shuffle travels 3 hops, so samples mix beyond neighbours
    shuffle_active_count: int = 3  # active peers offered in a shuffle sample
    shuffle_passive_count: int = 4  # passive peers offered in a shuffle sample
    probe_interval_ms: int = 3_000  # a neighbour silent for 3 s gets a ping (a closed link is noticed at once)
    probe_timeout_ms: int = 9_000  # silent for 9 s (2 missed pings) means failed
    neighbor_timeout_ms: int = 2_000  # an unanswered neighbour request counts as a failure
    repair_interval_ms: int = 1_000  # while the active view is short, one request per second
    join_retry_ms: int = 2_000  # while isolated, re-send a join to a remembered contact
    # --- partition healing --------------------------------------------------
    graveyard_size: int = 32  # failed peers remembered as paths back after a partition
    graveyard_ttl_ms: int = 3_600_000  # forget a failed peer after an hour
    rejoin_interval_ms: int = 5_000  # at most one retry of a failed peer per 5 s per node
    rejoin_link_probability: float = 0.1  # a revived peer becomes a neighbour with this chance
    # --- broadcast (Plumtree) ----------------------------------------------
    graft_timeout_ms: int = 250  # announced but not received for 0.25 s (many LAN round trips): graft it
    graft_retry_ms: int = 150  # the next announcer is grafted 0.15 s after that
    pull_wait_ms: int = 2  # a publisher's first broadcast is pulled: wait 2 ms (under a LAN round trip) for closer announcers, then graft the closest; 0 grafts the first
    hop_optimization_threshold: int = 3  # re-parent when a lazy path is 3+ hops shorter
    flood_hops: int = 3  # a publisher's first broadcast is pushed on every link within 3 hops of it (no pull round trips there; the overlay is still tree-like that close, so +0.001 copies per node at 10,000 nodes), pulled beyond
    message_cache_ms: int = 60_000  # ids are remembered (dedupe, grafts) for 60 s
    max_ephemeral_ttl_ms: int = 600_000  # an ephemeral broadcast lives at most 10 minutes
    # payload bytes of ephemeral broadcasts kept to answer grafts: beyond 16 MiB the oldest are
    # only remembered by id (still never delivered twice), so a flood of large ones cannot grow memory
    max_ephemeral_bytes: int = 16 * 1024 * 1024
    # --- anti-entropy -------------------------------------------------------
    antientropy_interval_ms: int = 4_000  # one root-digest exchange every 4 s
    antientropy_passive_every: int = 8  # every 8th exchange goes to a passive peer
    max_sync_items: int = 256  # items per sync message; the rest follow in later rounds
    max_sync_bytes: int = 4 * 1024 * 1024  # payload bytes per sync message (below the frame limit)
    # --- items --------------------------------------------------------------
    max_skew_ms: int = 60_000  # an item stamped more than 60 s ahead of now is refused
    # --- timers -------------------------------------------------------------
    jitter: float = 0.2  # every period is drawn within +-20 % so nodes do not tick in step

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"gossip setting {f.name} must be a number, got {value!r}")
            if value < 0:
                raise ConfigError(f"gossip setting {f.name} must not be negative, got {value!r}")
        if self.active_view_size < 1:
            raise ConfigError("active_view_size must be at least 1")
        if self.passive_walk_length > self.active_walk_length:
            raise ConfigError("passive_walk_length must not exceed active_walk_length")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError("jitter must be in [0, 1)")
        if not 0.0 <= self.rejoin_link_probability <= 1.0:
            raise ConfigError("rejoin_link_probability must be in [0, 1]")
        for name in (
            "shuffle_interval_ms",
            "probe_interval_ms",
            "repair_interval_ms",
            "join_retry_ms",
            "rejoin_interval_ms",
            "antientropy_interval_ms",
            "graft_timeout_ms",
            "graft_retry_ms",
            "max_ephemeral_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_sync_items < 1:
            raise ConfigError("max_sync_items must be at least 1")

    @classmethod
    def lan(cls, **overrides: object) -> GossipConfig:
        """The default: a data-centre LAN of up to about 10,000 nodes."""
        return cls(**overrides)  # type: ignore[arg-type]

    @classmethod
    def local(cls, **overrides: object) -> GossipConfig:
        """Short intervals for a few daemons on one machine (tests, the demo)."""
        base = dict(
            active_view_size=3,
            passive_view_size=12,
            active_walk_length=3,
            passive_walk_length=2,
            shuffle_interval_ms=2_000,
            shuffle_walk_length=2,
            probe_interval_ms=300,
            probe_timeout_ms=1_200,
            neighbor_timeout_ms=800,
            repair_interval_ms=300,
            join_retry_ms=500,
            rejoin_interval_ms=1_000,
            graft_timeout_ms=200,
            graft_retry_ms=100,
            antientropy_interval_ms=500,
            antientropy_passive_every=3,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def for_fleet(cls, fleet_size: int, **overrides: object) -> GossipConfig:
        """Defaults with views sized for ``fleet_size`` nodes."""
        base: dict[str, object] = dict(
            active_view_size=active_view_size(fleet_size),
            passive_view_size=passive_view_size(fleet_size),
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> GossipConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
