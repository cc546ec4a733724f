"""Run orders and results: encoding, signatures, every refusal reason, batch plans."""

from __future__ import annotations

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import (
    BatchSize,
    RunAction,
    RunOrder,
    RunRefused,
    RunResult,
    SignedOrder,
    SignedResult,
    check_order,
    plan_batches,
    should_stop,
)
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root

NOW = 1_700_000_000_000
ADMIN = SigningKey.generate()
OPERATOR = SigningKey.generate()  # may run anything on role=web, converge everywhere
CONVERGER = SigningKey.generate()  # may only converge
STRANGER = SigningKey.generate()  # not in the root at all
ROOT = build_root(
    serial=1, now_ms=NOW - 1000, expires_days=30, admins=[ADMIN.public], threshold=1,
    operators=[
        (OPERATOR.public, OperatorScope(selector="role=web", actions=("run",))),
        (OPERATOR.public, OperatorScope(selector=None, actions=("converge",))),
        (CONVERGER.public, OperatorScope(selector=None, actions=("converge",))),
    ],
)
WEB = {"name": "web-1", "role": "web"}
DB = {"name": "db-1", "role": "db"}


def make_order(key=OPERATOR, *, action=None, selector="", issued=NOW, deadline=NOW + 60_000, operator=None):
    return RunOrder(
        run_id=runorder.new_run_id(), origin="o@127.0.0.1:1", selector=selector,
        action=action or RunAction.command(["touch", "/tmp/marker"]), timeout_ms=5000,
        issued_ms=issued, deadline_ms=deadline, operator=operator or key.key_id,
    )


def signed(key=OPERATOR, **kw) -> SignedOrder:
    return SignedOrder.sign(make_order(key, **kw), key)


def test_signed_order_round_trips_through_bytes():
    s = signed(selector="role=web", action=RunAction.shell_string("echo hi"))
    back = SignedOrder.decode(s.encode())
    assert back == s and back.order == s.order
    assert check_order(back, root=ROOT, now_ms=NOW, facts=WEB) == s.order


@pytest.mark.parametrize(
    "build, now, facts, reason",
    [
        (lambda: signed(STRANGER), NOW, WEB, "UnknownKey"),
        (lambda: signed(deadline=NOW + 10), NOW + 11, WEB, "Expired"),
        (lambda: signed(issued=NOW + 120_000, deadline=NOW + 180_000), NOW, WEB, "FromTheFuture"),
        (lambda: signed(deadline=NOW + runorder.MAX_WINDOW_MS + 1), NOW, WEB, "Expired"),
        (lambda: signed(), NOW, DB, "OutOfScope"),  # db is outside role=web
        (lambda: signed(CONVERGER), NOW, WEB, "OutOfScope"),  # converge-only key starting a command
        (lambda: signed(selector="role=cache"), NOW, WEB, "NotTargeted"),
    ],
)
def test_order_refusals_name_their_reason(build, now, facts, reason):
    with pytest.raises(RunRefused) as exc:
        check_order(build(), root=ROOT, now_ms=now, facts=facts)
    assert exc.value.reason == reason


def test_converge_is_allowed_everywhere_for_a_converge_scope():
    s = signed(CONVERGER, action=RunAction.converge(["web/nginx"]))
    assert check_order(s, root=ROOT, now_ms=NOW, facts=DB).action.bundles == ("web/nginx",)


def test_tampered_body_fails_the_signature():
    s = signed()
    evil = make_order(action=RunAction.command(["rm", "-rf", "/"]))
    forged = SignedOrder.from_wire([evil.encode(), s.key_id, s.signature])
    with pytest.raises(RunRefused) as exc:
        check_order(forged, root=ROOT, now_ms=NOW, facts=WEB)
    assert exc.value.reason == "BadSignature"


def test_order_signed_by_another_key_than_it_names_is_refused():
    order = make_order(OPERATOR)
    with pytest.raises(RunRefused) as exc:
        SignedOrder.from_wire([order.encode(), STRANGER.key_id, STRANGER.sign(order.encode())])
    assert exc.value.reason == "BadSignature"


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x00" * (runorder.MAX_ORDER_BYTES + 1000)],
)
def test_garbage_is_refused_as_malformed(data):
    with pytest.raises(RunRefused) as exc:
        SignedOrder.decode(data)
    assert exc.value.reason == "Malformed"


@pytest.mark.parametrize(
    "kw",
    [
        {"kind": "command", "argv": ()},
        {"kind": "command", "argv": ("",)},
        {"kind": "shell", "shell": ""},
        {"kind": "rm"},
        {"kind": "shell", "shell": "x", "argv": ("y",)},
    ],
)
def test_bad_actions_are_refused(kw):
    with pytest.raises(RunRefused):
        RunAction(**kw)


def test_bad_selector_in_an_order_is_malformed():
    with pytest.raises(RunRefused) as exc:
        make_order(selector="role=(")
    assert exc.value.reason == "Malformed"


def _result(node="web-1@127.0.0.1:2", run_id="r1", code=0):
    return RunResult(run_id=run_id, node=node, exit_code=code, stdout=b"out", stderr=b"", duration_ms=3)


def test_result_verifies_with_the_node_key_only():
    node_key, other = SigningKey.generate(), SigningKey.generate()
    good = SignedResult.sign(_result(), node_key)
    back = SignedResult.from_wire(good.to_wire())
    assert back.verify(node_key.public, run_id="r1", node="web-1@127.0.0.1:2").stdout == b"out"
    forged = SignedResult.sign(_result(code=0), other)
    with pytest.raises(RunRefused) as exc:
        forged.verify(node_key.public, run_id="r1", node="web-1@127.0.0.1:2")
    assert exc.value.reason == "BadSignature"
    with pytest.raises(RunRefused):
        good.verify(node_key.public, run_id="r2", node="web-1@127.0.0.1:2")
    with pytest.raises(RunRefused):  # a node cannot speak for another
        good.verify(node_key.public, run_id="r1", node="web-2@127.0.0.1:3")


def test_result_json_has_the_stable_fields():
    doc = _result(code=3).to_json()
    assert {"node", "exit_code", "stdout", "stderr", "duration_ms"} <= set(doc)
    assert doc["exit_code"] == 3 and not _result(code=3).ok


@pytest.mark.parametrize(
    "text, total, sizes",
    [
        (None, 5, [5]),
        ("2", 5, [2, 2, 1]),
        ("10", 3, [3]),
        ("50%", 5, [3, 2]),
        ("10%", 100, [10] * 10),
        ("1%", 3, [1, 1, 1]),
    ],
)
def test_batches_cover_every_target_once(text, total, sizes):
    nodes = [f"n{i}" for i in range(total)]
    plan = plan_batches(nodes, BatchSize.parse(text))
    assert [len(b) for b in plan] == sizes
    assert sorted(n for b in plan for n in b) == sorted(nodes)


@pytest.mark.parametrize("text", ["0", "-1", "x", "0%", "101%", "%"])
def test_bad_batch_sizes_are_usage_errors(text):
    with pytest.raises(ConfigError):
        BatchSize.parse(text)


@pytest.mark.parametrize(
    "failures, limit, stop",
    [(0, None, False), (5, None, False), (0, 0, False), (1, 0, True), (1, 1, False), (2, 1, True)],
)
def test_batches_stop_once_failures_pass_the_limit(failures, limit, stop):
    assert should_stop(failures, limit) is stop


def test_run_orders_are_refused_once_the_trust_root_expired():
    """A root past its expiry authorises no run order, even one whose own deadline is fine
    (the node and the origin both refuse, naming the root's serial and expiry)."""
    short = build_root(
        serial=7, now_ms=NOW - 1000, expires_days=1, admins=[ADMIN.public], threshold=1,
        operators=[(OPERATOR.public, OperatorScope(selector=None, actions=("run",)))],
    )
    after = short.expires_ms + 5
    order = signed(issued=after - 1000, deadline=after + 60_000)
    assert check_order(signed(), root=short, now_ms=NOW, facts=WEB)  # fine while the root is valid
    for facts in (WEB, None):
        with pytest.raises(RunRefused) as err:
            check_order(order, root=short, now_ms=after, facts=facts)
        assert err.value.reason == "Expired"
        assert "serial 7" in err.value.detail and str(short.expires_ms) in err.value.detail
    with pytest.raises(RunRefused, match="Expired"):  # the exact instant of expiry already counts
        check_order(signed(issued=short.expires_ms - 1000, deadline=short.expires_ms + 1000),
                    root=short, now_ms=short.expires_ms, facts=WEB)
