"""Facts: what a node knows about itself, read once per converge.

``gather(tags, name)`` returns a plain dict (JSON- and msgpack-friendly):

    hostname, name, os, os_version, os_codename, arch, cpu_count,
    memory_mb, addresses (list of IPv4/IPv6 strings, loopback excluded),
    kernel, + every tag from the agent config (tags win over nothing: a tag
    may not shadow a gathered fact, which would let a config file lie about
    the OS to a selector).

Everything here is read from the kernel or /etc, never from a network
service, so gathering takes a few milliseconds and works offline. Facts
describe the machine the converge runs on, also when it converges a tree
under ``--root``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import platform
import re
import socket
from pathlib import Path
from typing import Mapping

from grapevine.gossip.errors import ConfigError

log = logging.getLogger("grapevine.policy")

__all__ = ["gather", "parse_tags", "GATHERED"]

GATHERED = (
    "hostname", "name", "os", "os_version", "os_codename", "arch",
    "cpu_count", "memory_mb", "addresses", "kernel",
)
_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Tags are operator-written labels that travel in selectors; keep them short.
MAX_TAG_VALUE = 256


def _os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out: dict[str, str] = {}
    for candidate in (path, Path("/usr/lib/os-release")):
        try:
            text = candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().strip("'\"")
        break
    return out


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def _ipv4_addresses() -> list[str]:
    out: list[str] = []
    try:
        import fcntl
        import struct
    except ImportError:  # pragma: no cover - not Linux
        return out
    SIOCGIFADDR = 0x8915  # Linux ioctl: read an interface's IPv4 address
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
            except OSError:
                continue
            out.append(socket.inet_ntoa(res[20:24]))
    return out


def _ipv6_addresses() -> list[str]:
    out: list[str] = []
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                raw = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError, IndexError):
        pass
    return out


def _addresses() -> list[str]:
    seen: list[str] = []
    for addr in _ipv4_addresses() + _ipv6_addresses():
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback or addr in seen:
            continue
        seen.append(addr)
    return seen


def parse_tags(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["role=web", "env=prod"]`` -> dict; ConfigError on a bad pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not _TAG_KEY.match(key):
            raise ConfigError(f"bad tag {pair!r}: expected key=value with a key like role or site.zone")
        if len(value) > MAX_TAG_VALUE:
            raise ConfigError(f"tag {key!r} is longer than {MAX_TAG_VALUE} characters")
        out[key] = value.strip()
    return out


def gather(tags: Mapping[str, str] | None = None, name: str | None = None) -> dict:
    """Read this machine's facts; ``tags`` come from the agent config."""
    rel = _os_release()
    hostname = socket.gethostname()
    facts: dict = {
        "hostname": hostname,
        "name": name or hostname,
        "os": rel.get("ID", platform.system().lower()),
        "os_version": rel.get("VERSION_ID", platform.release()),
        "os_codename": rel.get("VERSION_CODENAME", ""),
        "arch": platform.machine(),
        "cpu_count": os.cpu_count() or 1,
        "memory_mb": _memory_mb(),
        "addresses": _addresses(),
        "kernel": platform.release(),
    }
    for key, value in (tags or {}).items():
        if not _TAG_KEY.match(str(key)):
            raise ConfigError(f"bad tag name {key!r}")
        if key in GATHERED:
            raise ConfigError(f"tag {key!r} would shadow the gathered fact of that name")
        facts[str(key)] = str(value)
    log.debug("facts gathered for %s: %s", facts["name"], sorted(facts))
    return facts
