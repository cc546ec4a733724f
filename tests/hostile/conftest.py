"""A mesh of honest agent processes and a hostile peer among them; figures for the session summary."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from grapevine.cli.demo import LocalMesh, local_mesh
from grapevine.cli.localfleet import wait_for
from tests.hostile import hostile_peer
from tests.hostile.hostile_peer import HostilePeer, scrape_metrics

# Modules on branches written before the tests became a package import this directory's helpers by
# bare name (`from hostile_peer import ...`, with the directory put on sys.path); so may a helper
# itself. These aliases keep them working without touching sys.path, hostile_peer's before anything
# else here is imported; remove them once nothing imports a bare name.
sys.modules.setdefault("hostile_peer", hostile_peer)
from tests.hostile import hostile_server  # noqa: E402 - after the alias its import may need

sys.modules.setdefault("hostile_server", hostile_server)

HONEST_NODES = 3
GENUINE = "site/motd"  # the bundle honest operators keep publishing during the attack

# what the summary prints: the honest nodes' /metrics deltas, and the hostile's own view
HOSTILE_REPORT: dict[str, Counter] = {}


def genuine_doc(version: int) -> dict:
    return {"bundle": GENUINE, "resources": [{"file": "/motd", "content": f"genuine v{version}\n"}]}


@dataclass
class World:
    mesh: LocalMesh
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

        return self.mesh.wait_until(done, timeout_s, f"every honest node to apply {GENUINE} v{version}")


def steady_metrics(mesh: LocalMesh, timeout_s: float = 20.0) -> dict[int, dict]:
    """Every agent's refusal counters once two scrapes 0.2 s apart agree (port -> counters)."""
    last: dict[str, dict] = {}

    def steady() -> dict[int, dict] | None:
        now = {a.port: scrape_metrics(a.port) for a in mesh.agents}
        same = last.get("scrape") == now
        last["scrape"] = now
        return now if same else None

    return wait_for(steady, timeout_s, "the refusal counters to stop moving", interval=0.2)


@pytest.fixture(scope="session")
def hostile_report() -> dict[str, Counter]:
    return HOSTILE_REPORT


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    with local_mesh(base / "mesh") as mesh:
        mesh.extra_env["GRAPEVINE_PEER_METRICS"] = "true"  # the attack is read from /metrics on the peer port
        for i in range(HONEST_NODES):
            mesh.add(f"honest{i}", tags={"role": "web"})
        mesh.start_all()
        mesh.wait_ready()
        mesh.wait_mesh()
        w = World(mesh=mesh, hostile=HostilePeer(mesh.netkey_path), base=base)
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
