"""The run shell (node/runs.py) over in-memory ports: three services, no agent, no sockets.

Each ``RunService`` gets a ``PeerLink`` whose ``send`` calls the other
service's route handler directly (with the caller as the frame's sender)
and whose ``broadcast`` hands the query to every other service: what the
agent and the transport do, minus HTTP. Commands are real subprocesses.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from grapevine.node.ports import NodeWork, PeerLink, RunBook
from grapevine.node.runs import RunService
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, SignedOrder
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root

ADMIN, OPERATOR = SigningKey.generate(), SigningKey.generate()
NOW = time.time_ns() // 1_000_000
ROOT = build_root(serial=1, now_ms=NOW - 1000, expires_days=30, admins=[ADMIN.public], threshold=1,
                  operators=[(OPERATOR.public, OperatorScope(selector=None, actions=("run", "converge")))])
IDS = [f"m{i}@127.0.0.1:{20 + i}" for i in range(3)]


class Store:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.rows: list[dict] = []

    def mark(self, run_id: str, deadline_ms: int) -> bool:
        new = run_id not in self.seen
        self.seen.add(run_id)
        return new


def mesh(members=IDS) -> dict[str, RunService]:
    svcs: dict[str, RunService] = {}

    def link(me: str) -> PeerLink:
        async def send(node: str, route: str, body):
            handler, with_sender = svcs[node].peer_routes()[route]
            out = handler(me, body) if with_sender else handler(body)
            return await out if asyncio.iscoroutine(out) else out

        def broadcast(kind: str, body, ttl_ms: int) -> bytes:
            for other in svcs.values():
                if other.me != me:
                    asyncio.get_running_loop().create_task(other.on_query(me, body, b""))
            return b"x" * 16

        return PeerLink(send=send, broadcast=broadcast, live_peers=lambda: frozenset(members) - {me},
                        is_member=set(members).__contains__)

    for me in IDS:
        st = Store()
        svcs[me] = RunService(
            me=me, node_key=SigningKey.generate(), facts={"name": me.split("@")[0], "role": "web"},
            root=lambda: ROOT, peers=link(me),
            work=NodeWork(converge_now=None, bundles=lambda: [], status_info=lambda: {"bundles": []}),
            store=RunBook(run_seen=st.seen.__contains__, mark_run_seen=st.mark, record_run=st.rows.append,
                          run_history=lambda n, st=st: list(reversed(st.rows))[:n]))
        svcs[me].test_store = st
    return svcs


def order(origin: str, command: str) -> SignedOrder:
    now = time.time_ns() // 1_000_000
    o = RunOrder(run_id=runorder.new_run_id(), origin=origin, selector="", action=RunAction.shell_string(command),
                 timeout_ms=5000, issued_ms=now - 1000, deadline_ms=now + 60_000, operator=OPERATOR.key_id)
    return SignedOrder.sign(o, OPERATOR)


@pytest.mark.timeout(60)
def test_a_run_through_the_shell_reaches_every_service_and_each_records_it():
    async def go():
        svcs = mesh()
        origin = svcs[IDS[0]]
        live = origin.open_run(order(IDS[0], "echo hi"))
        summary = await origin.run(live, batch=runorder.BatchSize.parse("2"), max_failures=None)
        await asyncio.gather(*(s.close() for s in svcs.values()))
        return svcs, summary

    svcs, summary = asyncio.run(go())
    assert summary["ok"] and sorted(r["node"] for r in summary["results"]) == IDS
    assert {r["stdout"] for r in summary["results"]} == {"hi\n"}
    assert [len(b["nodes"]) for b in summary["batches"]] == [2, 1]
    for s in svcs.values():
        (row,) = s.test_store.rows
        assert row["exit_code"] == 0 and row["refused"] is None and row["origin"] == IDS[0]


@pytest.mark.timeout(60)
def test_an_answer_in_another_nodes_name_is_refused_by_the_shell_and_counted():
    async def go():
        svcs = mesh()
        origin = svcs[IDS[0]]
        disc = await origin._open_discovery("status", "")
        forged = {"q": disc.qid, "n": IDS[2], "pk": SigningKey.generate().public.raw, "i": {}}
        reply = origin.on_answer(IDS[1], forged)  # the frame came from IDS[1]
        return origin, disc, reply

    origin, disc, reply = asyncio.run(go())
    assert reply == {"ok": False, "refused": "SenderMismatch"}
    assert origin.refusals["SenderMismatch"] == 1
