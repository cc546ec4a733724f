"""Bundles: canonical bytes, bounded decoding, packing into signed items."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.errors import PolicyError, ProtocolError
from grapevine.gossip.item import SignedItem
from grapevine.policy.bundle import MAX_BUNDLE_BYTES, Bundle, pack
from grapevine.policy.keys import SigningKey

KEY = SigningKey(bytes(range(32)))

# Plain data as a policy file could hold it.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
resources = st.lists(st.dictionaries(st.text(min_size=1, max_size=8), values, min_size=1, max_size=5), max_size=5)
files = st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda s: "\0" not in s), st.binary(max_size=64), max_size=3)


def reversed_dicts(value):
    """The same data with every map's keys inserted in reverse order."""
    if isinstance(value, dict):
        return {k: reversed_dicts(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_dicts(v) for v in value]
    return value


@settings(max_examples=100, deadline=None)
@given(resources=resources, files=files, target=st.one_of(st.none(), st.text(min_size=1, max_size=30)))
def test_canonical_encoding_is_stable_and_ignores_key_order(resources, files, target):
    a = Bundle(name="web/nginx", target=target, resources=tuple(resources), files=files)
    b = Bundle(
        name="web/nginx",
        target=target,
        resources=tuple(reversed_dicts(r) for r in resources),
        files=reversed_dicts(files),
    )
    assert a.encode() == a.encode() == b.encode()
    again = Bundle.decode(a.encode())
    assert again == a
    assert again.encode() == a.encode()


def test_packing_the_same_input_twice_gives_identical_bytes():
    b = Bundle(name="web/nginx", target="role=web", resources=({"package": "nginx"},), files={"a": "x"})
    one = pack(b, KEY, now_ms=1_700_000_000_000).encode()
    two = pack(Bundle.from_document({"bundle": "web/nginx", "target": "role=web", "resources": [{"package": "nginx"}],
                                     "files": {"a": b"x"}}, "t"), KEY, now_ms=1_700_000_000_000).encode()
    assert one == two


def test_packed_item_is_bundle_key_with_author_version_and_valid_signature():
    b = Bundle(name="web/nginx", resources=({"package": "nginx"},))
    item = pack(b, KEY, now_ms=5_000, counter=2)
    assert item.key == "bundle/web/nginx"
    assert tuple(item.version) == (5_000, 2, KEY.key_id)
    [(kid, sig)] = item.signatures
    assert kid == KEY.key_id
    assert KEY.public.verify(item.signing_bytes(), sig)
    assert SignedItem.decode(item.encode()) == item
    assert Bundle.decode(item.payload) == b


def test_non_canonical_bytes_are_refused():
    plain = Bundle(name="a", resources=({"file": "/x", "mode": "0644"},)).to_plain()
    # the same content with the outer map keys in reverse order
    data = msgpack.packb({k: plain[k] for k in reversed(list(plain))}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="canonical"):
        Bundle.decode(data)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "exactly the keys"),
        (msgpack.packb({"name": "a"}), "exactly the keys"),
        (b"\x00" * (MAX_BUNDLE_BYTES + 1), "exceeds the limit"),
    ],
)
def test_malformed_bundle_bytes_are_refused(data, message):
    with pytest.raises(ProtocolError, match=message):
        Bundle.decode(data)


def test_unsupported_format_is_refused():
    plain = Bundle(name="a").to_plain()
    plain["format"] = 99
    with pytest.raises(ProtocolError, match="format 99"):
        Bundle.decode(msgpack.packb(plain, use_bin_type=True))


@pytest.mark.parametrize(
    "doc,message",
    [
        ({}, "needs a name"),
        ({"bundle": ""}, "needs a name"),
        ({"bundle": "/abs"}, "must be /-separated"),
        ({"bundle": "a/../b"}, "must be /-separated"),
        ({"bundle": "a b"}, "must be /-separated"),
        ({"bundle": "x" * 300}, "at most"),
        ({"bundle": "a", "target": 3}, "target must be"),
        ({"bundle": "a", "resources": {"file": "/x"}}, "resources must be a list"),
        ({"bundle": "a", "resources": ["file"]}, "non-empty mapping"),
        ({"bundle": "a", "resources": [{}]}, "non-empty mapping"),
        ({"bundle": "a", "resources": [{"file": {1: "x"}}]}, "not a string"),
        ({"bundle": "a", "resources": [{"n": float("nan")}]}, "finite"),
        ({"bundle": "a", "resources": [{"n": 2**70}]}, "64 bits"),
        ({"bundle": "a", "files": ["x"]}, "files must be a mapping"),
        ({"bundle": "a", "files": {"x": 3}}, "text or bytes"),
        ({"bundle": "a", "secrets": {"pw": "plain"}}, "sealed"),
    ],
)
def test_bad_documents_are_refused_with_the_reason(doc, message):
    with pytest.raises(PolicyError, match=message):
        Bundle.from_document(doc, "site.yaml")


def test_oversized_bundle_is_refused_when_packing():
    big = Bundle(name="a", files={"blob": b"x" * (MAX_BUNDLE_BYTES + 1)})
    with pytest.raises(PolicyError, match="more than the limit"):
        pack(big, KEY, now_ms=1)


any_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(fields=st.fixed_dictionaries({k: any_value for k in ("files", "format", "name", "resources", "secrets", "target")}))
def test_decoding_arbitrary_maps_either_works_or_raises_a_grapevine_error(fields):
    from grapevine.gossip.errors import GrapevineError

    if fields["format"] is None:
        fields["format"] = 1  # get past the format check more often
    data = msgpack.packb(fields, use_bin_type=True)
    try:
        bundle = Bundle.decode(data)
    except GrapevineError:
        return
    assert bundle.encode() == data
