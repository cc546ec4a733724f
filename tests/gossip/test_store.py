"""The LWW item store and its hash tree."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.item import SignedItem, Version
from grapevine.gossip.store import LEAVES, TOP, ItemStore, is_newer, leaf_of



def make_item(key: str = "bundle/web", wall: int = 1_000, counter: int = 0, author: str = "alice", payload: bytes = b"body") -> SignedItem:
    return SignedItem(key=key, version=Version(wall, counter, author), payload=payload)


def test_older_version_never_replaces_newer():
    store = ItemStore()
    new = make_item(wall=2_000, payload=b"new")
    old = make_item(wall=1_000, payload=b"old")
    assert store.put(new)
    assert not store.put(old)
    assert store.get("bundle/web") == new


def test_same_item_twice_is_not_a_change():
    store = ItemStore()
    assert store.put(make_item())
    digest = store.root_digest()
    assert not store.put(make_item())
    assert store.root_digest() == digest and len(store) == 1


def test_version_order_is_wall_then_counter_then_author():
    a = make_item(wall=5, counter=9, author="zed")
    b = make_item(wall=6, counter=0, author="amy")
    c = make_item(wall=6, counter=1, author="amy")
    d = make_item(wall=6, counter=1, author="bob")
    assert is_newer(b, a) and is_newer(c, b) and is_newer(d, c)
    assert not is_newer(a, d)


def test_equal_versions_with_different_content_resolve_the_same_way_everywhere():
    x = make_item(payload=b"x")
    y = make_item(payload=b"y")
    s1, s2 = ItemStore([x, y]), ItemStore([y, x])
    assert s1.get(x.key) == s2.get(x.key)
    assert s1.store_digest() == s2.store_digest()


def test_empty_stores_agree_and_one_item_makes_them_differ():
    a, b = ItemStore(), ItemStore()
    assert a.root_digest() == b.root_digest() == bytes(16)
    a.put(make_item())
    assert a.root_digest() != b.root_digest()
    b.put(make_item())
    assert a.root_digest() == b.root_digest()


def test_tree_levels_are_consistent_with_the_root():
    store = ItemStore(make_item(key=f"bundle/k{i}", wall=i + 1) for i in range(300))
    assert len(store.top_digests()) == TOP
    acc = 0
    for top in range(TOP):
        leaves = store.leaf_digests(top)
        leaf_acc = 0
        for d in leaves:
            leaf_acc ^= int.from_bytes(d, "big")
        assert leaf_acc == int.from_bytes(store.top_digests()[top], "big")
        acc ^= leaf_acc
    assert acc.to_bytes(16, "big") == store.root_digest()
    assert sum(store.leaf_size(leaf) for leaf in range(LEAVES)) == 300


def test_leaf_entries_summarise_the_stored_versions():
    item = make_item(key="bundle/x", wall=42, counter=3, author="kay")
    store = ItemStore([item])
    assert store.leaf_entries(leaf_of("bundle/x")) == [("bundle/x", 42, 3, "kay", item.digest())]


items_strategy = st.lists(
    st.builds(
        lambda k, w, c, a, p: SignedItem(key=f"bundle/{k}", version=Version(w, c, a), payload=p),
        st.integers(0, 6),
        st.integers(0, 4),
        st.integers(0, 2),
        st.sampled_from(["a", "b"]),
        st.binary(max_size=3),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(items_strategy, st.randoms(use_true_random=False))
def test_every_delivery_order_yields_the_same_store(items, rnd):
    first = ItemStore(items)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    second = ItemStore()
    for item in shuffled:
        second.put(item)
    assert first.store_digest() == second.store_digest()
    assert {i.key: i for i in first.items()} == {i.key: i for i in second.items()}
    # and the winner per key is the newest offered
    for key in {i.key for i in items}:
        best = max((i for i in items if i.key == key), key=lambda i: (i.version, i.digest()))
        assert first.get(key) == best


@settings(max_examples=100, deadline=None)
@given(items_strategy, items_strategy)
def test_equal_digests_iff_equal_content(a, b):
    sa, sb = ItemStore(a), ItemStore(b)
    same = {i.key: i for i in sa.items()} == {i.key: i for i in sb.items()}
    assert (sa.store_digest() == sb.store_digest()) == same


def test_leaf_assignment_is_stable_and_spread():
    leaves = {leaf_of(f"bundle/app{i}") for i in range(2_000)}
    assert len(leaves) > 200  # 2,000 keys land on most of the 256 leaves
    assert leaf_of("trust/root") == leaf_of("trust/root")
    random.Random(1)  # no global randomness involved


def test_tree_built_on_first_use_matches_one_kept_up_to_date():
    items = [make_item(key=f"bundle/k{i % 40}", wall=i + 1) for i in range(120)]
    early = ItemStore()
    early.top_digests()  # built before any item: kept up to date by every put
    late = ItemStore()
    for it in items:
        early.put(it)
        late.put(it)  # never asked yet: only the root is kept
    assert late.root_digest() == early.root_digest()
    assert late.top_digests() == early.top_digests()
    assert all(late.leaf_digests(t) == early.leaf_digests(t) for t in range(TOP))
    assert all(late.leaf_keys(leaf) == early.leaf_keys(leaf) for leaf in range(LEAVES))
    newer = make_item(key="bundle/k3", wall=10_000)
    early.put(newer)
    late.put(newer)  # after the build: updated in place
    assert late.top_digests() == early.top_digests() and late.root_digest() == early.root_digest()
