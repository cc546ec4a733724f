"""One wire registry (gossip/wire.py): every limit on what crosses the network is declared there once.

The source checks read modules with ``ast``: a module may import a registry
limit (or alias it), never assign its own number to a name the registry
declares. The behaviour checks pin the limits that used to disagree (a node
id was 256 characters in the codec, 320 bytes in the envelope and 512 in run
orders): the same id is now accepted or refused by every decoder alike.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import msgpack
import pytest

from grapevine.gossip import codec, wire
from grapevine.gossip import messages as m
from grapevine.gossip.errors import ProtocolError, Reason

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gossip", "policy", "node", "cli", "simulation")

def _registry_names() -> set[str]:
    return {n for n in vars(wire) if n.isupper() and isinstance(getattr(wire, n), int)}


def _has_number(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and type(n.value) in (int, float) for n in ast.walk(node))


def _module_constants(path: Path) -> dict[str, ast.AST]:
    out = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
    return out


def test_no_module_defines_its_own_number_for_a_registry_limit():
    declared = _registry_names()
    assert {"MAX_NODE_ID_BYTES", "MAX_ROUTE_BODY_BYTES", "MAX_ORDER_BYTES", "MAX_PAYLOAD_BYTES"} <= declared
    offenders = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == "gossip/wire.py":
                continue
            for name, value in _module_constants(path).items():
                if name in declared and _has_number(value):
                    offenders.append(f"{rel}: {name}")
    assert offenders == [], "import these from grapevine.gossip.wire instead of spelling a number"


def test_every_declared_decoder_exists():
    for msg in wire.MESSAGES:
        module, _, attr = msg.decoder.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), msg.name
        assert msg.max_bytes > 0, msg.name


def test_every_route_and_broadcast_the_daemon_installs_is_declared():
    from grapevine.node import agent, rollout, runs

    routes = {agent.HELLO_ROUTE, runs.ANSWER_ROUTE, runs.ORDER_ROUTE, runs.RESULT_ROUTE, runs.KEY_ROUTE,
              rollout.REPORT_ROUTE, rollout.STATUS_ROUTE}
    assert routes == set(wire.ROUTES)
    assert runs.QUERY_KIND in wire.BROADCASTS
    assert all(len(r) <= wire.MAX_ROUTE_NAME_LEN for r in routes)


def test_route_names_and_broadcast_kinds_come_from_the_registry():
    """A new peer route or broadcast kind (rollout records, say) must be declared in gossip/wire.py first."""
    offenders = []
    for pkg in ("node", "cli", "policy"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            tree = ast.parse(path.read_text(), rel)
            for name, value in _module_constants(path).items():
                if name.endswith(("_ROUTE", "_KIND")) and isinstance(value, ast.Constant):
                    offenders.append(f"{rel}: {name} = {value.value!r}")
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("add_peer_route", "on_broadcast", "broadcast")
                        and any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args[:2])):
                    offenders.append(f"{rel}:{node.lineno}: {node.func.attr} with a literal name")
    assert offenders == []


def test_every_gossip_message_type_is_numbered_and_bounded_by_the_registry():
    assert set(codec.REGISTRY.values()) == set(m.MESSAGE_TYPES)
    assert codec.MAX_FRAME_BYTES == wire.MAX_GOSSIP_FRAME_BYTES
    # The peer frame cap holds the largest gossip message with its envelope and seal.
    assert wire.MAX_PEER_FRAME_BYTES >= wire.MAX_GOSSIP_FRAME_BYTES + wire.ENVELOPE_OVERHEAD + wire.SEAL_OVERHEAD_BYTES
    assert wire.MAX_ROUTE_BODY_BYTES >= wire.MAX_SIGNED_ORDER_BYTES and wire.MAX_ROUTE_BODY_BYTES >= wire.MAX_RESULT_BYTES
    assert wire.MAX_RESULT_BYTES >= 2 * wire.MAX_RUN_OUTPUT_BYTES + wire.MAX_REPORT_BYTES


# -- the node id bound is one number everywhere ------------------------------------------------


def _longest_id(extra: int = 0) -> str:
    tail = "@127.0.0.1:9"
    return "n" * (wire.MAX_NODE_ID_BYTES - len(tail) + extra) + tail


@pytest.mark.parametrize("extra", [0, 1])
def test_gossip_codec_and_run_orders_agree_on_the_node_id_bound(extra):
    from grapevine.policy import runorder
    from grapevine.policy.keys import SigningKey

    node_id = _longest_id(extra)
    fits = extra == 0
    frame = codec.encode(m.ForwardJoin(joiner=node_id, ttl=3))
    if fits:
        assert codec.decode(frame).joiner == node_id
    else:
        with pytest.raises(ProtocolError):
            codec.decode(frame)
    key = SigningKey.generate()
    make = lambda: runorder.RunOrder(run_id=runorder.new_run_id(), origin=node_id, selector="",  # noqa: E731
                                     action=runorder.RunAction.shell_string("true"), timeout_ms=1000,
                                     issued_ms=1, deadline_ms=2, operator=key.key_id)
    if fits:
        assert make().origin == node_id
    else:
        with pytest.raises(runorder.RunRefused) as info:
            make()
        assert info.value.reason is Reason.MALFORMED


@pytest.mark.parametrize("extra", [0, 1])
def test_the_envelope_agrees_on_the_node_id_bound(extra):
    from grapevine.node import frames
    from grapevine.policy.keys import SigningKey

    node_id = _longest_id(extra)
    plain = frames.pack_envelope(SigningKey.generate(), node_id, "", b"body")
    if extra == 0:
        assert frames.unpack_envelope(plain).sender == node_id
    else:
        with pytest.raises(frames.FrameRefused) as info:
            frames.unpack_envelope(plain)
        assert info.value.reason is Reason.BAD_ENVELOPE


def test_a_multibyte_node_id_is_bounded_in_bytes_like_the_envelope():
    node_id = "é" * (wire.MAX_NODE_ID_BYTES // 2) + "@h:1"  # fewer characters than the bound, more bytes
    with pytest.raises(ProtocolError):
        codec.decode(codec.encode(m.ForwardJoin(joiner=node_id, ttl=1)))


# -- broadcasts -------------------------------------------------------------------------------


def test_broadcast_body_round_trips_as_a_named_pair():
    cast = wire.Broadcast(wire.BROADCAST_QUERY, {"q": "ab", "o": "n@h:1", "s": "", "k": "status"})
    assert wire.unpack_broadcast(cast.pack()) == cast
    assert msgpack.unpackb(cast.pack()) == [cast.kind, cast.body]  # the wire form every node already sends


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", msgpack.packb(["query"]), msgpack.packb([1, {}]), msgpack.packb({"k": 1}),
    msgpack.packb(["x" * 100, {}]), b"\x00" * (wire.MAX_BROADCAST_BYTES + 1),
])
def test_bad_broadcast_is_refused_with_its_reason(payload):
    with pytest.raises(ProtocolError) as info:
        wire.unpack_broadcast(payload)
    assert info.value.reason is Reason.BAD_BROADCAST


def test_an_ephemeral_larger_than_any_broadcast_is_refused_by_the_codec():
    eph = m.Ephemeral(msg_id=b"\x01" * m.DIGEST_LEN, origin="a@h:1", deadline_ms=1, hops=0,
                      payload=b"\x00" * (wire.MAX_BROADCAST_BYTES + 1))
    with pytest.raises(ProtocolError):
        codec.decode(codec.encode(eph))
