"""The preview run order (policy/runorder.py): its action, its caps, the permission it needs."""

from __future__ import annotations

import time

import msgpack
import pytest

from grapevine.gossip.item import MAX_PAYLOAD_BYTES, SignedItem, Version
from grapevine.node import frames
from grapevine.policy import runorder
from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, RunRefused, SignedOrder
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root

NOW = 1_700_000_000_000


def item(name="site/motd", content="v2\n", key=None, now=NOW):
    b = Bundle.from_document({"bundle": name, "resources": [{"file": "/etc/motd", "content": content}]}, "t")
    return pack(b, key or SigningKey.generate(), now)


def order(action, key, selector=""):
    return RunOrder(run_id=runorder.new_run_id(), origin="o@127.0.0.1:1", selector=selector, action=action,
                    timeout_ms=1000, issued_ms=NOW, deadline_ms=NOW + 60_000, operator=key.key_id)


def test_a_preview_order_round_trips_with_its_candidates():
    key = SigningKey.generate()
    a, b = item("site/motd"), item("site/issue")
    signed = SignedOrder.sign(order(RunAction.preview([a, b]), key), key)
    back = SignedOrder.decode(signed.encode())
    assert [i.key for i in back.order.action.candidate_items()] == ["bundle/site/motd", "bundle/site/issue"]
    assert back.order.action.candidate_items()[0] == a
    assert back.order.action.describe() == "preview site/motd, site/issue"


def test_other_actions_keep_their_four_wire_fields():
    assert len(RunAction.command(["true"]).to_wire()) == 4
    assert len(RunAction.converge(["x"]).to_wire()) == 4
    assert len(RunAction.preview([item()]).to_wire()) == 5


@pytest.mark.parametrize("candidates,what", [
    ((), "1..16 candidate bundles"),
    ((b"not an item",), "not a signed item"),
    (tuple(item(f"b/{i}").encode() for i in range(runorder.MAX_PREVIEW_BUNDLES + 1)), "1..16"),
])
def test_malformed_previews_are_refused(candidates, what):
    with pytest.raises(RunRefused) as info:
        RunAction(kind="preview", candidates=candidates)
    assert info.value.reason == "Malformed" and what in info.value.detail


def test_a_candidate_that_is_not_a_bundle_or_appears_twice_is_refused():
    root_like = SignedItem(key="trust/root", version=Version(NOW, 0, "k"), payload=b"x", signatures=())
    with pytest.raises(RunRefused, match="not a distinct bundle item"):
        RunAction.preview([root_like])
    one = item()
    with pytest.raises(RunRefused, match="not a distinct bundle item"):
        RunAction.preview([one, one])
    with pytest.raises(RunRefused, match="carries only its own field"):
        RunAction(kind="command", argv=("true",), candidates=(one.encode(),))


def test_the_order_cap_covers_the_largest_item_gossip_carries():
    key = SigningKey.generate()
    big = SignedItem(key="bundle/big", version=Version(NOW, 0, key.key_id), payload=b"\0" * MAX_PAYLOAD_BYTES,
                     signatures=((key.key_id, b"s" * 64),))
    signed = SignedOrder.sign(order(RunAction.preview([big]), key), key)
    data = signed.encode()
    assert len(data) > runorder.MAX_ORDER_BYTES
    assert SignedOrder.decode(data).order.action.candidate_items() == [big]
    # the peer route carries it: the order, the origin's ticket and the map around them
    body = msgpack.packb({"order": signed.to_wire(), "ticket": b"t" * 64, "retry": True}, use_bin_type=True)
    assert len(body) <= frames.MAX_ROUTE_BODY_BYTES
    assert frames.unpack_route_body(body)["order"][1] == key.key_id


def test_other_kinds_are_still_refused_past_the_command_cap():
    key = SigningKey.generate()
    wide = RunAction.command(["echo"] + ["x" * 30_000] * 4)  # each argument allowed, the whole too large
    data = SignedOrder.sign(order(wide, key), key).encode()
    assert len(data) > runorder.MAX_ORDER_BYTES
    with pytest.raises(RunRefused) as info:
        SignedOrder.decode(data)
    assert info.value.reason == "Malformed" and "command order" in info.value.detail


def test_a_preview_past_its_own_cap_is_refused_before_decoding():
    with pytest.raises(RunRefused, match="exceeds the limit"):
        SignedOrder.decode(b"\0" * (runorder.MAX_PREVIEW_ORDER_BYTES + 1024))


def _root(actions):
    op = SigningKey.generate()
    root = build_root(serial=1, now_ms=NOW - 1000, expires_days=1, admins=[op.public], threshold=1,
                      operators=[(op.public, OperatorScope(selector=None, actions=actions))])
    return op, root


@pytest.mark.parametrize("actions,allowed", [(("converge",), True), (("run",), False), (("run", "converge"), True)])
def test_a_preview_needs_the_operators_converge_action(actions, allowed):
    op, root = _root(actions)
    signed = SignedOrder.sign(order(RunAction.preview([item()]), op), op)
    if allowed:
        assert runorder.check_order(signed, root=root, now_ms=NOW + 10, facts={"name": "n"}).run_id
    else:
        with pytest.raises(RunRefused) as info:
            runorder.check_order(signed, root=root, now_ms=NOW + 10, facts={"name": "n"})
        assert info.value.reason == "OutOfScope" and "converge" in info.value.detail
