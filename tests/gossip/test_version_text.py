"""A version has one text form (``str(v)``) and one parser (``Version.parse``).

Every place that shows or reads a version (local API, CLI, logs, fleet status,
converge orders) goes through these two, so they must round-trip exactly and
refuse everything else with a ConfigError.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grapevine.gossip.errors import ConfigError, Reason
from grapevine.gossip.item import Version

versions = st.builds(
    Version,
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.text(min_size=1, max_size=64),
)


@given(versions)
def test_text_form_round_trips(v):
    assert Version.parse(str(v)) == v
    assert Version.parse_stamp(v.stamp) == (v.wall_ms, v.counter)
    assert Version.parse_stamp(str(v)) == (v.wall_ms, v.counter)


@given(versions, versions)
def test_parsed_text_orders_like_the_versions(a, b):
    assert (Version.parse(str(a)) < Version.parse(str(b))) == (a < b)


def test_printed_form_is_unchanged():
    v = Version(1700000000123, 4, "9f86d081884c7d65")
    assert str(v) == f"{v}" == "1700000000123.4.9f86d081884c7d65"
    assert v.stamp == "1700000000123.4"


@pytest.mark.parametrize("text", ["", "1.2", "1.2.", "1.x.abc", "-1.2.abc", " 1.2.abc", "1..abc", "١.2.abc", None, 12])
def test_anything_else_is_refused_with_a_config_error(text):
    with pytest.raises(ConfigError) as info:
        Version.parse(text)
    assert info.value.reason is Reason.MALFORMED


@pytest.mark.parametrize("text", ["", "1", "1.", "x.2", "1.2x"])
def test_bad_stamp_is_refused(text):
    with pytest.raises(ConfigError):
        Version.parse_stamp(text)
