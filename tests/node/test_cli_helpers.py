"""Pure helpers of the fleet commands: choosing a version from history."""

from __future__ import annotations

import click
import pytest

from grapevine.cli.fleet import resolve_version
from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import Version

HISTORY = {"key": "bundle/app", "versions": [
    {"version": "1000.0.aaaa"}, {"version": "2000.0.aaaa"}, {"version": "2000.1.bbbb"},
]}


@pytest.mark.parametrize(("wanted", "expected"), [
    ("#1", "1000.0.aaaa"), ("3", "2000.1.bbbb"), ("2000.0.aaaa", "2000.0.aaaa"),
    ("1000", "1000.0.aaaa"), ("2000.1", "2000.1.bbbb"),
])
def test_rollback_target_is_found_by_index_full_text_or_unique_prefix(wanted, expected):
    assert resolve_version(HISTORY, wanted) == expected


@pytest.mark.parametrize("wanted", ["#4", "2000", "9", "nope"])
def test_ambiguous_or_unknown_rollback_target_is_a_usage_error(wanted):
    with pytest.raises(click.UsageError):
        resolve_version(HISTORY, wanted)


@pytest.mark.parametrize(("text", "ok"), [
    ("1.2.abc", Version(1, 2, "abc")), ("1.2.a.b", Version(1, 2, "a.b")), ("1.x.abc", None), ("1.2", None), ("", None),
])
def test_version_text_parses_or_is_refused(text, ok):
    if ok is None:
        with pytest.raises(ConfigError):
            Version.parse(text)
    else:
        assert Version.parse(text) == ok
