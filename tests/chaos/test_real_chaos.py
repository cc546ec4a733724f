"""Chaos with real agents: kill -9, restarts and a real partition while bundles are injected.

Twenty `grapevine agent` processes, each in its own network namespace, linked
through two bridges in a hub namespace (chaoslab.NetLab). A scripted sequence
kills agents with SIGKILL, restarts them on their data directories, cuts the
fleet in two and heals it, while signed bundles are injected from several
nodes, through the `grapevine inject` command and through the agent API,
including two writers of one bundle on the two sides of the cut and an agent
killed right after it acknowledged an injection. At the end every live agent
must hold the same store and have applied the newest version of every bundle:
the file each bundle manages, under that agent's --root, has the newest
content.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from grapevine.cli.localfleet import FAST_ENV, FleetKeys, LocalFleet, wait_for
from tests.chaos.chaoslab import PORT, NetLab, bundle_file, bundle_item, netns_unavailable

pytestmark = [pytest.mark.slow, pytest.mark.netns]

AGENTS = 20
SIDE_B = list(range(10, 20))  # the cut splits the fleet in halves
BUNDLES = ("chaos/a", "chaos/b", "chaos/c", "chaos/d")
MESH_TIMEOUT_S = 60  # 20 agents starting at once on 2 busy cores
SPREAD_TIMEOUT_S = 60  # one side of the cut carrying a bundle to all its nodes; a node whose links all crossed
# the cut first has to declare them dead (probe timeout 9 s) and repair from its passive view, slow on 2 busy cores
FINAL_TIMEOUT_S = 60  # after the heal: every store equal and every bundle applied


class Script:
    """The fleet, the network and what has been injected (the newest content per bundle)."""

    def __init__(self, fleet: LocalFleet, lab: NetLab, tmp_path) -> None:
        self.fleet = fleet
        self.lab = lab
        self.tmp = tmp_path
        self.agents = fleet.agents
        self.newest: dict[str, str] = {}
        self.log: list[str] = []
        self.faults = {"kill -9": 0, "restart": 0, "partition": 0, "heal": 0}
        self.injections = 0
        self._lock = threading.Lock()

    def inject(self, i: int, name: str, version: str, *, cli: bool = False) -> None:
        """Inject a new version of ``name`` at agent i; it is the newest once acknowledged."""
        agent = self.agents[i]
        content = f"{name} {version} via {agent.name}\n"
        if cli:
            path = self.tmp / f"{name.replace('/', '_')}-{version}.yaml"
            path.write_text(yaml.safe_dump({
                "bundle": name,
                "resources": [{"file": f"/etc/chaos/{name.replace('/', '_')}", "content": content}],
            }))
            out = json.loads(self.fleet.cli("inject", str(path), "--key", str(self.fleet.keys.author), "--json",
                                            agent=agent).stdout)
            assert out["injected"][0]["key"] == f"bundle/{name}"
        else:
            res = agent.client().post("/v1/inject", data=bundle_item(self.fleet.keys, name, content).encode())
            assert res["key"] == f"bundle/{name}", res
        with self._lock:
            self.newest[name] = content
            self.injections += 1
            self.log.append(f"inject {name} {version} at {agent.name}")

    def inject_all(self, jobs: list[tuple]) -> None:
        """Several injections at once (distinct bundles), each from its own thread."""
        errors: list[BaseException] = []

        def go(args: tuple, kw: dict) -> None:
            try:
                self.inject(*args, **kw)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(j[:3], j[3] if len(j) > 3 else {})) for j in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors

    def kill(self, i: int) -> None:
        self.agents[i].kill()
        self.faults["kill -9"] += 1
        self.log.append(f"kill -9 {self.agents[i].name}")

    def restart(self, i: int) -> None:
        self.agents[i].start()
        self.agents[i].wait_ready()
        self.faults["restart"] += 1
        self.log.append(f"restart {self.agents[i].name}")

    def live(self) -> list:
        return [a for a in self.agents if a.alive()]

    def holds(self, a, name: str) -> bool:
        p = bundle_file(a.root, name)
        return p.is_file() and p.read_text() == self.newest[name]

    def converged(self) -> bool:
        live = self.live()
        digests = {a.status()["store_digest"] for a in live}
        if len(digests) != 1:
            return False
        return all(self.holds(a, n) for a in live for n in self.newest)

    def describe(self) -> str:
        lines = []
        for a in self.live():
            st = a.status()
            wrong = [n for n in self.newest if not self.holds(a, n)]
            lines.append(f"{a.name}: digest {st['store_digest'][:12]} active {st['active']} wrong files {wrong}")
        return "\n".join(lines + self.log)


@pytest.mark.skipif(netns_unavailable() is not None, reason=netns_unavailable() or "")
def test_every_live_agent_applies_the_newest_bundles_after_kills_restarts_and_a_partition(tmp_path, chaos_record):
    fleet = LocalFleet(tmp_path, keys=FleetKeys.create(tmp_path / "keys"), preset=None, env=FAST_ENV)
    lab = NetLab(AGENTS)
    try:
        lab.up()
        for i in range(AGENTS):
            join = sorted({lab.address(0), lab.address(10), lab.address((i * 7 + 3) % AGENTS)} - {lab.address(i)})
            fleet.add(f"c{i}", port=PORT, host=lab.address(i), join=[f"{j}:{PORT}" for j in join], netns=lab.ns[i])
        fleet.up(*fleet.agents)
        s = Script(fleet, lab, tmp_path)
        wait_for(lambda: len({a.status()["store_digest"] for a in s.agents}) == 1
                 and all(a.status()["active"] > 0 for a in s.agents), MESH_TIMEOUT_S, "one mesh of 20 agents", interval=0.5)

        # 1. first versions of every bundle, from four nodes at once, two through the CLI
        s.inject_all([(0, "chaos/a", "v1", {"cli": True}), (6, "chaos/b", "v1"), (11, "chaos/c", "v1", {"cli": True}),
                      (17, "chaos/d", "v1")])
        # 2. two agents die; two bundles move on meanwhile
        s.kill(3)
        s.kill(7)
        s.inject_all([(1, "chaos/a", "v2"), (5, "chaos/b", "v2")])
        # 3. the fleet is cut in halves; each side writes; one bundle is written on both sides
        lab.split(SIDE_B)
        s.faults["partition"] += 1
        s.log.append("partition 0-9 | 10-19")
        s.inject_all([(2, "chaos/c", "v3"), (14, "chaos/d", "v3"), (4, "chaos/a", "v3a")])
        s.restart(3)  # back on side A while the cut holds
        s.kill(12)
        acked_ms = time.time_ns() // 1_000_000  # side A's write of chaos/a is stamped no later than this
        wait_for(lambda: time.time_ns() // 1_000_000 > acked_ms, 1, "the wall clock to pass side A's write")
        s.inject(15, "chaos/a", "v4b")  # later than side A's write: it must win everywhere
        side_a = [a for i, a in enumerate(s.agents) if i not in SIDE_B and a.alive()]
        wait_for(lambda: all(s.holds(a, "chaos/c") for a in side_a), SPREAD_TIMEOUT_S, "side A to apply chaos/c v3",
                 interval=0.5)
        assert not any(s.holds(a, "chaos/c") for a in s.agents if a.alive() and s.agents.index(a) in SIDE_B), \
            "chaos/c v3 crossed the cut"
        # 4. heal; the dead come back; an agent dies right after acknowledging an injection
        lab.heal()
        s.faults["heal"] += 1
        s.log.append("heal")
        s.restart(7)
        s.restart(12)
        s.inject(9, "chaos/b", "v4")
        s.kill(9)
        s.inject(13, "chaos/d", "v4", cli=True)
        s.kill(18)  # stays dead: the live ones must still agree
        s.restart(9)
        # 5. every live agent: same store, newest version of every bundle applied
        try:
            wait_for(s.converged, FINAL_TIMEOUT_S, "every live agent to hold and apply the newest bundles",
                     interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{s.describe()}") from None
        for a in s.live():
            rows = {b["name"]: b for b in a.client().get("/v1/bundles")["bundles"]}
            for name in BUNDLES:
                assert rows[name]["applied"] is True, (a.name, rows[name])
        assert len(s.live()) == AGENTS - 1
        faults = ", ".join(f"{k} {v}" for k, v in s.faults.items())
        chaos_record["real"].append(
            f"real-process chaos: {AGENTS} agents, {s.injections} injections, faults: {faults}; "
            f"{len(s.live())} live agents agree, newest of {len(BUNDLES)} bundles applied on each; violations 0"
        )
    finally:
        fleet.close()
        lab.close()
