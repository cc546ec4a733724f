"""The run state machines driven with virtual time: discovery, the origin, the target, the token bucket.

No sockets, no sleeps: every call takes ``now`` and the tests move it on.
"""

from __future__ import annotations

import random

import pytest

from grapevine.node.discovery import (
    DISCOVERY_MAX_MS,
    EXPECTED_WAIT_MS,
    FIRST_ANSWER_MS,
    QUIET_MS,
    DiscoveryBook,
    QueryAnswer,
    QueryDeclined,
    QueryResponder,
)
from grapevine.node.origin import ORDER_ATTEMPTS, RESULT_GRACE_MS, Count, Emit, PostOrder, RunCoordinator
from grapevine.node.ratelimit import TokenBucket, refill
from grapevine.node.target import Admit, Refuse, RunTarget, audit_row, ticket_bytes, ticket_valid
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, RunResult, SignedOrder, SignedResult
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root

WALL = 1_700_000_000_000  # wall clock (ms) at virtual time T0
T0 = 1000.0  # virtual monotonic seconds
ME = "origin@127.0.0.1:1"
ADMIN, OPERATOR = SigningKey.generate(), SigningKey.generate()
ROOT = build_root(serial=1, now_ms=WALL - 1000, expires_days=30, admins=[ADMIN.public], threshold=1,
                  operators=[(OPERATOR.public, OperatorScope(selector=None, actions=("run", "converge")))])
NODES = {f"n{i}@127.0.0.1:{10 + i}": SigningKey.generate() for i in range(6)}
IDS = sorted(NODES)


def order(*, origin=ME, selector="", timeout_ms=5000, deadline_ms=WALL + 60_000, issued_ms=WALL - 1000) -> SignedOrder:
    o = RunOrder(run_id=runorder.new_run_id(), origin=origin, selector=selector, action=RunAction.command(["true"]),
                 timeout_ms=timeout_ms, issued_ms=issued_ms, deadline_ms=deadline_ms, operator=OPERATOR.key_id)
    return SignedOrder.sign(o, OPERATOR)


def stranger_order() -> SignedOrder:
    """An order signed by a key the trust root does not know."""
    key = SigningKey.generate()
    o = RunOrder(run_id=runorder.new_run_id(), origin=ME, selector="", action=RunAction.command(["true"]),
                 timeout_ms=5000, issued_ms=WALL - 1000, deadline_ms=WALL + 60_000, operator=key.key_id)
    return SignedOrder.sign(o, key)


def answer(qid: str, node: str, key: SigningKey | None = None, info: dict | None = None) -> dict:
    return {"q": qid, "n": node, "pk": (key or NODES[node]).public.raw, "i": info or {}}


def result(signed: SignedOrder, node: str, code: int = 0, key: SigningKey | None = None) -> list:
    res = RunResult(run_id=signed.order.run_id, node=node, exit_code=code, stdout=b"ok\n", stderr=b"", duration_ms=3)
    return SignedResult.sign(res, key or NODES[node]).to_wire()


def events(effects, kind):
    return [e.event for e in effects if isinstance(e, Emit) and e.event["event"] == kind]


def posts(effects):
    return [e for e in effects if isinstance(e, PostOrder)]


# ---------------------------------------------------------------- discovery


def test_discovery_ends_a_quiet_window_after_the_last_answer():
    book = DiscoveryBook(ME)
    disc = book.start("q1", "role=web", peers=frozenset(), now=T0)
    assert disc.quiet_end() == T0 + FIRST_ANSWER_MS / 1000  # nobody answered: the first-answer wait
    for i, node in enumerate(IDS[:3]):
        assert book.on_answer(node, answer("q1", node), T0 + 0.01 * (i + 1)).accepted
    end = disc.quiet_end()
    assert end == pytest.approx(T0 + 0.03 + QUIET_MS / 1000)
    assert not disc.quiet(end - 0.001) and disc.quiet(end)
    assert abs(disc.last_answer_ms() - 30) <= 1


def test_discovery_waits_for_the_nodes_that_answered_this_selector_last_time():
    book = DiscoveryBook(ME)
    first = book.start("q1", "role=web", peers=frozenset(), now=T0)
    for node in IDS[:2]:
        book.on_answer(node, answer("q1", node), T0 + 0.01)
    book.finish(first, "role=web", run_id=None, now=T0 + 1)
    again = book.start("q2", "role=web", peers=frozenset(), now=T0 + 10)
    book.on_answer(IDS[0], answer("q2", IDS[0]), T0 + 10.01)
    assert again.quiet_end() == T0 + 10 + EXPECTED_WAIT_MS / 1000  # IDS[1] is still silent
    assert again.silent() == [IDS[1]]
    book.on_answer(IDS[1], answer("q2", IDS[1]), T0 + 10.02)
    assert again.quiet_end() < T0 + 10 + EXPECTED_WAIT_MS / 1000


def test_discovery_never_outlasts_its_bound_however_answers_trickle_in():
    book = DiscoveryBook(ME)
    disc = book.start("q1", "", peers=frozenset(), now=T0)
    for i, node in enumerate(IDS):
        book.on_answer(node, answer("q1", node), T0 + 1.5 * (i + 1))
    assert disc.quiet_end() == T0 + DISCOVERY_MAX_MS / 1000


def test_an_answer_naming_another_node_than_its_sender_is_refused_and_never_kept():
    """#12: the sender is the frame's (authenticated) sender; an answer that speaks for another node is refused."""
    book = DiscoveryBook(ME)
    disc = book.start("q1", "", peers=frozenset(), now=T0)
    liar, victim = IDS[0], IDS[1]
    out = book.on_answer(liar, answer("q1", victim, key=NODES[liar], info={"bundles": ["forged"]}), T0 + 0.01)
    assert not out.accepted and out.refused == "SenderMismatch"
    assert out.reply() == {"ok": False, "refused": "SenderMismatch"}
    assert victim not in disc.answers and disc.answers == {}
    assert disc.last is None  # a refused answer does not even stretch the quiet window
    # the victim's own answer still counts, with its own key
    assert book.on_answer(victim, answer("q1", victim), T0 + 0.02).accepted
    assert disc.answers[victim][0] == NODES[victim].public


def test_a_second_key_for_the_same_node_is_refused_and_the_first_kept():
    book = DiscoveryBook(ME)
    disc = book.start("q1", "", peers=frozenset(), now=T0)
    node = IDS[0]
    assert book.on_answer(node, answer("q1", node), T0 + 0.01).accepted
    out = book.on_answer(node, answer("q1", node, key=SigningKey.generate()), T0 + 0.02)
    assert out.refused == "KeyMismatch" and disc.answers[node][0] == NODES[node].public


def test_an_answer_after_the_run_ended_is_named_late_and_gone():
    book = DiscoveryBook(ME)
    disc = book.start("q1", "", peers=frozenset(), now=T0)
    book.finish(disc, "", run_id="r1", now=T0 + 5)
    out = book.on_answer(IDS[0], answer("q1", IDS[0]), T0 + 5.25)
    assert out.gone and out.late == "after_run" and out.run_id == "r1" and out.after_ms == 250
    assert out.reply() == {"ok": False, "gone": True}


def responder(members=(), rate=10.0, burst=2) -> QueryResponder:
    known = set(members) | {ME}
    return QueryResponder(IDS[0], is_member=known.__contains__, bucket=TokenBucket(rate, burst))


def query(qid="q1", origin=ME, selector="", kind="status") -> dict:
    return {"q": qid, "o": origin, "s": selector, "k": kind}


def test_a_query_is_answered_only_to_the_member_that_broadcast_it():
    r = responder()
    assert isinstance(r.decide(ME, query(), facts={}, now=T0), QueryAnswer)
    # the broadcast names a stranger as its origin: no answer leaves for it
    stranger = "victim@127.0.0.1:9"
    out = r.decide(stranger, query("q2", origin=stranger), facts={}, now=T0)
    assert isinstance(out, QueryDeclined) and out.reason == "UnknownOrigin"
    # a member's broadcast asking for answers elsewhere
    out = r.decide(ME, query("q3", origin=stranger), facts={}, now=T0)
    assert isinstance(out, QueryDeclined) and out.reason == "WrongOrigin"


def test_a_query_is_answered_once_and_answers_leave_within_the_bucket():
    r = responder(burst=2, rate=1.0)
    assert isinstance(r.decide(ME, query("a"), facts={}, now=T0), QueryAnswer)
    assert r.decide(ME, query("a"), facts={}, now=T0).reason == "Replayed"
    assert isinstance(r.decide(ME, query("b"), facts={}, now=T0), QueryAnswer)
    assert r.decide(ME, query("c"), facts={}, now=T0).reason == "RateLimited"
    assert isinstance(r.decide(ME, query("c"), facts={}, now=T0 + 1.0), QueryAnswer)


def test_a_query_that_does_not_match_is_declined_without_a_reason():
    out = responder().decide(ME, query(selector="role=db"), facts={"role": "web"}, now=T0)
    assert isinstance(out, QueryDeclined) and out.reason is None


def test_token_bucket_lets_a_burst_through_then_the_rate():
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take(T0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(T0 + 0.4) and b.take(T0 + 0.5)
    assert refill(0.0, T0, T0 + 100, rate=2.0, burst=3) == 3  # never above the burst
    assert refill(1.0, T0, T0 - 5, rate=2.0, burst=3) == 1.0  # time going backwards adds nothing


# ---------------------------------------------------------------- the origin


def coordinator(signed, *, batch=None, max_failures=None, answers=(), at=T0):
    book = DiscoveryBook(ME)
    disc = book.start("q", signed.order.selector, peers=frozenset(), now=at)
    for i, node in enumerate(answers):
        book.on_answer(node, answer("q", node), at + 0.01 * (i + 1))
    c = RunCoordinator(signed, disc, at, WALL, runorder.BatchSize.parse(batch), max_failures)
    return book, c


def settle(c, signed, node, now, code=0):
    """The node's reply to the order carries its key and its result."""
    return c.on_reply(node, {"ok": True, "pk": NODES[node].public.raw, "result": result(signed, node, code)}, now)


def test_without_batches_every_answer_starts_its_target_at_once_and_the_run_ends_when_all_settled():
    signed = order()
    book, c = coordinator(signed, answers=IDS[:3])
    out = c.poll(T0 + 0.05)
    assert [p.node for p in posts(out)] == IDS[:3] and not events(out, "targets")
    for node in IDS[:3]:
        out = settle(c, signed, node, T0 + 0.1)
        assert events(out, "result")[0]["node"] == node
    assert not c.done and c.next_deadline() == pytest.approx(c.disc.quiet_end())
    out = c.poll(c.next_deadline())
    assert events(out, "targets")[0]["targets"] == IDS[:3] and c.done
    s = c.summary
    assert s["ok"] and [r["node"] for r in s["results"]] == IDS[:3] and s["batches"][0]["nodes"] == IDS[:3]


def test_batches_stop_once_failures_pass_max_failures():
    signed = order()
    book, c = coordinator(signed, batch="2", max_failures=0, answers=IDS[:6])
    assert c.poll(T0 + 0.05) == []  # discovery not quiet yet: nobody started
    out = c.poll(c.disc.quiet_end())
    assert events(out, "targets")[0]["batches"] == 3
    first = [p.node for p in posts(out)]
    assert first == IDS[:2]
    settle(c, signed, first[0], T0 + 1, code=0)
    settle(c, signed, first[1], T0 + 1, code=7)
    out = c.poll(T0 + 1)
    assert c.done and not posts(out)
    s = c.summary
    assert "max-failures 0" in s["stopped_reason"] and len(s["not_started"]) == 4 and s["failed"] == [first[1]]


def test_a_batch_that_runs_out_of_time_counts_its_silent_nodes_failed_and_the_next_starts():
    signed = order(timeout_ms=1000)
    book, c = coordinator(signed, batch="3", answers=IDS[:6])
    start = c.disc.quiet_end()
    out = c.poll(start)
    settle(c, signed, IDS[0], start + 0.1)
    due = c.next_deadline()
    assert due == pytest.approx(start + (1000 + RESULT_GRACE_MS) / 1000)
    out = c.poll(due)
    assert [p.node for p in posts(out)] == IDS[3:6] and events(out, "batch")[0]["index"] == 1
    assert c._batches[0]["failed"] == IDS[1:3]


def test_a_lost_reply_is_asked_again_then_the_node_is_unreachable():
    signed = order()
    book, c = coordinator(signed, answers=IDS[:1])
    c.poll(T0 + 0.05)
    now = T0 + 0.1
    for attempt in range(1, ORDER_ATTEMPTS):
        out = c.on_post_failed(IDS[0], "connection reset", now)
        (again,) = posts(out)
        assert again.retry and again.at > now
        now = again.at
    out = c.on_post_failed(IDS[0], "connection reset", now)
    assert events(out, "unreachable")[0]["detail"] == "connection reset" and c.settled(IDS[0])


def test_no_retry_is_planned_past_the_deadline():
    signed = order(deadline_ms=WALL + 100)
    book, c = coordinator(signed, answers=IDS[:1])
    c.poll(T0 + 0.05)
    out = c.on_post_failed(IDS[0], "timeout", T0 + 0.09)
    assert not posts(out) and IDS[0] in c.unreachable


def test_a_late_answerer_in_a_batched_run_forms_one_more_batch():
    signed = order()
    book, c = coordinator(signed, batch="2", answers=IDS[:2])
    start = c.disc.quiet_end()
    c.poll(start)
    book.on_answer(IDS[2], answer("q", IDS[2]), start + 0.5)  # after the quiet window
    for node in IDS[:2]:
        settle(c, signed, node, start + 1)
    out = c.poll(start + 1)
    assert events(out, "late_target")[0]["node"] == IDS[2]
    assert [p.node for p in posts(out)] == [IDS[2]]
    settle(c, signed, IDS[2], start + 2)
    c.poll(start + 2)
    assert c.done and c.summary["late_targets"] == [IDS[2]] and c.summary["batches"][-1]["nodes"] == [IDS[2]]


def test_a_result_before_the_order_reply_waits_and_a_forged_one_is_refused():
    signed = order()
    book, c = coordinator(signed, answers=IDS[:2])
    c.poll(T0 + 0.05)
    reply, out = c.on_result(result(signed, IDS[0]), T0 + 0.1)
    assert reply == {"ok": False, "retry": True} and not c.results  # the address has not confirmed the key
    reply, out = c.on_result(result(signed, IDS[1], key=SigningKey.generate()), T0 + 0.1)
    assert reply["refused"] == "BadSignature" and [e.reason for e in out if isinstance(e, Count)] == ["BadSignature"]
    reply, out = c.on_result(result(signed, "stranger@127.0.0.1:5", key=SigningKey.generate()), T0 + 0.1)
    assert reply["refused"] == "UnknownNode"
    c.on_reply(IDS[0], {"ok": True, "pk": NODES[IDS[0]].public.raw}, T0 + 0.2)
    reply, out = c.on_result(result(signed, IDS[0]), T0 + 0.3)
    assert reply == {"ok": True} and IDS[0] in c.results


def test_a_reply_with_another_key_than_discovery_named_is_counted():
    signed = order()
    book, c = coordinator(signed, answers=IDS[:1])
    c.poll(T0 + 0.05)
    out = c.on_reply(IDS[0], {"ok": True, "pk": SigningKey.generate().public.raw}, T0 + 0.1)
    assert [e.reason for e in out if isinstance(e, Count)] == ["KeyMismatch"]


def test_a_refusing_target_is_listed_with_its_reason():
    signed = order()
    book, c = coordinator(signed, answers=IDS[:1])
    c.poll(T0 + 0.05)
    c.on_reply(IDS[0], {"ok": False, "refused": "OutOfScope", "detail": "no"}, T0 + 0.1)
    c.poll(c.disc.quiet_end())
    assert c.summary["refused"] == [{"node": IDS[0], "reason": "OutOfScope", "detail": "no"}]
    assert c.summary["failed"] == [IDS[0]] and not c.summary["ok"]


# ---------------------------------------------------------------- the target


class Seen:
    def __init__(self) -> None:
        self.ids: set[str] = set()

    def run_seen(self, run_id: str) -> bool:
        return run_id in self.ids

    def mark_run_seen(self, run_id: str, deadline_ms: int) -> bool:
        new = run_id not in self.ids
        self.ids.add(run_id)
        return new


def target(members=(ME,), burst=2) -> RunTarget:
    return RunTarget(IDS[0], seen=Seen(), root=lambda: ROOT, facts={"role": "web"},
                     is_member=set(members).__contains__, bucket=TokenBucket(rate=1.0, burst=burst))


def test_an_order_runs_once_and_a_repeat_is_refused_unless_the_origin_asks_again():
    t = target()
    signed = order()
    body = {"order": signed.to_wire(), "ticket": b"t"}
    admit = t.check(body, WALL)
    assert isinstance(admit, Admit) and t.accept(admit, ticket_ok=True) is None
    t.started(admit.order, "execution-1")
    again = t.check(body, WALL)
    assert isinstance(again, Refuse) and again.reason == "Replayed"
    retry = t.check(dict(body, retry=True), WALL)
    assert isinstance(retry, Admit) and retry.again == "execution-1"
    assert t.accept(retry, ticket_ok=True) is None  # answered from the first execution
    assert t.accept(retry, ticket_ok=False).reason == "Replayed"


@pytest.mark.parametrize("make, reason", [
    (lambda: order(deadline_ms=WALL - 1, issued_ms=WALL - 1000), "Expired"),
    (lambda: order(origin="stranger@127.0.0.1:9"), "UnknownOrigin"),
    (lambda: stranger_order(), "UnknownKey"),
])
def test_orders_are_refused_with_their_reason_and_leave_an_audit_row(make, reason):
    signed = make()
    out = target().check({"order": signed.to_wire()}, WALL)
    assert isinstance(out, Refuse) and out.reason == reason
    row = audit_row(out.order, started_ms=WALL, duration_ms=None, exit_code=None, refused=out.reason)
    assert row["order"] == signed.order.run_id and row["refused"] == reason and row["origin"] == signed.order.origin


def test_an_order_without_the_origins_ticket_does_not_run():
    t = target()
    signed = order()
    admit = t.check({"order": signed.to_wire(), "ticket": b"x"}, WALL)
    assert t.accept(admit, ticket_ok=False).reason == "NotSentByOrigin"
    assert not t.seen.run_seen(signed.order.run_id)  # refused before the id was recorded
    origin_key = SigningKey.generate()
    ticket = origin_key.sign(ticket_bytes(signed.order.run_id, IDS[0]))
    assert ticket_valid(origin_key.public, ticket, signed.order.run_id, IDS[0])
    assert not ticket_valid(origin_key.public, ticket, signed.order.run_id, IDS[1])


def test_results_go_to_the_orders_origin_only_and_within_the_bucket():
    t = target(burst=2)
    o = order().order
    assert [t.result_post(o, T0) for _ in range(3)] == [ME, ME, None]
    assert t.result_post(o, T0 + 1.0) == ME


def test_garbage_orders_are_refused_without_an_audit_row():
    out = target().check({"order": [b"junk", "k", b""]}, WALL)
    assert isinstance(out, Refuse) and out.order is None
    assert audit_row(out.order, started_ms=WALL, duration_ms=None, exit_code=None, refused=out.reason) is None


# ---------------------------------------------------------------- convergence scheduling


def test_a_burst_of_bundles_costs_two_converges_and_the_timer_has_splay():
    from pathlib import Path

    from grapevine.node.convergence import ConvergeSchedule, ConvergeSettings

    plan = ConvergeSchedule(ConvergeSettings(root=Path("/"), debounce_ms=200, interval_s=60, splay_s=10),
                            random.Random(7))
    assert plan.request("bundle", T0) == T0  # the first after a quiet spell: at once
    assert plan.due(T0) == "bundle"
    plan.started(T0)
    at = plan.request("bundle", T0 + 0.05)
    assert at == pytest.approx(T0 + 0.2)  # within the window: at its end
    assert plan.request("bundle", T0 + 0.1) is None  # joins the pending one
    assert plan.due(T0 + 0.19) is None and plan.due(T0 + 0.2) == "bundle"
    timers = [plan.next_timer(T0) - T0 for _ in range(50)]
    assert all(60 <= t <= 70 for t in timers) and len(set(timers)) > 1


# ---------------------------------------------------------------- who is a member


def test_a_node_once_in_the_views_stays_a_member_and_a_stranger_never_becomes_one():
    from grapevine.node.ports import Membership

    views = {IDS[1]}
    stored = [IDS[5]]
    mem = Membership(IDS[0], views=lambda: views, stored=lambda: stored, refresh_s=5.0)
    mem.note(T0)
    views.clear()
    views.add(IDS[2])  # a shuffle replaced the passive view
    mem.note(T0 + 0.1)  # too soon: not read again
    assert mem.is_member(IDS[2], T0 + 0.1)  # in the views now
    mem.note(T0 + 1)
    views.clear()
    assert mem.is_member(IDS[1], T0 + 2) and mem.is_member(IDS[2], T0 + 2)  # remembered
    assert mem.is_member(IDS[0], T0 + 2)  # itself
    assert mem.is_member(IDS[5], T0 + 2)  # stored for rejoining
    assert not mem.is_member("victim@127.0.0.1:9", T0 + 2)


def test_a_run_moves_discovering_running_done_and_no_other_way():
    from grapevine.node.origin import DONE, RUNNING, RunStateError

    signed = order()
    book, c = coordinator(signed, batch="1", answers=IDS[:1])
    assert c.phase == "discovering"
    c.poll(c.disc.quiet_end())
    assert c.phase == RUNNING
    settle(c, signed, IDS[0], c.disc.quiet_end() + 0.1)
    c.poll(c.disc.quiet_end() + 0.1)
    assert c.phase == DONE and c.poll(T0 + 100) == []
    with pytest.raises(RunStateError):
        c._enter(RUNNING)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batch", [None, "7", "25%"])
def test_a_simulated_fleet_run_starts_every_answerer_once_and_accounts_for_everyone(seed, batch):
    """Virtual time, random answer and reply delays, lost replies, failures: the summary adds up.

    A small discrete-event loop plays the shell: answers land in the book,
    posts are answered after a delay (or lost, then retried by the machine),
    and ``poll`` runs at every event and at ``next_deadline()``.
    """
    import heapq

    rng = random.Random(seed)
    fleet = {f"s{i}@127.0.0.1:{1000 + i}": SigningKey.generate() for i in range(60)}
    signed = order(timeout_ms=2000)
    book = DiscoveryBook(ME)
    disc = book.start("q", "", peers=frozenset(), now=T0)
    c = RunCoordinator(signed, disc, T0, WALL, runorder.BatchSize.parse(batch), None)
    queue: list = []
    answer_at = {}
    for i, node in enumerate(fleet):
        late = rng.random() < 0.05
        answer_at[node] = T0 + (rng.uniform(1.0, 2.5) if late else rng.uniform(0.01, 0.4))
        heapq.heappush(queue, (answer_at[node], i, "answer", node))
    posted: list[str] = []
    seq = len(fleet)
    now = T0
    while not c.done:
        at = min(queue[0][0] if queue else float("inf"), c.next_deadline())
        assert at < T0 + 120, "the run never ended"
        now = max(now, at)
        while queue and queue[0][0] <= now:
            _, _, kind, node = heapq.heappop(queue)
            if kind == "answer":
                book.on_answer(node, {"q": "q", "n": node, "pk": fleet[node].public.raw, "i": {}}, now)
                effects = []
            elif kind == "lost":
                effects = c.on_post_failed(node, "reply lost", now)
            else:
                res = RunResult(run_id=signed.order.run_id, node=node, exit_code=0 if kind == "ok" else 1,
                                stdout=b"", stderr=b"", duration_ms=1)
                effects = c.on_reply(node, {"ok": True, "pk": fleet[node].public.raw,
                                            "result": SignedResult.sign(res, fleet[node]).to_wire()}, now)
            for e in effects:
                if isinstance(e, PostOrder):
                    seq += 1
                    outcome = "lost" if rng.random() < 0.1 else ("fail" if rng.random() < 0.1 else "ok")
                    heapq.heappush(queue, (max(e.at, now) + rng.uniform(0.01, 0.3), seq, outcome, e.node))
        for e in c.poll(now):
            if isinstance(e, PostOrder):
                posted.append(e.node)
                seq += 1
                outcome = "lost" if rng.random() < 0.1 else ("fail" if rng.random() < 0.1 else "ok")
                heapq.heappush(queue, (now + rng.uniform(0.01, 0.3), seq, outcome, e.node))
    s = c.summary
    assert len(posted) == len(set(posted))  # each target started once (retries are asks-again, not starts)
    # every answer that came while the run was open made a target (discovery stays open), and only those
    assert sorted(s["targets"]) == sorted(disc.answers)
    assert set(disc.answers) == {n for n, t in answer_at.items() if t <= now}
    ran = [n for b in s["batches"] for n in b["nodes"]]
    assert sorted(ran) == sorted(posted) == sorted(s["targets"]) and not s["not_started"]
    accounted = {r["node"] for r in s["results"]} | set(s["unreachable"])
    assert accounted == set(s["targets"])
    assert set(s["late_targets"]) <= set(s["targets"])
    assert set(s["failed"]) == {r["node"] for r in s["results"] if r["exit_code"]}
