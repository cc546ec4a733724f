"""The peer port's parts in one process: the frame header, the envelope, pins on a real SQLite file, the guard."""

from __future__ import annotations

import pytest

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.errors import GrapevineError
from grapevine.node import frames
from grapevine.node.frames import FrameRefused, pack_envelope, unpack_envelope
from grapevine.node.guard import ConnectionGuard
from grapevine.node.metrics import AgentMetrics
from grapevine.node.netkey import FRAME_HEADER_BYTES, BadSeal, KeyRing, generate_key
from grapevine.node.pins import Pins
from grapevine.node.state import State
from grapevine.node.transport import MAX_FRAME_BYTES, Transport
from grapevine.policy.keys import SigningKey

NODE = "me@127.0.0.1:7000"
PEER = "peer@127.0.0.1:7001"


def ring(key: bytes | None = None) -> KeyRing:
    r = KeyRing()
    r.install(key or KEY)
    return r


KEY = generate_key()


def transport(pins: Pins | None = None) -> Transport:
    return Transport(node_id=NODE, ring=ring(), metrics=AgentMetrics(), on_message=lambda *a: None,
                     on_send_failed=lambda p: None, pins=pins)


def test_frame_header_tells_the_body_length_and_authenticates_alone():
    frame = ring().seal(b"x" * 1000)
    head = ring().open_header(frame[:FRAME_HEADER_BYTES])
    assert head.body_bytes == len(frame) - FRAME_HEADER_BYTES
    assert ring().open_body(head, frame[FRAME_HEADER_BYTES:]) == b"x" * 1000


def test_a_stranger_is_refused_on_the_header_alone():
    stranger = ring(generate_key()).seal(b"x" * 1000)
    with pytest.raises(BadSeal) as err:
        ring().open_header(stranger[:FRAME_HEADER_BYTES])
    assert err.value.reason == "UnknownNetworkKey"
    forged = bytearray(ring().seal(b"x"))
    forged[FRAME_HEADER_BYTES - 1] ^= 1  # the header's MAC: a length cannot be made up
    with pytest.raises(BadSeal) as err:
        ring().open_header(bytes(forged[:FRAME_HEADER_BYTES]))
    assert err.value.reason == "BadSeal"


def test_a_body_cannot_be_moved_under_another_frames_header():
    a, b = ring().seal(b"a" * 64), ring().seal(b"b" * 64)
    head = ring().open_header(a[:FRAME_HEADER_BYTES])
    with pytest.raises(BadSeal):
        ring().open_body(head, b[FRAME_HEADER_BYTES:])


def test_the_frame_cap_is_the_codecs_message_cap_plus_the_envelope():
    assert MAX_FRAME_BYTES == frames.MAX_FRAME_BYTES
    assert MAX_FRAME_BYTES > codec.MAX_FRAME_BYTES
    key = SigningKey.generate()
    biggest = ring().seal(pack_envelope(key, "n" * 60 + "@[ffff::1]:65535", "m" * 60 + "@[ffff::1]:65535",
                                        bytes(codec.MAX_FRAME_BYTES)))
    assert len(biggest) <= MAX_FRAME_BYTES


def test_refusals_are_grapevine_errors_with_a_reason():
    with pytest.raises(GrapevineError) as err:
        unpack_envelope(b"\x93\x01\x02\x03")
    assert isinstance(err.value, FrameRefused) and err.value.reason == "BadEnvelope"


def test_a_frame_in_another_nodes_name_is_refused_once_that_name_is_pinned(tmp_path):
    honest, mallory = SigningKey.generate(), SigningKey.generate()
    t = transport(Pins(State(tmp_path)))
    body = codec.encode(m.Ping())
    assert t.open(ring().seal(pack_envelope(honest, PEER, NODE, body))) == (PEER, body)
    with pytest.raises(FrameRefused) as err:
        t.open(ring().seal(pack_envelope(mallory, PEER, NODE, body)))
    assert err.value.reason == "NodeKeyChanged" and err.value.status == 403
    with pytest.raises(FrameRefused) as err:
        t.open(ring().seal(pack_envelope(honest, PEER, "other@127.0.0.1:7002", body)))
    assert err.value.reason == "WrongDestination"
    with pytest.raises(FrameRefused) as err:  # nobody may speak as this node either
        t.open(ring().seal(pack_envelope(mallory, NODE, NODE, body)))
    assert err.value.reason == "NodeKeyChanged"


def test_pins_are_kept_in_the_data_dir_and_can_be_forgotten(tmp_path):
    honest, rekeyed = SigningKey.generate(), SigningKey.generate()
    body = b"\x00"
    state = State(tmp_path)
    pins = Pins(state)
    pins.check(unpack_envelope(pack_envelope(honest, PEER, NODE, body)), 1)
    state.close()
    again = Pins(State(tmp_path))  # a restart
    assert again.get("peer") == honest.public
    with pytest.raises(FrameRefused):
        again.check(unpack_envelope(pack_envelope(rekeyed, PEER, NODE, body)), 2)
    assert again.forget("peer") and not again.forget("peer")
    again.check(unpack_envelope(pack_envelope(rekeyed, PEER, NODE, body)), 3)
    assert Pins(State(tmp_path)).get("peer") == rekeyed.public


def test_guard_evicts_the_oldest_of_the_busiest_source_and_expires_by_deadline():
    g = ConnectionGuard(max_total=4, max_per_source=3, deadline_s=3.0)
    assert g.opened("a1", "A", 0.0) == []
    assert g.opened("a2", "A", 0.1) == []
    assert g.opened("a3", "A", 0.2) == []
    assert g.opened("a4", "A", 0.3) == ["a1"]  # per-source cap: its own oldest goes
    assert g.opened("b1", "B", 0.4) == []
    assert g.opened("b2", "B", 0.5) == ["a2"]  # total cap: the busiest source's oldest goes
    assert g.forget("b1") and not g.forget("b1")  # authenticated: no longer counted
    assert len(g) == 3
    assert g.expired(3.25) == ["a3"]
    assert sorted(g.expired(10.0)) == ["a4", "b2"]
    assert len(g) == 0


def test_link_tokens_must_be_fresh_and_used_once():
    key = SigningKey.generate()
    tokens = frames.LinkTokens(max_age_ms=300_000)
    env = unpack_envelope(pack_envelope(key, PEER, NODE, frames.link_token_body(1_000_000)))
    tokens.admit(env, 1_000_500)
    with pytest.raises(FrameRefused) as err:
        tokens.admit(env, 1_000_600)
    assert err.value.reason == "ReplayedLinkToken"
    old = unpack_envelope(pack_envelope(key, PEER, NODE, frames.link_token_body(1_000_000)))
    with pytest.raises(FrameRefused) as err:
        frames.LinkTokens(max_age_ms=300_000).admit(old, 1_000_000 + 300_001)
    assert err.value.reason == "StaleLinkToken"


def test_metrics_are_off_the_peer_port_unless_asked_for():
    from grapevine.node.config import load_config

    assert load_config(flags={"name": "n", "bind": "127.0.0.1:7000"}, environ={}).peer_metrics is False
    assert load_config(flags={"name": "n", "bind": "127.0.0.1:7000"},
                       environ={"GRAPEVINE_PEER_METRICS": "true"}).peer_metrics is True
    paths = lambda t: {r.canonical for r in t.make_app().router.resources()}  # noqa: E731
    off = transport()
    assert "/metrics" not in paths(off) and "/health" in paths(off)
    on = Transport(node_id=NODE, ring=ring(), metrics=AgentMetrics(), on_message=lambda *a: None,
                   on_send_failed=lambda p: None, serve_metrics=True)
    assert "/metrics" in paths(on)
