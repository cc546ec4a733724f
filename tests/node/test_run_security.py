"""Real agents on loopback: no reflection of results or answers to a stranger, and the run audit trail.

The agents are started with the one launcher (grapevine.cli.localfleet); the
"victim" is a plain HTTP server on loopback that counts every request it
gets. A forged query broadcast or a run order naming the victim as its
origin must not make any agent send it anything.
"""

from __future__ import annotations

import http.server
import os
import json
import threading
import time

import msgpack
import pytest

from grapevine.cli.localfleet import FAST_ENV, FleetKeys, LocalFleet, free_ports, wait_for
from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.messages import DIGEST_LEN
from grapevine.node.frames import pack_envelope, unpack_envelope
from grapevine.node.netkey import KeyRing, generate_key, read_key_file, write_key_file
from grapevine.policy import runorder
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, SignedOrder
from grapevine.policy.trust import OperatorScope
from grapevine.policy.trust_files import build_root, init_root, write_item_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AGENTS = 3


class Victim:
    """An HTTP server on loopback that records every request it receives."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                hits.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.node_id = f"victim@127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Victim":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three agents in one mesh, with a trust root that also names an operator."""

    d = tmp_path_factory.mktemp("runsec")
    alice, operator = SigningKey.generate(), SigningKey.generate()
    alice.save(d / "alice.key")
    operator.save(d / "operator.key")
    now = time.time_ns() // 1_000_000
    root = build_root(serial=1, now_ms=now, expires_days=30, admins=[alice.public], threshold=1,
                      publishers=[(alice.public, "*")],
                      operators=[(operator.public, OperatorScope(selector=None, actions=("run", "converge")))])
    write_item_file(d / "root.gv", init_root(root, [alice], now))
    write_key_file(d / "fleet.netkey", generate_key())
    keys = FleetKeys(dir=d, author=d / "alice.key", trust=d / "root.gv", netkey=d / "fleet.netkey", author_key=alice)
    fleet = LocalFleet(d, keys=keys, preset=None, env=FAST_ENV)
    try:
        ports = free_ports(AGENTS)
        agents = [fleet.add(f"s{i}", port=p, join=[f"127.0.0.1:{ports[0]}"] if i else [], tags={"role": "web"})
                  for i, p in enumerate(ports)]
        fleet.up(*agents)
        ids = {a.node_id for a in agents}
        wait_for(lambda: all(ids - {a.node_id} <= set(a.client().get("/v1/members")["active"] + a.client().get("/v1/members")["passive"]) for a in agents),
                 60, "every agent to know the others")
        yield fleet, agents, operator
    finally:
        fleet.close(grace=0)


def _ring(keys: FleetKeys) -> KeyRing:
    ring = KeyRing()
    ring.install(read_key_file(keys.netkey))
    return ring


MALLORY = "mallory@127.0.0.1:9"
MALLORY_KEY = SigningKey.generate()  # a member's own node key: frames are signed by their sender


def _seal(keys: FleetKeys, body, dest: str = "") -> bytes:
    """A frame as any holder of the network key (and a node key of its own) can make it, as ``MALLORY``."""
    return _ring(keys).seal(pack_envelope(MALLORY_KEY, MALLORY, dest, msgpack.packb(body, use_bin_type=True)))


def _answer(keys: FleetKeys, data: bytes):
    """The body of a signed route answer."""
    return msgpack.unpackb(unpack_envelope(_ring(keys).open(data)).body, raw=False)


def _post(agent, path: str, frame: bytes) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("POST", path, body=frame, headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _order(operator: SigningKey, origin: str, command: str, *, deadline_ms: int | None = None) -> SignedOrder:
    now = time.time_ns() // 1_000_000
    o = RunOrder(run_id=runorder.new_run_id(), origin=origin, selector="", action=RunAction.shell_string(command),
                 timeout_ms=5000, issued_ms=now - 2000, deadline_ms=deadline_ms or now + 60_000, operator=operator.key_id)
    return SignedOrder.sign(o, operator)


def test_a_forged_query_naming_a_stranger_makes_no_node_answer_it(world):
    """One query broadcast whose origin is a stranger's address: on the old code every node POSTed its answer there."""
    fleet, agents, _ = world
    with Victim() as victim:
        query = {"q": runorder.new_run_id(), "o": victim.node_id, "s": "", "k": "status"}
        eph = m.Ephemeral(msg_id=os.urandom(DIGEST_LEN), origin=victim.node_id,
                          deadline_ms=time.time_ns() // 1_000_000 + 10_000, hops=1,
                          payload=msgpack.packb(["query", query], use_bin_type=True))
        frame = _ring(fleet.keys).seal(pack_envelope(MALLORY_KEY, MALLORY, agents[0].node_id, codec.encode(eph)))
        status, _ = _post(agents[0], "/v1/gossip", frame)
        assert status == 204
        refused = lambda: all(a.metric("grapevine_run_refusals_total", 'reason="UnknownOrigin"') >= 1 for a in agents)
        wait_for(lambda: victim.hits or refused(), 30, "the forged query to reach every agent")
        # every node has counted its refusal, and a node decides whether to answer a query when it arrives:
        # no node sent the stranger anything...
        assert victim.hits == []
        # ...because each refused to answer it, counted by reason
        assert refused()


def test_an_order_naming_a_stranger_as_origin_is_refused_and_nothing_is_sent_there(world):
    """A genuine operator-signed order whose origin is not a member: refused, no key fetch, no result post."""
    fleet, agents, operator = world
    with Victim() as victim:
        signed = _order(operator, victim.node_id, "echo reflected")
        replies = []
        for a in agents:
            status, data = _post(a, "/v1/peer/run.order", _seal(fleet.keys, {"order": signed.to_wire(), "ticket": b"x" * 64}))
            assert status == 200
            replies.append(_answer(fleet.keys, data))
        # a node fetches the origin's key, and would start the order, before it replies: every reply is in
        assert victim.hits == []  # no key fetch, no result post to the stranger
        assert [r.get("refused") for r in replies] == ["UnknownOrigin"] * AGENTS, replies
        rows = agents[1].client().get("/v1/runs/history")["runs"]
        assert any(r["order"] == signed.order.run_id and r["refused"] == "UnknownOrigin" for r in rows)


def test_history_runs_lists_executed_and_refused_orders_here_and_fleet_wide(world):
    fleet, agents, operator = world
    origin = agents[0]
    res = fleet.cli("run", "--key", str(fleet.keys.dir / "operator.key"), "--json", "--shell", "exit 3",
                    agent=origin, check=False)
    done = json.loads(res.stdout)
    assert res.returncode == 1 and len(done["results"]) == AGENTS, res.stderr
    run_id = done["run_id"]
    expired = _order(operator, origin.node_id, "echo late", deadline_ms=time.time_ns() // 1_000_000 - 1)
    _post(agents[2], "/v1/peer/run.order", _seal(fleet.keys, {"order": expired.to_wire()}))

    local = fleet.cli_json("history", "--runs", agent=agents[2])
    rows = {r["order"]: r for r in local["runs"]}
    ran = rows[run_id]
    assert set(ran) >= {"order", "operator", "command", "selector", "origin", "started_ms", "duration_ms",
                        "exit_code", "refused"}
    assert ran["exit_code"] == 3 and ran["refused"] is None and ran["operator"] == operator.key_id
    assert ran["command"] == "exit 3" and ran["origin"] == origin.node_id and ran["duration_ms"] >= 0
    assert rows[expired.order.run_id]["refused"] == "Expired" and rows[expired.order.run_id]["exit_code"] is None

    fleet_doc = fleet.cli_json("history", "--runs", "--fleet", agent=agents[1])
    holders = {r["node"] for r in fleet_doc["runs"] if r["order"] == run_id}
    assert holders == {a.node_id for a in agents}
    assert any(r["order"] == expired.order.run_id and r["node"] == agents[2].node_id for r in fleet_doc["runs"])
    text = fleet.cli("history", "--runs", agent=agents[2]).stdout
    assert "refused Expired" in text and "exit 3" in text
