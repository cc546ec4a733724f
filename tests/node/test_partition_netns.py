"""A real network partition: agents in their own network namespaces, two bridges, one link between them.

Topology (created and deleted by the test, as root):

    ns0 ─┐            ┌─ ns2
         brA ══link══ brB
    ns1 ─┘            └─ ns3

Cutting the link (both ends down) splits the mesh in two; each side gets a
different bundle; restoring the link must bring every store to the same
content within two anti-entropy intervals of the gossip core.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from grapevine.cli.localfleet import wait_for
from tests.node.bundles import pack_bundle

pytestmark = [pytest.mark.slow, pytest.mark.netns]

SUBNET = "10.213.77"  # private range used only inside the namespaces this test creates
PORT = 7946
AE_INTERVAL_MS = 1000  # anti-entropy interval for this test (the heal bound is two of these)
HEAL_SLACK_S = 0.5  # process scheduling on a 2-core machine running 4 agents and the test

_why_not = None
if os.geteuid() != 0:
    _why_not = "network namespaces need root"
elif shutil.which("ip") is None:
    _why_not = "the `ip` command (iproute2) is not installed"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=10)


_READ_URL = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"


def _sync_rounds(agent) -> float:
    """Anti-entropy rounds ``agent`` has started (SyncRoot messages sent), from its /metrics, read inside its
    network namespace: the test's own namespace has no address on the bridges."""
    out = subprocess.run(["ip", "netns", "exec", agent.netns, sys.executable, "-c", _READ_URL,
                          f"http://{agent.address}/metrics"], capture_output=True, text=True, timeout=30, check=True)
    return sum(float(value) for key, _, value in (ln.rpartition(" ") for ln in out.stdout.splitlines())
               if key == 'grapevine_messages_sent_total{type="SyncRoot"}')


class Net:
    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 100000:05d}"
        self.ns = [f"gvp{tag}n{i}" for i in range(n)]
        self.br = [f"gvb{tag}a", f"gvb{tag}b"]
        self.link = (f"gvl{tag}a", f"gvl{tag}b")
        self.hosts = [f"gvh{tag}{i}" for i in range(n)]

    def up(self) -> None:
        for br in self.br:
            _ip("link", "add", br, "type", "bridge")
            _ip("link", "set", br, "up")
        _ip("link", "add", self.link[0], "type", "veth", "peer", "name", self.link[1])
        _ip("link", "set", self.link[0], "master", self.br[0])
        _ip("link", "set", self.link[1], "master", self.br[1])
        self.restore()
        half = len(self.ns) // 2
        for i, (ns, host) in enumerate(zip(self.ns, self.hosts)):
            _ip("netns", "add", ns)
            _ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", host, "master", self.br[0 if i < half else 1])
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self) -> None:
        for end in self.link:
            _ip("link", "set", end, "down")

    def restore(self) -> None:
        for end in self.link:
            _ip("link", "set", end, "up")

    def down(self) -> None:
        for ns in self.ns:
            _ip("netns", "del", ns, check=False)
        for dev in (*self.hosts, self.link[0], *self.br):
            _ip("link", "del", dev, check=False)


@pytest.mark.skipif(_why_not is not None, reason=_why_not or "")
def test_partitioned_halves_agree_within_two_antientropy_intervals_after_heal(fleet):
    net = Net(4)
    try:
        net.up()
        env = {"GRAPEVINE_GOSSIP": f"antientropy_interval_ms={AE_INTERVAL_MS}"}
        agents = []
        for i, ns in enumerate(net.ns):
            # each node may join through one node on its own side and one across
            same, across = (i ^ 1) + 1, (i + 2) % 4 + 1
            join = [f"{SUBNET}.{same}:{PORT}", f"{SUBNET}.{across}:{PORT}"]
            agents.append(fleet.add(f"p{i}", port=PORT, host=f"{SUBNET}.{i + 1}", join=join, netns=ns, env=env))
        fleet.up(*agents)
        left, right = agents[:2], agents[2:]
        digest = lambda a: a.status()["store_digest"]  # noqa: E731
        partner = {a.name: agents[i ^ 1].node_id for i, a in enumerate(agents)}
        knows = lambda a: partner[a.name] in (m := a.client().get("/v1/members"))["active"] + m["passive"]  # noqa: E731
        wait_for(lambda: len({digest(a) for a in agents}) == 1 and all(knows(a) for a in agents), 20,
                 "one mesh where every node knows the node on its own side")

        net.cut()
        left[0].client().post("/v1/inject", data=pack_bundle(fleet.keys, "left/only", None, {"/etc/left": "L\n"}).encode())
        right[1].client().post("/v1/inject", data=pack_bundle(fleet.keys, "right/only", None, {"/etc/right": "R\n"}).encode())
        wait_for(lambda: all((a.root / "etc/left").is_file() for a in left), 20, "left bundle on the left")
        wait_for(lambda: all((a.root / "etc/right").is_file() for a in right), 20, "right bundle on the right")
        # several anti-entropy rounds on every node while cut: nothing crosses
        cut_at = [_sync_rounds(a) for a in agents]
        wait_for(lambda: all(_sync_rounds(a) >= n + 3 for a, n in zip(agents, cut_at)), 20 * AE_INTERVAL_MS / 1000,
                 "three anti-entropy rounds on every node while cut", interval=AE_INTERVAL_MS / 1000)
        assert not any((a.root / "etc/right").exists() for a in left), "the cut let traffic through"
        assert not any((a.root / "etc/left").exists() for a in right), "the cut let traffic through"
        assert len({digest(a) for a in agents}) == 2

        net.restore()
        t0 = time.monotonic()
        wait_for(lambda: len({digest(a) for a in agents}) == 1, 30, "identical stores after heal", interval=0.05)
        healed_s = time.monotonic() - t0
        print(f"stores identical {healed_s:.2f} s after the link came back")
        bound = 2 * AE_INTERVAL_MS / 1000 + HEAL_SLACK_S
        assert healed_s <= bound, f"stores agreed {healed_s:.2f} s after the heal (bound {bound:.2f} s)"
        for a in agents:
            wait_for(lambda a=a: (a.root / "etc/left").is_file() and (a.root / "etc/right").is_file(), 10,
                     f"both bundles applied on {a.name}")
    finally:
        fleet.close(grace=0)
        net.down()
