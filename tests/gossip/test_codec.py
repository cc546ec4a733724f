"""The wire codec: round trips, and refusal of anything that is not a frame."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.errors import ProtocolError
from grapevine.gossip.item import SignedItem, Version

ITEM = SignedItem(key="bundle/web/nginx", version=Version(1_700_000_000_000, 3, "k1"), payload=b"\x00payload" * 10, signatures=(("k1", b"s" * 64),))
D1, D2 = bytes(range(16)), bytes(range(1, 17))

SAMPLES: list[m.Message] = [
    m.Join(),
    m.ForwardJoin(joiner="web-1@10.0.0.1:7946", ttl=6),
    m.Welcome(),
    m.Neighbor(high_priority=True),
    m.NeighborReply(accepted=False),
    m.Disconnect(leaving=True),
    m.Shuffle(origin="n1", ttl=3, peers=("n1", "n2", "n3")),
    m.ShuffleReply(peers=("n4",)),
    m.Ping(),
    m.Pong(),
    m.Push(hops=4, item=ITEM),
    m.Ephemeral(msg_id=D1, origin="n9", deadline_ms=1_700_000_060_000, hops=2, payload=b"run order"),
    m.IHave(entries=((D1, 3), (D2, 4))),
    m.Graft(msg_ids=(D1,)),
    m.Prune(cause=D2),
    m.SyncRoot(root=D1, count=12),
    m.SyncTop(digests=(D1,) * 16),
    m.SyncLeaves(groups=((3, (D2,) * 16),)),
    m.SyncKeys(leaves=(7, 9), entries=(("bundle/a", 5, 0, "k1", D1),)),
    m.SyncItems(items=(ITEM,), want=("bundle/b",)),
]


def test_every_registered_type_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(codec.REGISTRY.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_gives_an_equal_message(msg):
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert codec.encoded_size(msg) == len(data)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_truncated_prefix_is_refused(msg):
    data = codec.encode(msg)
    for cut in range(len(data)):
        with pytest.raises(ProtocolError):
            codec.decode(data[:cut])


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_trailing_bytes_are_refused(msg):
    with pytest.raises(ProtocolError, match="trailing"):
        codec.decode(codec.encode(msg) + b"\x00")


def test_oversized_frame_is_refused_before_decoding(monkeypatch):
    calls = []
    monkeypatch.setattr(codec, "check_structure", lambda data: calls.append("walk"))
    monkeypatch.setattr(codec.msgpack, "unpackb", lambda *a, **k: calls.append("unpack"))
    frame = b"\xff" * (codec.MAX_FRAME_BYTES + 1)  # garbage: any decoding attempt would fail differently
    with pytest.raises(ProtocolError, match="MAX_FRAME_BYTES"):
        codec.decode(frame)
    assert calls == []


def test_declared_lengths_are_checked_before_the_body_is_read():
    # A binary header that claims 5 MiB, followed by nothing: refused by its
    # declared length, not by running out of bytes.
    frame = b"\x93\x01\x0b" + b"\xc6" + (5 * 1024 * 1024).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="MAX_BIN_LEN"):
        codec.decode(frame)
    frame = b"\x93\x01\x02" + b"\xdb" + (4000).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="MAX_STR_LEN"):
        codec.decode(frame)
    frame = b"\x93\x01\x0d" + b"\xdd" + (100_000).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match="MAX_ARRAY_LEN"):
        codec.decode(frame)


def test_deep_nesting_is_refused():
    with pytest.raises(ProtocolError, match="MAX_DEPTH"):
        codec.decode(b"\x91" * (codec.MAX_DEPTH + 1) + b"\x00")


def test_element_count_is_bounded():
    # 11 arrays of 4096 nils: every array is within MAX_ARRAY_LEN, the total is not.
    inner = msgpack.packb([None] * 4096)
    frame = b"\xdc" + (11).to_bytes(2, "big") + inner * 11
    with pytest.raises(ProtocolError, match="MAX_ELEMENTS"):
        codec.decode(frame)


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"", "empty"),
        (msgpack.packb({"a": 1}), "maps"),
        (msgpack.packb(1.5), "maps, floats"),
        (msgpack.packb([1]), "list"),
        (msgpack.packb([99, 1]), "protocol version"),
        (msgpack.packb([1, 999]), "unknown message type"),
        (msgpack.packb([1, 2, "n1"]), "needs 2 fields"),
        (msgpack.packb([1, 2, "n1", -1]), "ForwardJoin.ttl"),
        (msgpack.packb([1, 2, "", 3]), "ForwardJoin.joiner"),
        (msgpack.packb([1, 4, 1]), "Neighbor.high_priority"),
        (msgpack.packb([1, 13, [[b"short", 1]]], use_bin_type=True), "IHave.entries"),
        (msgpack.packb([1, 11, 1, ["k", 1, 0, "a", b"p", []]], use_bin_type=False), "payload"),
        (msgpack.packb([1, 11, 1, ["", 1, 0, "a", b"p", []]], use_bin_type=True), "key"),
        (b"\x93\x01\x02\xa3\xff\xfe\xfd", "not valid msgpack"),
    ],
)
def test_malformed_frames_are_refused_with_the_reason(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        codec.decode(frame)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_protocol_error(data):
    try:
        msg = codec.decode(data)
    except ProtocolError:
        return
    assert type(msg) in codec.TYPE_NUMBERS  # a rare valid frame decodes to a real message


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_a_flipped_byte_never_raises_anything_but_protocol_error(msg, where, value):
    data = bytearray(codec.encode(msg))
    data[where % len(data)] = value
    try:
        codec.decode(bytes(data))
    except ProtocolError:
        pass


def test_encoding_a_non_message_is_refused():
    with pytest.raises(ProtocolError):
        codec.encode("hello")  # type: ignore[arg-type]


def test_messages_validate_their_fields_on_construction():
    with pytest.raises(ProtocolError):
        m.IHave(entries=((b"short", 1),))
    with pytest.raises(ProtocolError):
        m.ForwardJoin(joiner="n1", ttl=-1)
    with pytest.raises(ProtocolError):
        m.Push(hops=1, item="not an item")  # type: ignore[arg-type]


def test_payload_flag_marks_exactly_the_full_copies():
    carriers = {cls.__name__ for cls in codec.REGISTRY.values() if cls.carries_payload}
    assert carriers == {"Push", "Ephemeral", "SyncItems"}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 70_000)), max_size=40),
    st.integers(0, 2**40),
    st.sampled_from([b"", bytes(16)]),
)
def test_encoded_size_matches_the_encoding(entries, count, cause):
    for msg in (m.IHave(entries=tuple(entries)), m.SyncRoot(root=bytes(16), count=count), m.Prune(cause=cause), m.Push(hops=count % 300, item=ITEM)):
        assert codec.encoded_size(msg) == len(codec.encode(msg))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60), max_size=20), st.integers(0, 70_000), st.integers(0, 40))
def test_encoded_size_matches_for_membership_messages(names, ttl, n):
    peers = tuple(names)
    origin = names[0] if names else "n1"
    for msg in (
        m.ForwardJoin(joiner=origin, ttl=ttl),
        m.Shuffle(origin=origin, ttl=ttl, peers=peers),
        m.ShuffleReply(peers=peers),
        m.Graft(msg_ids=(bytes(16),) * n),
        m.SyncTop(digests=(bytes(16),) * min(n, 16)),
        m.Neighbor(high_priority=bool(n % 2)),
        m.NeighborReply(accepted=True),
        m.Disconnect(leaving=False),
    ):
        assert codec.encoded_size(msg) == len(codec.encode(msg))


def test_quick_constructors_keep_the_dataclass_contract():
    from dataclasses import FrozenInstanceError

    from grapevine.gossip.effects import Send

    push = m.Push(hops=2, item=SignedItem(key="k", version=Version(1, 0, "a"), payload=b"x"))
    assert push.origin == "" and push == m.Push(hops=2, item=push.item, origin="")  # default kept
    with pytest.raises(TypeError):
        m.ForwardJoin("n1", 3)  # keyword-only
    with pytest.raises(ProtocolError, match="ForwardJoin.ttl"):
        m.ForwardJoin(joiner="n1", ttl=-1)  # checks still run
    with pytest.raises(TypeError):
        Send(peer="n1")  # a field without default is required
    with pytest.raises(FrozenInstanceError):
        push.hops = 3  # type: ignore[misc]
    assert m.Join() == m.Join() and Send(peer="b", msg=m.Join()).peer == "b"
