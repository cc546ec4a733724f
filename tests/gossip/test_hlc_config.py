"""Hybrid logical clock and the settings of the core."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.config import GossipConfig, active_view_size, passive_view_size
from grapevine.gossip.errors import ConfigError
from grapevine.gossip.hlc import HybridClock

events = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(0, 10_000)),
        st.tuples(st.just("observe"), st.integers(0, 10_000), st.integers(0, 50), st.integers(0, 10_000)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_clock_never_goes_backwards(evts):
    clock = HybridClock(max_drift_ms=1_000)
    last = clock.peek()
    for e in evts:
        if e[0] == "tick":
            stamp = clock.tick(e[1])
            assert stamp > last
            assert stamp[0] >= e[1]
        else:
            _, wall, counter, now = e
            adopted = clock.observe(wall, counter, now)
            stamp = clock.peek()
            assert stamp >= last
            if adopted:
                assert stamp > (wall, counter)
                assert clock.tick(now) > (wall, counter)
        last = clock.peek()


def test_tick_follows_wall_time_and_counts_within_a_millisecond():
    clock = HybridClock()
    assert clock.tick(100) == (100, 0)
    assert clock.tick(100) == (100, 1)
    assert clock.tick(99) == (100, 2)
    assert clock.tick(101) == (101, 0)


def test_stamp_far_in_the_future_is_not_adopted():
    clock = HybridClock(max_drift_ms=60_000)
    assert not clock.observe(10_000_000, 0, now=1_000)
    assert clock.tick(1_000) == (1_000, 0)
    assert clock.observe(50_000, 4, now=1_000)
    assert clock.tick(1_000) == (50_000, 6)


@pytest.mark.parametrize("n, active", [(1, 3), (10, 3), (100, 3), (1_000, 4), (10_000, 5), (100_000, 6), (1_000_000, 7)])
def test_active_view_grows_with_log_of_fleet(n, active):
    assert active_view_size(n) == active
    assert passive_view_size(n) == 6 * active


def test_defaults_and_presets():
    cfg = GossipConfig()
    assert (cfg.active_view_size, cfg.passive_view_size) == (5, 30)
    assert GossipConfig.lan() == cfg
    local = GossipConfig.local()
    assert local.antientropy_interval_ms < cfg.antientropy_interval_ms
    assert local.probe_interval_ms < cfg.probe_interval_ms
    assert GossipConfig.for_fleet(100_000).active_view_size == 6
    assert GossipConfig.local(max_skew_ms=5).max_skew_ms == 5


@pytest.mark.parametrize(
    "field, value",
    [("active_view_size", 0), ("probe_interval_ms", 0), ("jitter", 1.5), ("max_skew_ms", -1), ("passive_walk_length", 99), ("shuffle_interval_ms", "10s")],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        GossipConfig(**{field: value})
