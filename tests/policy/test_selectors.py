"""Selector grammar: a table of (selector, facts, expected) and of parse errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.errors import PolicyError
from grapevine.policy import selectors
from grapevine.policy.selectors import SelectorSyntaxError, parse

FACTS = {
    "name": "web-03",
    "role": "web",
    "env": "staging",
    "os": "debian",
    "os_version": "12",
    "cpu_count": 4,
    "addresses": ["10.0.0.7", "fd00::7"],
    "zone": "eu west",
}

MATCH_CASES = [
    # (selector, expected)
    ("", True),
    ("   ", True),
    ("role=web", True),
    ("role=db", False),
    ("role!=db", True),
    ("role!=web", False),
    ("missing=x", False),
    ("missing!=x", True),
    ("os in (debian, ubuntu)", True),
    ("os in (centos,rhel)", False),
    ("os in (debian)", True),
    ("name~=web-*", True),
    ("name~=web-?3", True),
    ("name~=db-*", False),
    ("name~=web-[0-2]*", True),
    ("name~=web-0[4-9]", False),
    ("cpu_count=4", True),
    ("cpu_count in (2, 4, 8)", True),
    ("addresses=10.0.0.7", True),
    ("addresses~=fd00:*", True),
    ("addresses!=10.0.0.7", False),
    ("role=web and env!=prod", True),
    ("role=web and env=prod", False),
    ("role=db or env=staging", True),
    ("role=db or env=prod", False),
    ("not role=db", True),
    ("not role=web", False),
    ("not not role=web", True),
    ("role=web and (env=prod or env=staging)", True),
    ("(role=web and env=prod) or os=debian", True),
    ("role=web and env=prod or os=debian", True),  # and binds tighter than or
    ("role=db and env=prod or os=centos", False),
    ("not (role=web and env=staging)", False),
    ("zone='eu west'", True),
    ('zone="eu west"', True),
    ("zone in ('eu west', 'us east')", True),
    ("role = web", True),
    ("os_version=12 and name~=web-0*", True),
]


@pytest.mark.parametrize("text,expected", MATCH_CASES)
def test_selector_matches_facts_as_table_says(text, expected):
    assert parse(text).matches(FACTS) is expected


@pytest.mark.parametrize("text,expected", MATCH_CASES)
def test_canonical_spelling_parses_to_the_same_meaning(text, expected):
    again = parse(str(parse(text)))
    assert again.matches(FACTS) is expected
    assert str(again) == str(parse(text))


ERROR_CASES = [
    # (selector, 0-based position of the error, words the message must contain)
    ("role=", 5, "expected a value after '='"),
    ("role", 4, "expected =, !=, ~= or 'in'"),
    ("role=web and", 12, "expected a fact name"),
    ("role=web or or x=y", 12, "expected a fact name"),
    ("(role=web", 9, "expected ')'"),
    ("role=web)", 8, "expected 'and', 'or' or the end"),
    ("role=web env=prod", 9, "expected 'and', 'or' or the end"),
    ("os in debian", 6, "expected '(' after 'in'"),
    ("os in (debian ubuntu)", 14, "expected ',' or ')'"),
    ("os in (debian,)", 14, "expected a value after ','"),
    ("os in ()", 7, "expected a value in the list"),
    ("role!web", 4, "unexpected '!'"),
    ("name~web", 4, "unexpected '~'"),
    ("zone='eu west", 5, "unterminated quoted value"),
    ("=web", 0, "expected a fact name"),
    ("and", 0, "expected a fact name"),
    ("role=web and not", 16, "expected a fact name"),
    ("role=and", 5, "expected a value after '='"),
]


@pytest.mark.parametrize("text,position,words", ERROR_CASES)
def test_parse_error_names_the_position(text, position, words):
    with pytest.raises(SelectorSyntaxError) as info:
        parse(text)
    err = info.value
    assert err.position == position, str(err)
    assert words in str(err)
    assert f"at position {position}" in str(err)
    assert isinstance(err, PolicyError)


def test_deep_nesting_is_refused_not_crashing():
    text = "(" * (selectors.MAX_DEPTH + 5) + "a=b" + ")" * (selectors.MAX_DEPTH + 5)
    with pytest.raises(SelectorSyntaxError, match="nested deeper"):
        parse(text)


def test_overlong_selector_is_refused():
    with pytest.raises(SelectorSyntaxError, match="longer than"):
        parse("a=b or " * (selectors.MAX_SELECTOR_CHARS // 7 + 1) + "a=b")


@pytest.mark.parametrize("value", [None, ""])
def test_empty_selector_selects_everything(value):
    assert parse(value).matches({}) is True
    assert selectors.matches(value, FACTS) is True


def test_non_string_selector_is_a_policy_error():
    with pytest.raises(PolicyError, match="must be a string"):
        parse(42)  # type: ignore[arg-type]


def test_keys_lists_every_fact_read():
    assert parse("role=web and (env!=prod or not name~=x*) or os in (a)").keys() == {"role", "env", "name", "os"}


# ---------------------------------------------------------------- property: canonical text round-trips


_KEYS = st.sampled_from(["role", "env", "name", "os", "zone"])
_VALUES = st.sampled_from(["web", "db", "prod", "web-01", "eu west", "a*", "x?y", "debian"])
_FACTS = st.fixed_dictionaries({}, optional={k: _VALUES for k in ["role", "env", "name", "os", "zone"]})


def _compare():
    return st.one_of(
        st.builds(lambda k, v: selectors.Compare(key=k, op="=", values=(v,)), _KEYS, _VALUES),
        st.builds(lambda k, v: selectors.Compare(key=k, op="!=", values=(v,)), _KEYS, _VALUES),
        st.builds(lambda k, v: selectors.Compare(key=k, op="~=", values=(v,)), _KEYS, _VALUES),
        st.builds(lambda k, vs: selectors.Compare(key=k, op="in", values=tuple(vs)), _KEYS, st.lists(_VALUES, min_size=1, max_size=3)),
    )


_TREES = st.recursive(
    _compare(),
    lambda inner: st.one_of(
        st.builds(lambda t: selectors.Not(inner=t), inner),
        st.builds(lambda ts: selectors.And(parts=tuple(ts)), st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda ts: selectors.Or(parts=tuple(ts)), st.lists(inner, min_size=2, max_size=3)),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(tree=_TREES, facts=_FACTS)
def test_printed_selector_parses_back_to_the_same_decision(tree, facts):
    parsed = parse(str(tree))
    assert parsed.matches(facts) == tree.matches(facts)
