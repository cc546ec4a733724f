"""A mesh of honest agent processes and a hostile peer among them; figures for the session summary."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grapevine.cli.localfleet import LocalFleet, wait_for
from tests.hostile.hostile_peer import HostilePeer, steady_metrics

HONEST_NODES = 3
GENUINE = "site/motd"  # the bundle honest operators keep publishing during the attack

# what the summary prints: the honest nodes' /metrics deltas, and the hostile's own view
HOSTILE_REPORT: dict[str, Counter] = {}


def genuine_doc(version: int) -> dict:
    return {"bundle": GENUINE, "resources": [{"file": "/motd", "content": f"genuine v{version}\n"}]}


@dataclass
class World:
    mesh: LocalFleet
    hostile: HostilePeer
    base: Path
    baseline: dict[int, dict] = field(default_factory=dict)  # port -> metrics before the attack
    genuine: dict[int, object] = field(default_factory=dict)  # version -> SignedItem injected

    @property
    def agents(self):
        return self.mesh.agents

    def inject(self, version: int, via: int = 0):
        _, item = self.mesh.inject(self.agents[via], genuine_doc(version))
        self.genuine[version] = item
        return item

    def wait_applied(self, version: int, timeout_s: float = 45.0) -> float:
        want = f"genuine v{version}\n"

        def done() -> bool:
            return all((a.root / "motd").exists() and (a.root / "motd").read_text() == want for a in self.agents)

        t0 = time.monotonic()
        wait_for(done, timeout_s, f"every honest node to apply {GENUINE} v{version}")
        return time.monotonic() - t0


@pytest.fixture(scope="session")
def hostile_report() -> dict[str, Counter]:
    return HOSTILE_REPORT


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    # the attack is read from /metrics on the peer port
    with LocalFleet(base / "mesh", env={"GRAPEVINE_PEER_METRICS": "true"}) as mesh:
        for i in range(HONEST_NODES):
            mesh.add(f"honest{i}", tags={"role": "web"})
        mesh.start()
        mesh.wait_ready()
        mesh.wait_linked()
        w = World(mesh=mesh, hostile=HostilePeer(mesh.keys.netkey), base=base)
        w.hostile.ids = {a.port: a.node_id for a in mesh.agents}
        w.inject(1)
        w.wait_applied(1)
        w.baseline = steady_metrics(mesh)  # the genuine broadcast has finished: the baseline stays put
        yield w


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not HOSTILE_REPORT:
        return
    tr = terminalreporter
    tr.section("hostile node: refused attempts by reason")
    for title, counts in HOSTILE_REPORT.items():
        tr.write_line(f"{title}:")
        for key, n in sorted(counts.items(), key=lambda kv: (str(kv[0]))):
            label = "/".join(key) if isinstance(key, tuple) else str(key)
            tr.write_line(f"  {label:<48} {n:>6}")
