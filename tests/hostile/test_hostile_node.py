"""A hostile node against honest agents: it holds the network key and a node key, no author key.

Each test is one line of attack against the same running mesh (the module
fixture in conftest.py), in order. Honest nodes must accept none of it:
their stores (local API), the files applied under each --root, and the
marker files commands append to are the evidence. The last tests check
that a genuine bundle injected during a flood still converges everywhere,
and that the attack shows by reason in every honest node's /metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections import Counter

import aiohttp
import msgpack
import pytest

from grapevine.cli.localfleet import free_port, wait_for
from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.item import SignedItem, Version
from grapevine.node.runapi import HISTORY_MAX
from grapevine.policy import runorder, trust, trust_files
from grapevine.policy.keys import SigningKey
from grapevine.policy.runorder import RunAction, RunOrder, RunResult, SignedOrder, SignedResult
from tests.hostile.hostile_peer import HostilePeer, metrics_delta, now_ms, scrape_metrics, steady_metrics
from tests.hostile.hostile_server import HostileServer

pytestmark = pytest.mark.timeout(120)

FLOOD_MESSAGES = 1500  # bounded flood: enough to fill queues and caches on a 2-core box, done in seconds
FLOOD_WORKERS = 8  # concurrent connections the hostile keeps open
RUN_TIMEOUT_S = 60.0  # a genuine run stream from start to summary
DISCOVERY_RUNS = 3  # genuine runs while the hostile member lies in discovery: it races honest answers each time


def stores(world) -> dict[str, dict[str, str]]:
    """Each honest node's bundles: {node: {name: version}} from its local API."""
    out = {}
    for a in world.agents:
        doc = a.client().get("/v1/bundles")
        out[a.name] = {r["name"]: r["version"] for r in doc["bundles"]}
    return out


def pwned_files(world) -> list[str]:
    found = []
    for a in world.agents:
        found += [str(p) for p in a.root.rglob("*pwned*")]
    return found + [str(p) for p in world.base.glob("*pwned*")]


def send_everywhere(world, msgs: list[tuple[str, m.Message]], sender: str | None = None) -> None:
    for a in world.agents:
        for what, msg in msgs:
            status = world.hostile.gossip(a.port, msg, what, sender)
            # 403: a frame in another node's name is signed with the hostile's key, not the pinned one
            assert status in ((204, 400) if sender is None else (403,)), (what, status)


def settled(world, want: dict[tuple[str, str], int] | None = None) -> Counter:
    """Wait until every refusal in ``want`` ((metric, reason) -> at least this many over the honest nodes) is
    counted and the counters have stopped moving; the refusals since the baseline. An item is admitted or
    refused before a node answers the frame, so a forgery that got in is in a store by now."""
    wait_for(lambda: all(delta(world)[k] >= n for k, n in (want or {}).items()), 20,
             f"the honest nodes to count the refusals {want}")
    steady_metrics(world.mesh)
    return delta(world)


def delta(world) -> Counter:
    total: Counter = Counter()
    for a in world.agents:
        total += metrics_delta(world.baseline[a.port], scrape_metrics(a.port))
    return total


# ---------------------------------------------------------------- bundles and roots


def test_forged_bundles_reach_no_store_and_no_disk(world):
    h = world.hostile
    publisher = world.mesh.keys.author_key.key_id
    madeup = SigningKey.generate()
    genuine = world.genuine[1]
    rekeyed = SignedItem(key="bundle/evil/rekeyed", version=genuine.version, payload=genuine.payload,
                         signatures=genuine.signatures)
    outside = SignedItem(key="evil/x", version=Version(now_ms(), 0, h.node_key.key_id), payload=b"x")
    outside = outside.with_signature(h.node_key.key_id, h.node_key.sign(outside.signing_bytes()))
    forged = [
        ("unsigned bundle claiming the publisher", h.bundle_item("evil/unsigned", signer=None, author=publisher)),
        ("bundle signed by a made-up key", h.bundle_item("evil/madeup", signer=madeup)),
        ("bundle signed by the hostile's node key", h.bundle_item("evil/nodekey", signer=h.node_key)),
        ("bundle claiming the publisher, signed by the node key",
         h.bundle_item("evil/claimed", signer=h.node_key, author=publisher)),
        ("genuine signature moved to another bundle name", rekeyed),
        ("node-signed item outside every namespace", outside),
        ("unsigned bundle stamped an hour ahead",
         h.bundle_item("evil/future", signer=None, author=publisher, wall_ms=now_ms() + 3_600_000)),
        ("forged new version of the genuine bundle",
         h.bundle_item("site/motd", signer=h.node_key, author=publisher, wall_ms=now_ms() + 1000)),
    ]
    before = stores(world)
    send_everywhere(world, [(what, m.Push(hops=1, item=item)) for what, item in forged])
    sync = [SignedItem(key=i.key, version=Version(i.version.wall_ms, i.version.counter + 1, i.version.author),
                       payload=i.payload, signatures=i.signatures) for _, i in forged]
    send_everywhere(world, [("the same forgeries by anti-entropy", m.SyncItems(items=tuple(sync), want=()))])
    reasons = ("BadSignature", "UnknownKey", "OutOfScope", "FromTheFuture")
    d = settled(world, {("grapevine_refusals", r): len(world.agents) for r in reasons})
    assert stores(world) == before, "a forged item changed an honest store"
    assert pwned_files(world) == []
    assert all((a.root / "motd").read_text() == "genuine v1\n" for a in world.agents)
    for reason in reasons:
        assert d[("grapevine_refusals", reason)] >= len(world.agents), (reason, d)


def test_forged_trust_roots_are_refused_and_the_root_stays(world):
    h = world.hostile
    admin = world.mesh.keys.author_key.key_id
    now = now_ms()
    takeover = trust_files.build_root(serial=2, now_ms=now - 1000, expires_days=30, admins=[h.node_key.public],
                                      threshold=1, publishers=[(h.node_key.public, trust.ALL_NAMES)])
    by_node = trust_files.init_root(takeover, [h.node_key], now)
    unsigned = SignedItem(key=trust.ROOT_KEY, version=Version(now, 1, admin), payload=takeover.encode())
    claimed = unsigned.with_signature(admin, h.node_key.sign(unsigned.signing_bytes()))
    attempts = [
        ("new root signed by the hostile's node key", by_node),
        ("new root with no signature", unsigned),
        ("new root claiming the admin's signature", claimed),
    ]
    send_everywhere(world, [(what, m.Push(hops=1, item=item)) for what, item in attempts])
    after = h.bundle_item("evil/after-root", signer=h.node_key)
    send_everywhere(world, [("bundle by the would-be new admin", m.Push(hops=1, item=after))])
    d = settled(world, {("grapevine_refusals", "UnknownKey"): 2 * len(world.agents),
                        ("grapevine_refusals", "BadSignature"): 2 * len(world.agents)})
    for a in world.agents:
        st = a.client().get("/v1/status")
        assert st["trust_root_serial"] == 1
        hist = a.client().get(f"/v1/history?name={trust.ROOT_KEY}")
        assert len(hist["versions"]) == 1
    assert all("evil/after-root" not in s for s in stores(world).values())
    assert d[("grapevine_refusals", "UnknownKey")] >= 2 * len(world.agents)
    assert d[("grapevine_refusals", "BadSignature")] >= 2 * len(world.agents)


def test_replayed_old_versions_never_roll_back(world):
    world.inject(2, via=1)
    world.wait_applied(2)
    old, root_item = world.genuine[1], world.mesh.keys.trust
    replays = [
        ("replay of the genuine bundle's old version", m.Push(hops=1, item=old)),
        ("replay of the old version by anti-entropy", m.SyncItems(items=(old,), want=())),
        ("replay of the first trust root", m.Push(hops=1, item=trust_files.read_item_file(root_item))),
    ]
    send_everywhere(world, replays)
    settled(world)
    current = world.genuine[2].version.stamp
    for name, bundles in stores(world).items():
        assert bundles["site/motd"].startswith(current), (name, bundles)
    assert all((a.root / "motd").read_text() == "genuine v2\n" for a in world.agents)


# ---------------------------------------------------------------- runs


def _order(world, *, key: SigningKey, command: str, operator: str | None = None, issued_ms: int | None = None,
           deadline_ms: int | None = None) -> RunOrder:
    now = now_ms()
    return RunOrder(run_id=runorder.new_run_id(), origin=world.agents[0].node_id, selector="",
                    action=RunAction.shell_string(command), timeout_ms=10_000, issued_ms=issued_ms or now - 1000,
                    deadline_ms=deadline_ms or now + 60_000, operator=operator or key.key_id)


def _genuine_run(world, command: str, on_event=None) -> dict:
    """A run the real operator starts through the origin's local API; returns the summary."""
    key = world.mesh.keys.author_key
    signed = SignedOrder.sign(_order(world, key=key, command=command), key)
    summary = None
    for ev in world.agents[0].client().stream("POST", "/v1/run", {"order": signed.encode().hex()}):
        if on_event is not None:
            on_event(ev, signed)
        if ev.get("event") == "done":
            summary = ev["summary"]
    assert summary is not None
    return summary | {"signed": signed}


def test_run_orders_from_the_hostile_are_refused(world):
    h, op = world.hostile, world.mesh.keys.author_key
    marker = world.base / "ran.marker"
    done = _genuine_run(world, f"echo ran >> {marker}")
    assert done["ok"], done
    assert len(marker.read_text().splitlines()) == len(world.agents)
    captured = done["signed"]
    pwn = f"touch {world.base}/pwned-run"
    madeup = SigningKey.generate()
    self_signed = SignedOrder.sign(_order(world, key=madeup, command=pwn), madeup)
    by_node = SignedOrder.sign(_order(world, key=h.node_key, command=pwn), h.node_key)
    claimed = _order(world, key=op, command=pwn)
    claimed_sig = SignedOrder(body=claimed.encode(), key_id=op.key_id, signature=h.node_key.sign(claimed.encode()),
                              order=claimed)
    unsigned = SignedOrder(body=claimed.encode(), key_id=op.key_id, signature=b"", order=claimed)
    altered = RunOrder(**{f: getattr(captured.order, f) for f in captured.order.__dataclass_fields__} | {
        "action": RunAction.shell_string(pwn)})
    tampered = SignedOrder(body=altered.encode(), key_id=op.key_id, signature=captured.signature, order=altered)
    old = now_ms() - 120_000
    expired = SignedOrder.sign(_order(world, key=op, command=pwn, issued_ms=old, deadline_ms=old + 60_000), op)
    attempts = {
        "replay of the captured genuine order": (captured, "Replayed"),
        "order signed by a made-up key": (self_signed, "UnknownKey"),
        "order signed by the hostile's node key": (by_node, "UnknownKey"),
        "order naming the operator, signed by the node key": (claimed_sig, "BadSignature"),
        "order naming the operator, unsigned": (unsigned, "BadSignature"),
        "captured order with its command swapped": (tampered, "BadSignature"),
        "captured order replayed after its deadline": (expired, "Expired"),
    }
    for a in world.agents:
        for what, (signed, reason) in attempts.items():
            reply = h.route(a.port, "run.order", {"order": signed.to_wire()}, what)
            assert isinstance(reply, dict) and not reply.get("ok"), (what, reply)
            assert reply.get("refused") == reason, (what, reply)
    # each node decided before it replied: under the captured order's id it ran once, then refused the replay
    # and the copy with its command swapped
    run_id = captured.order.run_id
    for a in world.agents:
        wait_for(lambda: _trail(a, run_id) == (1, ["BadSignature", "Replayed"]), 20,
                 f"{a.name}'s audit trail of {run_id} to hold one run and two refusals")
    assert len(marker.read_text().splitlines()) == len(world.agents), "a replayed order ran again"
    assert pwned_files(world) == []


def _trail(agent, run_id: str) -> tuple[int, list[str]]:
    """``agent``'s audit trail of one run: (executions finished, refusal reasons, sorted)."""
    rows = [r for r in agent.client().get(f"/v1/runs/history?limit={HISTORY_MAX}")["runs"] if r["order"] == run_id]
    return sum(1 for r in rows if r["refused"] is None), sorted(r["refused"] for r in rows if r["refused"])


def test_forged_run_results_are_refused_by_the_origin(world):
    h = world.hostile
    origin = world.agents[0]
    forged_sent = threading.Event()
    refused_events = []

    def on_event(ev, signed):
        if ev.get("event") == "refused_result":
            refused_events.append(ev)
        if ev.get("event") != "batch" or forged_sent.is_set():
            return
        run_id = signed.order.run_id
        for node in ev["nodes"]:
            lie = RunResult(run_id=run_id, node=node, exit_code=0, stdout=b"forged\n", stderr=b"", duration_ms=1)
            h.route(origin.port, "run.result", SignedResult.sign(lie, h.node_key).to_wire(),
                    "result for a target, signed by the hostile's node key")
        stranger = RunResult(run_id=run_id, node=h.node_id, exit_code=0, stdout=b"forged\n", stderr=b"", duration_ms=1)
        h.route(origin.port, "run.result", SignedResult.sign(stranger, h.node_key).to_wire(),
                "result from a node that is not a target")
        h.route(origin.port, "run.result", [b"\x93junk", "k", b""], "result that is not a result")
        forged_sent.set()

    done = _genuine_run(world, "sleep 1; echo genuine", on_event)
    assert forged_sent.is_set()
    assert sorted(r["node"] for r in done["results"]) == sorted(a.node_id for a in world.agents)
    assert {r["stdout"] for r in done["results"]} == {"genuine\n"}, done["results"]
    reasons = Counter(e["reason"] for e in refused_events)
    assert reasons["BadSignature"] == len(world.agents) and reasons["UnknownNode"] == 1, reasons


# ---------------------------------------------------------------- flood and membership lies


def _flood(world, stop: threading.Event, kinds: Counter) -> None:
    """Send FLOOD_MESSAGES lies from FLOOD_WORKERS connections, counting each kind sent in ``kinds``."""
    h = world.hostile
    agents = world.agents
    others = [a.node_id for a in agents]
    dead = [f"ghost{i}@127.0.0.1:{1 + i}" for i in range(8)]  # ports nothing listens on
    rnd = os.urandom

    def one(i: int) -> None:
        if stop.is_set():  # the test failed or timed out: stop attacking
            return
        a = agents[i % len(agents)]
        victim = others[(i + 1) % len(others)]  # another honest node, whose id the hostile claims
        k = i % 10
        if k == 0:
            h.post_raw(a.port, b"G\x02" + rnd(4) + rnd(60), "frame sealed with an unknown network key")
        elif k == 1:
            good = h.frame(codec.encode(m.Ping()), dest=a.node_id)
            h.post_raw(a.port, good[:-1] + bytes([good[-1] ^ 1]), "frame whose seal was tampered with")
        elif k == 2:
            h.post_raw(a.port, rnd(64), "bytes that are not a frame")
        elif k == 3:
            h.post_raw(a.port, h.ring.seal(rnd(48)), "sealed bytes that are not an envelope")
        elif k == 4:
            h.post_raw(a.port, h.frame(rnd(48), dest=a.node_id), "envelope holding a bad message")
        elif k == 5:
            item = h.bundle_item(f"evil/flood{i}", signer=None, author=world.mesh.keys.author_key.key_id)
            h.gossip(a.port, m.Push(hops=1, item=item), "unsigned bundle (flood)")
        elif k == 6:
            h.gossip(a.port, m.Disconnect(leaving=True), "goodbye in another node's name", sender=victim)
        elif k == 7:
            h.gossip(a.port, m.ForwardJoin(joiner=dead[i % len(dead)], ttl=6), "forward-join of a dead node",
                     sender=victim)
        elif k == 8:
            h.gossip(a.port, m.Shuffle(origin=victim, ttl=3, peers=tuple(dead)), "shuffle full of dead nodes",
                     sender=victim)
        else:
            h.gossip(a.port, m.Join(), "join under another node's id", sender=victim)
        kinds[k] += 1

    with concurrent.futures.ThreadPoolExecutor(FLOOD_WORKERS) as pool:
        list(pool.map(one, range(FLOOD_MESSAGES)))


def test_genuine_bundle_converges_through_a_flood_and_membership_lies(world, hostile_report):
    stop = threading.Event()
    kinds: Counter = Counter()
    flood = threading.Thread(target=_flood, args=(world, stop, kinds), daemon=True)
    t0 = time.monotonic()
    flood.start()
    try:
        # the attack is under way: every worker has sent a few lies
        wait_for(lambda: sum(kinds.values()) >= 4 * FLOOD_WORKERS or not flood.is_alive(), 20, "the flood to start")
        world.inject(3, via=2)
        took = world.wait_applied(3)
        during = flood.is_alive()
        flood.join(RUN_TIMEOUT_S)
    finally:
        stop.set()
        flood.join(RUN_TIMEOUT_S)
    flood_s = time.monotonic() - t0
    assert not flood.is_alive()
    assert sum(kinds.values()) == FLOOD_MESSAGES
    for a in world.agents:
        assert a.alive(), f"{a.name} died under the flood"
        assert a.client().get("/v1/status")["status"] == "ok"
    assert all("evil/" not in " ".join(s) for s in stores(world).values())
    assert pwned_files(world) == []
    # the mesh still converges after the lies, not just during them
    world.inject(4, via=1)
    world.wait_applied(4)
    hostile_report["flood (bounded) and a genuine bundle injected during it"] = Counter({
        "flood messages sent": sum(kinds.values()),
        "flood duration, ms": int(flood_s * 1000),
        "genuine v3 applied on every node, ms after injection": int(took * 1000),
        "flood still running when v3 was everywhere (1 = yes)": int(during),
    })


JUNK_BODIES = [None, 0, -1, 2**63, "x", b"\x00" * 64, [], [1], [[1], {}], {}, {"q": [1]}, {"q": {"a": 1}},
               {"order": [b"", "k", b""]}, {"order": {"a": 1}}, [b"\x93\x01", "k", b""], {"q": "x", "n": 1, "pk": b"", "i": 1}]


@pytest.mark.parametrize("route", ["hello", "query.answer", "run.order", "run.result", "run.key"])
def test_junk_route_bodies_are_refused_without_an_internal_error(world, route):
    h = world.hostile
    for a in world.agents:
        for body in JUNK_BODIES:
            status, data = h._post(a.port, f"/v1/peer/{route}", h.route_frame(body))
            h._note(f"junk body on route {route}", status, "answered" if status == 200 else str(status))
            assert status in (200, 400), (route, body, status, data[:200])
        assert a.alive()


@pytest.mark.parametrize("payload", [b"", b"\xc1", msgpack.packb([[1], {}]), msgpack.packb([{"k": 1}, 1]),
                                     msgpack.packb(["query", {"q": [1], "o": 1, "s": 2, "k": 3}]),
                                     msgpack.packb(["query", {"q": "1", "o": "nowhere", "s": "((", "k": "run"}]),
                                     msgpack.packb([None, None, None])])
def test_junk_broadcasts_are_dropped_without_an_internal_error(world, payload):
    h = world.hostile
    for a in world.agents:
        msg = m.Ephemeral(msg_id=os.urandom(16), origin=h.node_id, deadline_ms=now_ms() + 5000, hops=1, payload=payload)
        status = h.gossip(a.port, msg, "junk broadcast payload")
        assert status == 204, (payload, status)
        assert a.alive()


LINK_BAD_FRAMES = 40  # well past the transport's limit of bad frames on one link


def test_a_link_sending_bad_frames_is_closed(world):
    h = world.hostile
    target = world.agents[1]

    async def attack() -> tuple[int | None, int]:
        sent = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            # a key holder can open a link in its own name; what it sends down it is still checked
            async with session.ws_connect(f"http://127.0.0.1:{target.port}/v1/link",
                                          headers=h.link_headers(target.node_id)) as ws:
                for i in range(LINK_BAD_FRAMES):
                    if ws.closed:
                        break
                    junk = h.frame(os.urandom(32)) if i % 2 else b"G\x01" + os.urandom(60)
                    try:
                        await ws.send_bytes(junk)
                    except (ConnectionError, RuntimeError):
                        break
                    sent += 1
                try:
                    await asyncio.wait_for(ws.receive(), 10)
                except asyncio.TimeoutError:
                    pass
                return ws.close_code, sent

    code, sent = asyncio.run(attack())
    h._note("bad frames down a WebSocket link", 101, f"link closed with code {code}")
    assert code == aiohttp.WSCloseCode.POLICY_VIOLATION, (code, sent)
    assert target.alive()


def test_lies_in_discovery_cannot_plant_forged_run_results(world):
    """A hostile member answers every run discovery in each honest node's name with its own key,
    then forges those nodes' results: the origin must keep only the genuine ones."""
    port = free_port()
    member = HostilePeer(world.mesh.keys.netkey, name="mallory-member", port=port)  # "mallory" is pinned to the other key
    server = HostileServer(member, port, [a.node_id for a in world.agents])
    server.start()
    try:
        origin = world.agents[0]
        server.call(server.join(origin.node_id))
        wait_for(lambda: member.node_id in origin.client().get("/v1/members")["active"],
                              20, "the hostile member to be in the origin's active view")
        for attempt in range(DISCOVERY_RUNS):
            marker = world.base / f"discovery-{attempt}.marker"
            done = _genuine_run(world, f"echo genuine; echo ran >> {marker}")
            honest = {r["node"]: r for r in done["results"] if r["node"] != member.node_id}
            assert sorted(honest) == sorted(a.node_id for a in world.agents), (attempt, done)
            assert {r["stdout"] for r in honest.values()} == {"genuine\n"}, (attempt, done["results"])
            assert len(marker.read_text().splitlines()) == len(world.agents)
        assert server.queries, "the hostile member never saw a discovery query: the attack did not happen"
        assert server.forged_results, "the hostile member was never sent an order: it could not forge results"
        assert not [r for _, r in server.forged_results if isinstance(r, dict) and r.get("ok")], server.forged_results
    finally:
        server.stop()


def test_a_target_cannot_run_the_order_on_later_batches_ahead_of_the_origin(world):
    """A hostile member in the first batch of a rolling run posts the genuine signed order to every
    other target at once: no honest node may run it before the origin sends it there."""
    port = free_port()
    member = HostilePeer(world.mesh.keys.netkey, name="aaa-first", port=port)  # sorts first: batch 1
    server = HostileServer(member, port, [a.node_id for a in world.agents], lie=False, replay_orders=True)
    server.start()
    try:
        origin = world.agents[0]
        server.call(server.join(origin.node_id))
        wait_for(lambda: member.node_id in origin.client().get("/v1/members")["active"],
                              20, "the hostile member to be in the origin's active view")
        marker = world.base / "batches.marker"
        op = world.mesh.keys.author_key
        order = _order(world, key=op, command=f"echo ran >> {marker}; sleep 0.5; exit 1")
        signed = SignedOrder.sign(order, op)
        summary = None
        body = {"order": signed.encode().hex(), "batch": "1", "max_failures": 0}
        for ev in origin.client().stream("POST", "/v1/run", body):
            if ev.get("event") == "done":
                summary = ev["summary"]
        assert summary is not None
        # every honest node has answered the hostile's copy of the order, so decided on it: one that took it
        # would have said ok (checked below), and its run shows in its audit trail once the command ends
        wait_for(lambda: len(server.replayed) >= len(world.agents), 20, "the honest nodes' replies to the replays")
        for a in world.agents:
            wait_for(lambda: _trail(a, order.run_id)[0] == int(a.node_id in ran_by_origin(summary)), 20,
                     f"{a.name}'s audit trail of {order.run_id}")
        started = ran_by_origin(summary) - {member.node_id}
        assert server.replayed, "the hostile member was never sent the order: the attack did not happen"
        ran = len(marker.read_text().splitlines()) if marker.exists() else 0
        assert ran == len(started), (ran, summary["batches"], summary["stopped_reason"], server.replayed)
        assert not [r for r in server.replayed if isinstance(r, dict) and r.get("ok")], server.replayed
    finally:
        server.stop()


def ran_by_origin(summary: dict) -> set[str]:
    """The targets the origin sent the order to, batch by batch."""
    return {n for b in summary["batches"] for n in b["nodes"]}


def test_attack_shows_by_reason_in_every_honest_nodes_metrics(world, hostile_report):
    per_node = {a.name: metrics_delta(world.baseline[a.port], scrape_metrics(a.port)) for a in world.agents}
    total: Counter = Counter()
    for c in per_node.values():
        total += c
    hostile_report["honest nodes' /metrics, summed (metric/reason)"] = total
    hostile_report["the hostile's own view (refusal it was answered with)"] = world.hostile.outcomes()
    for name, c in per_node.items():
        for reason in ("BadSignature", "UnknownKey"):
            assert c[("grapevine_refusals", reason)] > 0, (name, reason, c)
        for reason in ("UnknownNetworkKey", "BadSeal", "NotAFrame", "BadEnvelope", "BadMessage"):
            assert c[("grapevine_bad_frames", reason)] > 0, (name, reason, c)
        for reason in ("Replayed", "UnknownKey", "BadSignature", "Expired"):
            assert c[("grapevine_run_refusals", reason)] > 0, (name, reason, c)
    origin = per_node[world.agents[0].name]
    # discovery lies (answers in another node's name: refused against the frame's sender) and forged results
    for reason in ("SenderMismatch", "UnknownNode", "Malformed"):
        assert origin[("grapevine_run_refusals", reason)] > 0, (reason, origin)
