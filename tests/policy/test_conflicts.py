"""Two bundles that declare the same resource: the earlier keeps it, the later is refused (Conflict)."""

from __future__ import annotations

import itertools

from grapevine.gossip.item import Version
from grapevine.policy.bundle import Bundle
from grapevine.policy.catalog import build_catalog, resolve_claims

A, B = "a" * 16, "b" * 16


def bundle(name, *resources):
    return Bundle(name=name, resources=tuple(resources))


NGINX = bundle("web/nginx", {"file": "/etc/nginx/nginx.conf", "content": "mine"}, {"service": "nginx"})
INTRUDER = bundle("aaa/intruder", {"file": "/etc/nginx/nginx.conf", "content": "theirs"})
OTHER = bundle("db/pg", {"file": "/etc/pg.conf", "content": "x"})


def test_the_later_claim_is_refused_naming_both_bundles():
    kept, conflicts = resolve_claims([(NGINX, Version(100, 0, A)), (INTRUDER, Version(200, 0, B)), (OTHER, Version(300, 0, A))])
    assert [b.name for b in kept] == ["web/nginx", "db/pg"]
    (c,) = conflicts
    assert (c.reason, c.kept, c.refused, c.resource) == ("Conflict", "web/nginx", "aaa/intruder", "file:/etc/nginx/nginx.conf")
    assert "'aaa/intruder'" in c.detail() and "'web/nginx'" in c.detail()
    build_catalog(kept)  # what remains builds: the duplicate no longer freezes every bundle


def test_every_node_decides_the_same_whatever_order_it_holds_the_bundles_in():
    pairs = [(NGINX, Version(200, 0, A)), (INTRUDER, Version(100, 5, B)), (OTHER, Version(150, 0, A))]
    outcomes = set()
    for perm in itertools.permutations(pairs):
        kept, conflicts = resolve_claims(perm)
        outcomes.add((frozenset(b.name for b in kept), tuple(c.to_json()["bundle"] for c in conflicts)))
    # the intruder's stamp is older here, so it is the earlier claim and nginx is the one refused
    assert outcomes == {(frozenset({"aaa/intruder", "db/pg"}), ("web/nginx",))}


def test_equal_stamps_fall_back_to_counter_author_then_name():
    same = Version(100, 0, A)
    kept, conflicts = resolve_claims([(NGINX, same), (INTRUDER, same)])
    assert [b.name for b in kept] == ["aaa/intruder"]  # same version: the smaller name claims first
    kept, _ = resolve_claims([(NGINX, Version(100, 0, A)), (INTRUDER, Version(100, 0, B))])
    assert [b.name for b in kept] == ["web/nginx"]  # the author key id breaks the tie before the name


def test_a_path_spelt_differently_or_under_another_type_is_the_same_claim():
    sneaky = bundle("zz/sneaky", {"symlink": "/etc//nginx/./nginx.conf", "to": "/tmp/x"})
    kept, (c,) = resolve_claims([(NGINX, Version(1, 0, A)), (sneaky, Version(2, 0, A))])
    assert [b.name for b in kept] == ["web/nginx"]
    assert c.resource == "file:/etc/nginx/nginx.conf" and "as symlink:/etc//nginx/./nginx.conf" in c.detail()


def test_a_refused_bundle_claims_nothing():
    first = bundle("a/first", {"file": "/x", "content": "1"})
    second = bundle("b/second", {"file": "/x", "content": "2"}, {"file": "/y", "content": "2"})
    third = bundle("c/third", {"file": "/y", "content": "3"})
    kept, conflicts = resolve_claims([(first, Version(1, 0, A)), (second, Version(2, 0, A)), (third, Version(3, 0, A))])
    assert [b.name for b in kept] == ["a/first", "c/third"]
    assert [c.refused for c in conflicts] == ["b/second"]


def test_the_claim_dates_from_the_current_version_so_a_reinjection_makes_it_later():
    """Documented limit of the rule: the stamp compared is each bundle's current version."""
    kept, _ = resolve_claims([(NGINX, Version(100, 0, A)), (INTRUDER, Version(200, 0, B))])
    assert [b.name for b in kept] == ["web/nginx"]
    kept, (c,) = resolve_claims([(NGINX, Version(300, 0, A)), (INTRUDER, Version(200, 0, B))])
    assert [b.name for b in kept] == ["aaa/intruder"] and c.refused == "web/nginx"
