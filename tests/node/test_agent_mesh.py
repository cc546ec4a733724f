"""Real agents on loopback: dissemination, targeting, durability, network keys, bad input."""

from __future__ import annotations

import math
import os
import random
import stat
import threading
import time

import msgpack
import pytest


from grapevine.cli.client import AgentRefused
from grapevine.cli.localfleet import free_ports, wait_for
from grapevine.node.frames import pack_envelope
from grapevine.node.netkey import KeyRing, read_key_file
from grapevine.policy.keys import SigningKey
from grapevine.node.state import State
from tests.node.bundles import pack_bundle, write_bundle

pytestmark = pytest.mark.slow


def _digests(agents) -> set[str]:
    return {a.status()["store_digest"] for a in agents}


def _holds(agent, name: str) -> bool:
    return any(b["name"] == name for b in agent.client().get("/v1/bundles")["bundles"])


def test_bundle_injected_anywhere_is_applied_on_every_targeted_node_and_only_there(fleet, tmp_path):
    ports = free_ports(10)
    agents = []
    for i, port in enumerate(ports):
        join = [f"127.0.0.1:{ports[0]}"] if i else []
        if i > 1:
            join.append(f"127.0.0.1:{ports[random.Random(i).randrange(1, i)]}")
        role = "web" if i % 2 == 0 else "db"
        agents.append(fleet.add(f"n{i}", port=port, join=join, tags={"role": role}))
    fleet.up(*agents)
    web = [a for i, a in enumerate(agents) if i % 2 == 0]
    db = [a for i, a in enumerate(agents) if i % 2 == 1]

    # inject through the CLI on a db node: it carries the bundle but does not apply it
    site = write_bundle(tmp_path / "site.yaml", "web/motd", "role=web", {"/etc/motd": "hello web\n"})
    out = fleet.cli_json("inject", str(site), "--key", str(fleet.keys.author), agent=agents[7])
    assert out["injected"][0]["key"] == "bundle/web/motd"

    for a in web:
        wait_for(lambda a=a: (a.root / "etc/motd").is_file(), 60, f"/etc/motd on {a.name}")
        assert (a.root / "etc/motd").read_text() == "hello web\n"
    wait_for(lambda: all(_holds(a, "web/motd") for a in agents), 20, "every node to hold web/motd")

    # the other way round, injected on a web node
    fleet.cli("inject", str(write_bundle(tmp_path / "db.yaml", "db/conf", "role=db", {"/etc/db.conf": "db\n"})),
              "--key", str(fleet.keys.author), agent=agents[2])
    for a in db:
        wait_for(lambda a=a: (a.root / "etc/db.conf").is_file(), 30, f"/etc/db.conf on {a.name}")
    wait_for(lambda: len(_digests(agents)) == 1, 20, "identical stores")
    for a in db:
        assert not (a.root / "etc/motd").exists(), f"{a.name} is not targeted by web/motd"
    for a in web:
        assert not (a.root / "etc/db.conf").exists(), f"{a.name} is not targeted by db/conf"
    rows = {b["name"]: b for b in fleet.cli_json("bundles", agent=db[0])["bundles"]}
    assert rows["web/motd"]["targeted"] is False and rows["db/conf"]["applied"] is True
    st = fleet.cli_json("status", agent=web[0])
    assert st["status"] == "ok" and st["last_converge"]["failed"] == 0
    m = web[0]
    assert m.metric("grapevine_items") == 3  # the trust root and two bundles
    assert m.metric("grapevine_admissions_total", 'origin="peer"') >= 2
    assert m.metric("grapevine_messages_received_total", 'type="Push"') >= 1
    assert m.metric("grapevine_bytes_sent_total") > 0
    assert m.metric("grapevine_converge_duration_seconds_count", 'trigger="bundle"') >= 1
    assert m.metric("grapevine_active_peers") >= 1


def test_killed_agent_keeps_every_acknowledged_item_then_catches_up_and_converges(fleet):
    ports = free_ports(4)
    agents = [fleet.add(f"k{i}", port=p, join=[f"127.0.0.1:{ports[0]}"] if i else [f"127.0.0.1:{ports[1]}"])
              for i, p in enumerate(ports)]
    fleet.up(*agents)
    victim, other = agents[2], agents[1]
    # an established member: it has linked to a peer (and stored it) before it is killed
    wait_for(lambda: victim.status()["active"] > 0, 30, "the victim to link to a peer")
    acked: list[str] = []
    stop = threading.Event()

    def inject_loop() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            item = pack_bundle(fleet.keys, f"app/b{n}", None, {f"/srv/b{n}": f"{n}\n"})
            try:
                victim.client(2).post("/v1/inject", data=item.encode())
            except Exception:
                return  # the agent died under us: this one was not acknowledged
            acked.append(f"bundle/app/b{n}")
            n += 1

    t = threading.Thread(target=inject_loop)
    t.start()
    try:
        wait_for(lambda: len(acked) >= 25, 30, "25 acknowledged injections", interval=0.02)
        victim.kill()  # SIGKILL while injections are still arriving
    finally:
        stop.set()
        t.join(10)
    assert not victim.alive()

    st = State(victim.data_dir)  # straight from the file the dead agent left
    held = {i.key for i in st.load_items()}
    st.close()
    missing = [k for k in acked if k not in held]
    assert not missing, f"acknowledged but lost: {missing}"

    # while it is down the rest of the mesh moves on
    for n in range(3):
        other.client().post("/v1/inject", data=pack_bundle(fleet.keys, f"late/l{n}", None, {f"/srv/late{n}": "x\n"}).encode())
    # restarted without any --join: it rejoins through the peers it had stored
    victim.join = []
    assert "--join" not in victim.command()
    victim.start()
    victim.wait_ready()
    live = [a for a in agents]
    wait_for(lambda: len(_digests(live)) == 1, 30, "the restarted agent to catch up")
    for n in range(3):
        wait_for(lambda n=n: (victim.root / f"srv/late{n}").is_file(), 20, f"late{n} applied after restart")
    for key in acked:
        name = key.removeprefix("bundle/app/")
        wait_for(lambda name=name: (victim.root / "srv" / name).is_file(), 20, f"{key} applied after restart")


def test_node_with_the_wrong_network_key_is_never_admitted_and_learns_nothing(fleet, tmp_path):
    from grapevine.node.netkey import generate_key, write_key_file

    ports = free_ports(4)
    good = [fleet.add(f"g{i}", port=p, join=[f"127.0.0.1:{ports[0]}"] if i else []) for i, p in enumerate(ports[:3])]
    wrong_key = tmp_path / "wrong.netkey"
    write_key_file(wrong_key, generate_key())
    intruder = fleet.add("intruder", port=ports[3], join=[f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"],
                         netkey=wrong_key)
    no_key = fleet.add("nokey", port=free_ports(1)[0], join=[f"127.0.0.1:{ports[0]}"], netkey=None)
    fleet.up(*good, intruder, no_key)
    good[1].client().post("/v1/inject", data=pack_bundle(fleet.keys, "secret/cfg", None, {"/etc/secret": "s\n"}).encode())
    wait_for(lambda: all((a.root / "etc/secret").is_file() for a in good), 30, "the bundle on the keyed nodes")
    # the outsiders have tried, and been turned away, several times over (instead of a fixed sleep)
    refused = lambda reason: sum(a.metric("grapevine_bad_frames_total", f'reason="{reason}"') for a in good)  # noqa: E731
    wait_for(lambda: refused("UnknownNetworkKey") >= 3 and refused("Unsealed") >= 3, 30,
             "several refused attempts by each outsider")
    for outsider in (intruder, no_key):
        st = outsider.status()
        assert st["active"] == 0 and st["passive"] == 0
        assert not _holds(outsider, "secret/cfg")
        assert not (outsider.root / "etc/secret").exists()
        assert outsider.metric("grapevine_messages_received_total") == 0
    for a in good:
        members = a.client().get("/v1/members")
        assert not any(p.startswith(("intruder@", "nokey@")) for p in members["active"] + members["passive"])
    refused = sum(a.metric("grapevine_bad_frames_total", 'reason="UnknownNetworkKey"') for a in good)
    unsealed = sum(a.metric("grapevine_bad_frames_total", 'reason="Unsealed"') for a in good)
    assert refused > 0 and unsealed > 0


def test_malformed_oversized_and_garbage_frames_get_4xx_are_counted_and_the_daemon_keeps_serving(fleet):
    import urllib.request

    port = free_ports(1)[0]
    a = fleet.add("solo", port=port, join=[])
    fleet.up(a)
    ring = KeyRing()
    ring.install(read_key_file(fleet.keys.netkey))
    stranger = SigningKey.generate()
    env = lambda body: ring.seal(pack_envelope(stranger, "x@127.0.0.1:1", a.node_id, body))  # noqa: E731
    cases = [
        (b"", 400, "NotAFrame"),
        (b'{"hello": "json"}', 400, "NotAFrame"),
        (b"G\x02" + os.urandom(64), 403, "UnknownNetworkKey"),
        (b"G\x00" + bytes(64), 403, "Unsealed"),
        (ring.seal(b"\xc1\xc1 not msgpack"), 400, "BadEnvelope"),
        (ring.seal(msgpack.packb({"not": "a list"})), 400, "BadEnvelope"),
        (env(b"\x92\xff\xff garbage msgpack"), 400, "BadMessage"),
        (env(msgpack.packb([1, 999, "no such message type"])), 400, "BadMessage"),
        (b"G\x02" + b"\0" * (10 * 1024 * 1024), 413, "TooLarge"),
    ]
    for body, status, reason in cases:
        req = urllib.request.Request(f"http://{a.address}/v1/gossip", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                got = r.status
        except urllib.error.HTTPError as e:
            got = e.code
        except urllib.error.URLError as e:
            # the peer port answers an oversized body at its headers and closes without reading
            # the body: a client still writing it sees the reset (the refusal is counted below)
            assert reason == "TooLarge" and isinstance(e.reason, (ConnectionResetError, BrokenPipeError)), e
            got = status
        assert got == status, f"{reason}: got HTTP {got}"
    for _, _, reason in cases:
        assert a.metric("grapevine_bad_frames_total", f'reason="{reason}"') >= 1, reason
    # peer routes refuse the same way
    req = urllib.request.Request(f"http://{a.address}/v1/peer/hello", data=b"junk", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400
    # still serving, nothing stored from any of it
    assert a.http_get("/health")[0] == 200
    assert a.alive() and a.status()["items"] == 1  # only its trust root
    assert b"grapevine_bad_frames_total" in a.http_get("/metrics")[1]


def test_network_key_rotates_on_running_agents_without_restart(fleet, tmp_path):
    ports = free_ports(2)
    a = fleet.add("ra", port=ports[0], join=[])
    b = fleet.add("rb", port=ports[1], join=[f"127.0.0.1:{ports[0]}"])
    fleet.up(a, b)
    wait_for(lambda: a.status()["active"] == 1 and b.status()["active"] == 1, 20, "a and b linked")
    new = tmp_path / "new.netkey"
    new_id = fleet.cli("netkey", "gen", "--out", str(new)).stdout.strip()
    old_id = a.status()["network_key"]
    for x in (a, b):
        fleet.cli("netkey", "install", str(new), agent=x)
    fleet.cli("netkey", "use", new_id, agent=a)  # a now seals with the new key, b still with the old one
    a.client().post("/v1/inject", data=pack_bundle(fleet.keys, "rot/one", None, {"/etc/one": "1\n"}).encode())
    wait_for(lambda: (b.root / "etc/one").is_file(), 20, "delivery during rotation")
    fleet.cli("netkey", "use", new_id, agent=b)
    for x in (a, b):
        res = fleet.cli("netkey", "remove", old_id, agent=x)
        assert old_id not in res.stdout
        keys = fleet.cli_json("netkey", "list", agent=x)["keys"]
        assert keys == [{"key_id": new_id, "primary": True}]
    b.client().post("/v1/inject", data=pack_bundle(fleet.keys, "rot/two", None, {"/etc/two": "2\n"}).encode())
    wait_for(lambda: (a.root / "etc/two").is_file(), 20, "delivery after rotation")
    bad = fleet.cli("netkey", "remove", new_id, agent=a, check=False)
    assert bad.returncode == 2 and "KeyInUse" in bad.stderr
    # SIGTERM: b leaves the mesh (a drops it at once, no failure timeout) and exits 0 within its drain bound
    t0 = time.monotonic()
    assert b.stop(grace=10) == 0
    assert time.monotonic() - t0 < 5
    wait_for(lambda: a.status()["active"] == 0, 3, "a to drop the leaving b", interval=0.05)


def test_rollback_reinjects_old_content_as_a_new_version(fleet, tmp_path):
    ports = free_ports(2)
    a = fleet.add("ha", port=ports[0], join=[])
    b = fleet.add("hb", port=ports[1], join=[f"127.0.0.1:{ports[0]}"])
    fleet.up(a, b)
    site = tmp_path / "site.yaml"
    for text in ("one\n", "two\n"):
        write_bundle(site, "app/conf", None, {"/etc/app.conf": text})
        fleet.cli("inject", str(site), "--key", str(fleet.keys.author), agent=a)
        wait_for(lambda text=text: (b.root / "etc/app.conf").is_file() and (b.root / "etc/app.conf").read_text() == text,
                 20, f"app.conf = {text!r} on b")
    hist = fleet.cli_json("history", "app/conf", agent=b)["versions"]
    assert len(hist) == 2 and hist[1]["current"]
    out = fleet.cli_json("rollback", "app/conf", "--to", "#1", "--key", str(fleet.keys.author), agent=b)
    assert out["rolled_back_to"] == hist[0]["version"]
    for x in (a, b):
        wait_for(lambda x=x: (x.root / "etc/app.conf").read_text() == "one\n", 20, f"rolled back on {x.name}")
    hist = fleet.cli_json("history", "app/conf", agent=a)["versions"]
    assert len(hist) == 3 and hist[2]["current"]
    refused = fleet.cli("rollback", "app/conf", "--to", "99.0.x", "--key", str(fleet.keys.author), agent=a, check=False)
    assert refused.returncode == 2
    # `grapevine converge` without --local goes through the agent: already converged, nothing changes
    report = fleet.cli_json("converge", agent=a)
    assert report["changed"] == 0 and report["failed"] == 0 and report["node"] == a.node_id
    (a.root / "etc/app.conf").write_text("drifted\n")
    assert fleet.cli_json("converge", "--dry-run", agent=a)["changed"] == 1  # dry run: reported, not done
    assert (a.root / "etc/app.conf").read_text() == "drifted\n"
    assert fleet.cli_json("converge", agent=a)["changed"] == 1
    assert (a.root / "etc/app.conf").read_text() == "one\n"
    assert fleet.cli_json("members", agent=a)["active"] == [b.node_id]


BURST = 12  # bundles injected back to back
BURST_DEBOUNCE_MS = 3000  # longer than the whole burst takes to inject, even on a loaded machine
BURST_APPLIED_S = 60  # a bound on a few converges of 12 small bundles on a loaded machine, not a figure


def test_lone_agent_reports_stale_serves_private_api_and_exits_cleanly_on_sigterm(fleet, tmp_path):
    port = free_ports(1)[0]
    # The debounce window is longer than the burst takes to inject, so what is pinned (bundles arriving within
    # one window converge together) does not depend on how fast a busy machine serves the injections.
    env = {"GRAPEVINE_STALE_AFTER_S": "0.5", "GRAPEVINE_DRAIN_TIMEOUT_S": "1",
           "GRAPEVINE_CONVERGE_DEBOUNCE_MS": str(BURST_DEBOUNCE_MS)}
    a = fleet.add("lone", port=port, join=[], env=env, extra=["--log-format", "json"])
    fleet.up(a)
    assert stat.S_IMODE(os.stat(a.socket).st_mode) == 0o600
    st = wait_for(lambda: (s := a.status())["stale"] and s, 10, "stale status")
    assert st["status"].startswith("stale since ")
    # a burst of bundles converges in a few debounced converges, not one per bundle
    items = [pack_bundle(fleet.keys, f"burst/b{n}", None, {f"/srv/b{n}": "x\n"}) for n in range(BURST)]
    t0 = time.monotonic()
    for item in items:
        a.client().post("/v1/inject", data=item.encode())
    injected_s = time.monotonic() - t0
    wait_for(lambda: all((a.root / f"srv/b{n}").is_file() for n in range(BURST)), BURST_APPLIED_S, "the burst applied")
    reports = a.client().get("/v1/reports?limit=50")["reports"]
    # at most one converge per debounce window (plus the one at start), never one per bundle
    windows = math.ceil(injected_s * 1000 / BURST_DEBOUNCE_MS)
    assert 1 <= len(reports) <= 2 + windows and len(reports) < BURST, (len(reports), injected_s)
    assert set(reports[0]["report"]["versions"]) == {f"burst/b{n}" for n in range(BURST)}
    # a refused injection: signed by a key the trust root does not know
    from grapevine.policy.bundle import Bundle, pack
    from grapevine.policy.keys import SigningKey

    stranger = pack(Bundle.from_document({"bundle": "x/y", "resources": []}, "t"), SigningKey.generate(), time.time_ns() // 10**6)
    with pytest.raises(AgentRefused) as err:
        a.client().post("/v1/inject", data=stranger.encode())
    assert err.value.error == "UnknownKey"
    assert a.metric("grapevine_refusals_total", 'reason="UnknownKey"') == 1
    t0 = time.monotonic()
    assert a.stop(grace=10) == 0
    assert time.monotonic() - t0 < 5
    lines = a.log_path.read_text().splitlines()
    import json

    docs = [json.loads(line) for line in lines if line.startswith("{")]
    assert docs and all(d["node"] == "lone" for d in docs)
    assert any("stopped" in d["msg"] for d in docs)
    assert not os.path.exists(a.socket)


def test_rotated_trust_root_spreads_by_gossip_and_changes_who_may_publish(fleet, tmp_path):
    from grapevine.policy.keys import SigningKey
    from grapevine.policy.trust_files import build_root, read_item_file, rotate, write_item_file

    ports = free_ports(2)
    a = fleet.add("ta", port=ports[0], join=[])
    b = fleet.add("tb", port=ports[1], join=[f"127.0.0.1:{ports[0]}"])
    fleet.up(a, b)
    alice = fleet.keys.author_key
    bob = SigningKey.generate()
    bob.save(tmp_path / "bob.key")
    now = time.time_ns() // 10**6
    new_root = build_root(serial=2, now_ms=now, expires_days=30, admins=[alice.public], threshold=1,
                          publishers=[(bob.public, "*")])  # alice stays admin but may no longer publish
    write_item_file(tmp_path / "root2.gv", rotate(read_item_file(fleet.keys.trust), new_root, [alice], now))
    fleet.cli("inject", str(tmp_path / "root2.gv"), agent=a)
    wait_for(lambda: b.status()["trust_root_serial"] == 2, 20, "root serial 2 on b")
    site = write_bundle(tmp_path / "s.yaml", "svc/x", None, {"/etc/x": "x\n"})
    refused = fleet.cli("inject", str(site), "--key", str(fleet.keys.author), agent=b, check=False)
    assert refused.returncode == 2 and "OutOfScope" in refused.stderr
    fleet.cli("inject", str(site), "--key", str(tmp_path / "bob.key"), agent=b)
    wait_for(lambda: (a.root / "etc/x").is_file(), 20, "bob's bundle applied on a")


def test_periodic_converge_puts_back_a_file_that_drifted(fleet, tmp_path):
    a = fleet.add("drift", port=free_ports(1)[0], join=[],
                  env={"GRAPEVINE_CONVERGE_INTERVAL_S": "0.5", "GRAPEVINE_CONVERGE_SPLAY_S": "0.2"})
    fleet.up(a)
    a.client().post("/v1/inject", data=pack_bundle(fleet.keys, "d/motd", None, {"/etc/motd": "managed\n"}).encode())
    wait_for(lambda: (a.root / "etc/motd").is_file(), 10, "the bundle applied")
    (a.root / "etc/motd").write_text("hand edit\n")
    wait_for(lambda: (a.root / "etc/motd").read_text() == "managed\n", 10, "the drift corrected", interval=0.05)
    triggers = {r["trigger"] for r in a.client().get("/v1/reports?limit=50")["reports"]}
    assert "timer" in triggers


def test_agent_refuses_a_busy_port_and_a_data_dir_in_use_with_exit_status_2(fleet):
    a = fleet.add("first", port=free_ports(1)[0], join=[])
    fleet.up(a)
    busy = fleet.add("busy", port=a.port, join=[])  # the same port, its own data dir
    same_dir = fleet.add("twin", port=free_ports(1)[0], join=[])
    same_dir.data_dir = a.data_dir  # another process on the first agent's data dir
    for x, message in ((busy, "bind: cannot listen"), (same_dir, "another agent is running")):
        x.start()
        assert x.proc.wait(timeout=30) == 2
        assert message in x.log_path.read_text()
    assert a.alive() and a.status()["node"] == a.node_id


def test_a_node_joins_through_every_contact_so_groups_that_formed_apart_merge(fleet):
    """Two pairs start apart; a fifth node lists one of each as contacts and bridges them.

    Joining through one random contact would put it in one group only, and a
    bundle injected in the other group would never reach the first (the
    groups' views hold only each other).
    """
    ports = free_ports(5)
    a, b = fleet.add("ga", port=ports[0], join=[]), fleet.add("gb", port=ports[1], join=[f"127.0.0.1:{ports[0]}"])
    c, d = fleet.add("gc", port=ports[2], join=[]), fleet.add("gd", port=ports[3], join=[f"127.0.0.1:{ports[2]}"])
    fleet.up(a, b, c, d)
    wait_for(lambda: all(x.status()["active"] > 0 for x in (a, b, c, d)), 30, "two pairs linked")
    e = fleet.add("ge", port=ports[4], join=[f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[3]}"])
    fleet.up(e)
    wait_for(lambda: e.status()["active"] >= 2, 30, "the bridge linked to both groups")
    b.client().post("/v1/inject", data=pack_bundle(fleet.keys, "bridge/x", None, {"/srv/x": "x\n"}).encode())
    wait_for(lambda: all(_holds(x, "bridge/x") for x in (a, c, d, e)), 30, "the bundle in both groups")
