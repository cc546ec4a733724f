"""Helpers for chaos and load tests with real agents: keys, a namespaced network, bundles.

``NetLab`` builds, as root, one network namespace per agent plus a hub
namespace holding two bridges. Every agent's link ends in the hub; putting a
link on bridge A or bridge B decides which side of a partition the agent is
on, and moving every link back to A heals the cut. Nothing is created in the
host's own namespace, and ``close`` deletes every namespace it made (their
links go with them), also after a failure.

Agents run through the local launcher (``grapevine.cli.localfleet``), so
every process is started with Popen, recorded, and ended by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from grapevine.cli.localfleet import FleetKeys
from tests.node.bundles import pack_bundle

SUBNET = "10.231.7"  # private addresses, only inside the namespaces a test creates
PORT = 7946
IP_TIMEOUT_S = 10  # one `ip` call never takes longer


def netns_unavailable() -> str | None:
    """Why namespaced tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


class NetLab:
    """n agent namespaces joined through a hub namespace with bridges A and B."""

    def __init__(self, n: int) -> None:
        tag = f"{os.getpid() % 100000:05d}"
        self.hub = f"gvc{tag}hub"
        self.ns = [f"gvc{tag}n{i}" for i in range(n)]
        self.side = [0] * n
        self.made: list[str] = []

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def up(self) -> None:
        _ip("netns", "add", self.hub)
        self.made.append(self.hub)
        for br in ("brA", "brB"):
            _ip("-n", self.hub, "link", "add", br, "type", "bridge")
            _ip("-n", self.hub, "link", "set", br, "up")
        for i, ns in enumerate(self.ns):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", f"v{i}", "master", "brA")
            _ip("-n", self.hub, "link", "set", f"v{i}", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def split(self, side_b: list[int]) -> None:
        """Agents in ``side_b`` go to bridge B, every other one to bridge A."""
        for i in range(len(self.ns)):
            want = 1 if i in side_b else 0
            if self.side[i] != want:
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", "brB" if want else "brA")
                self.side[i] = want

    def heal(self) -> None:
        self.split([])

    def close(self) -> None:
        for ns in reversed(self.made):
            _ip("netns", "del", ns, check=False)
        self.made.clear()

    def __enter__(self) -> NetLab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bundle_item(keys: FleetKeys, name: str, content: str, now_ms: int | None = None) -> Any:
    """A signed bundle managing one file, /etc/chaos/<name>, whose content names the version."""
    return pack_bundle(keys, name, None, {f"/etc/chaos/{name.replace('/', '_')}": content}, now_ms)


def bundle_file(root: Path, name: str) -> Path:
    return root / "etc" / "chaos" / name.replace("/", "_")


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
