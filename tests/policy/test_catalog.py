"""Catalog: entry types, validation of broken policies, ordering and cycles."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.errors import PolicyError
from grapevine.policy.bundle import Bundle
from grapevine.policy.catalog import build_catalog, validate_bundles
from grapevine.policy.resources import entry_type


def bundle(resources, name="site/base", target=None, files=None) -> Bundle:
    doc = {"bundle": name, "resources": resources, "files": files or {}}
    if target is not None:
        doc["target"] = target
    return Bundle.from_document(doc, "test.yaml")


TYPE_CASES = [
    ({"file": "/etc/motd", "content": "x"}, "file"),
    ({"file": "/etc/motd", "group": "adm", "owner": "root"}, "file"),  # `group` is also a type
    ({"directory": "/srv", "group": "www"}, "directory"),
    ({"user": "bob", "group": "staff", "groups": ["adm"]}, "user"),
    ({"group": "staff", "gid": 50}, "group"),
    ({"package": "nginx"}, "package"),
    ({"service": "nginx", "running": True}, "service"),
    ({"exec": "x", "command": "true", "require": "file:/a"}, "exec"),
    ({"symlink": "/a", "to": "/b"}, "symlink"),
]


@pytest.mark.parametrize("entry,expected", TYPE_CASES)
def test_entry_type_is_found_by_key_not_position(entry, expected):
    assert entry_type(entry) == expected
    assert entry_type(dict(reversed(list(entry.items())))) == expected


BROKEN = [
    # (resources, files, words every message must contain)
    ([{"packag": "nginx"}], {}, ["resource #1", "unknown resource type 'packag'"]),
    ([{"file": "/etc/x", "mdoe": "0644"}], {}, ["file:/etc/x", "unknown attribute 'mdoe'"]),
    ([{"file": "/etc/x", "group": "adm", "mdoe": "0644"}], {}, ["file:/etc/x", "unknown attribute 'mdoe'"]),
    ([{"file": "/etc/x", "exec": "y"}], {}, ["several resource types (exec, file)"]),
    ([{"exec": "warm"}], {}, ["exec:warm", "missing attribute 'command'"]),
    ([{"symlink": "/srv/current"}], {}, ["symlink:/srv/current", "missing attribute 'to'"]),
    ([{"file": "/etc/x", "mode": "0999"}], {}, ["file:/etc/x", "bad mode '0999'"]),
    ([{"file": "/etc/x", "mode": 644}], {}, ["file:/etc/x", "bad mode 644", "ambiguous"]),
    ([{"file": "/etc/x", "mode": "rw-r--r--"}], {}, ["file:/etc/x", "bad mode"]),
    ([{"file": "/etc/x", "when": "role="}], {}, ["file:/etc/x", "bad selector", "position 5"]),
    ([{"file": "/etc/x", "require": ["package:nginx"]}], {}, ["file:/etc/x", "require 'package:nginx'", "no such resource"]),
    ([{"file": "/etc/x", "notify": "service:nginx"}], {}, ["file:/etc/x", "notify 'service:nginx'", "no such resource"]),
    ([{"file": "/etc/x", "require": "nginx"}], {}, ["file:/etc/x", "not a resource id"]),
    ([{"file": "etc/x"}], {}, ["file:etc/x", "must be absolute"]),
    ([{"file": "/etc/../x"}], {}, ["must not contain '..'"]),
    ([{"file": "/etc/x", "content": "a", "source": "a.j2"}], {"a.j2": "x"}, ["file:/etc/x", "not both"]),
    ([{"file": "/etc/x", "source": "missing.conf"}], {"other": "x"}, ["file:/etc/x", "'missing.conf' is not attached"]),
    ([{"file": "/etc/x"}, {"file": "/etc/x"}], {}, ["file:/etc/x", "declared twice"]),
    ([{"exec": "x", "command": "true", "timeout": "soon"}], {}, ["exec:x", "timeout"]),
    ([{"file": "/etc/x", "ensure": "gone"}], {}, ["file:/etc/x", "expected one of present, absent"]),
    ([{"package": "Not A Name"}], {}, ["package:Not A Name", "not a valid apt package name"]),
    ([{"service": "nginx", "running": "maybe"}], {}, ["service:nginx", "true or false"]),
    ([{"exec": "x", "command": []}], {}, ["exec:x", "command"]),
    ([{"file": "/etc/x", "ensure": "absent", "content": "x"}], {}, ["file:/etc/x", "absent file takes no content"]),
    (
        [{"exec": "a", "command": "true", "require": "exec:b"}, {"exec": "b", "command": "true", "require": "exec:a"}],
        {},
        ["dependency cycle", "exec:a", "exec:b"],
    ),
]


@pytest.mark.parametrize("resources,files,words", BROKEN, ids=[w[-1] for _, _, w in BROKEN])
def test_broken_policy_is_refused_naming_bundle_resource_and_reason(resources, files, words):
    with pytest.raises(PolicyError) as info:
        validate_bundles([bundle(resources, files=files)])
    message = str(info.value)
    assert "site/base" in message
    for word in words:
        assert word in message, message


def test_bad_bundle_target_is_refused():
    with pytest.raises(PolicyError, match=r"target: bad selector .* at position 6"):
        validate_bundles([bundle([], target="os in debian")])


def ids(resources_by_bundle: dict[str, list[dict]]) -> tuple[str, ...]:
    return build_catalog([bundle(r, name=n) for n, r in resources_by_bundle.items()]).order


def test_order_without_dependencies_is_declaration_order():
    res = [{"file": f"/f{i}"} for i in (3, 1, 2)]
    assert ids({"a": res}) == ("file:/f3", "file:/f1", "file:/f2")


def test_require_puts_the_required_resource_first():
    res = [
        {"file": "/etc/nginx/nginx.conf", "require": ["package:nginx", "directory:/etc/nginx"]},
        {"directory": "/etc/nginx", "require": "package:nginx"},
        {"package": "nginx"},
    ]
    assert ids({"a": res}) == ("package:nginx", "directory:/etc/nginx", "file:/etc/nginx/nginx.conf")


def test_notify_puts_the_notified_resource_after_the_notifier():
    res = [{"service": "nginx"}, {"file": "/etc/nginx.conf", "notify": "service:nginx"}]
    assert ids({"a": res}) == ("file:/etc/nginx.conf", "service:nginx")


def test_require_works_across_bundles():
    order = ids({"app/web": [{"file": "/srv/app.conf", "require": "user:app"}], "base/users": [{"user": "app"}]})
    assert order == ("user:app", "file:/srv/app.conf")


def test_order_is_deterministic_whatever_order_bundles_arrive_in():
    bundles = [
        bundle([{"file": "/b1", "require": "file:/c1"}, {"file": "/b2"}], name="b"),
        bundle([{"file": "/a1"}, {"file": "/a2", "require": "file:/b2"}], name="a"),
        bundle([{"file": "/c1"}, {"file": "/c2", "notify": "file:/a1"}], name="c"),
    ]
    first = build_catalog(bundles).order
    rng = random.Random(7)
    for _ in range(10):
        shuffled = bundles[:]
        rng.shuffle(shuffled)
        assert build_catalog(shuffled).order == first
    assert first.index("file:/c1") < first.index("file:/b1")
    assert first.index("file:/b2") < first.index("file:/a2")
    assert first.index("file:/c2") < first.index("file:/a1")


def test_cycle_names_every_member_and_only_them():
    res = [
        {"exec": "outside", "command": "true"},
        {"exec": "a", "command": "true", "require": "exec:c"},
        {"exec": "b", "command": "true", "require": "exec:a"},
        {"exec": "c", "command": "true", "require": "exec:b"},
        {"exec": "after", "command": "true", "require": "exec:c"},
    ]
    with pytest.raises(PolicyError) as info:
        ids({"a": res})
    message = str(info.value)
    assert "members: exec:a, exec:b, exec:c" in message
    assert "exec:a -> exec:b -> exec:c -> exec:a" in message
    assert "outside" not in message and "after" not in message


def test_two_separate_cycles_are_both_named():
    res = [
        {"exec": "a", "command": "true", "require": "exec:b"},
        {"exec": "b", "command": "true", "require": "exec:a"},
        {"exec": "c", "command": "true", "notify": "exec:d"},
        {"exec": "d", "command": "true", "notify": "exec:c"},
    ]
    with pytest.raises(PolicyError) as info:
        ids({"a": res})
    assert "members: exec:a, exec:b" in str(info.value)
    assert "members: exec:c, exec:d" in str(info.value)


def test_a_resource_requiring_itself_is_a_cycle():
    with pytest.raises(PolicyError, match=r"exec:a -> exec:a"):
        ids({"a": [{"exec": "a", "command": "true", "require": "exec:a"}]})


def test_cycle_across_bundles_names_both_bundles():
    with pytest.raises(PolicyError, match=r"cycle in bundle\(s\) a, b"):
        ids({"a": [{"file": "/x", "require": "file:/y"}], "b": [{"file": "/y", "require": "file:/x"}]})


def test_require_of_a_resource_in_a_bundle_for_other_nodes_is_allowed_when_known():
    cat = build_catalog([bundle([{"file": "/x", "require": "user:app"}])], known_elsewhere={"user:app"})
    assert cat.order == ("file:/x",)


# ---------------------------------------------------------------- properties of the order



@st.composite
def _graphs(draw, acyclic: bool):
    n = draw(st.integers(min_value=1, max_value=9))
    edges = set()
    for a in range(n):
        for b in range(n):
            if a != b and (not acyclic or a < b) and draw(st.booleans()) and draw(st.booleans()):
                edges.add((a, b))  # a must come before b
    perm = draw(st.permutations(range(n)))
    return n, edges, perm


def _resources(n, edges, perm):
    res = []
    for i in perm:  # declared in a shuffled order
        before = sorted(f"exec:r{a}" for a, b in edges if b == i)
        res.append({"exec": f"r{i}", "command": "true", "require": before})
    return res


@settings(max_examples=150, deadline=None)
@given(_graphs(acyclic=True))
def test_order_respects_every_require(graph):
    n, edges, perm = graph
    order = build_catalog([bundle(_resources(n, edges, perm))]).order
    pos = {rid: i for i, rid in enumerate(order)}
    assert len(order) == n
    for a, b in edges:
        assert pos[f"exec:r{a}"] < pos[f"exec:r{b}"]


def _on_a_cycle(n, edges):
    reach = {i: {b for a, b in edges if a == i} for i in range(n)}
    changed = True
    while changed:
        changed = False
        for i in range(n):
            extra = set().union(*(reach[j] for j in reach[i])) - reach[i] if reach[i] else set()
            if extra:
                reach[i] |= extra
                changed = True
    return {i for i in range(n) if i in reach[i]}


@settings(max_examples=150, deadline=None)
@given(_graphs(acyclic=False))
def test_a_cycle_error_names_exactly_the_resources_on_cycles(graph):
    n, edges, perm = graph
    cyclic = _on_a_cycle(n, edges)
    if not cyclic:
        build_catalog([bundle(_resources(n, edges, perm))])
        return
    with pytest.raises(PolicyError) as info:
        build_catalog([bundle(_resources(n, edges, perm))])
    message = str(info.value)
    named = {i for i in range(n) if any(f"exec:r{i}{end}" in message for end in (",", ")", " "))}
    assert named == cyclic, message
