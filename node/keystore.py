"""The fleet network keys installed on this node, kept in its state database.

The ring (node/netkey.py) seals and opens frames; this module decides which
keys are in it across restarts: the keys stored, the one in the config file
(unless that key was removed from this node on purpose), which one seals, and
the ids removed, so a removed key never comes back from the config file.
The local API's key routes call ``install``, ``use`` and ``remove``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from .netkey import KeyRing, key_id, read_key_file

log = logging.getLogger("grapevine.node")


class KeyTable(Protocol):
    """Where the keys persist (node/state.py)."""

    def netkeys(self) -> tuple[list[bytes], str | None, set[str]]: ...

    def save_netkeys(self, keys: dict[str, bytes], primary: str | None, removed: set[str]) -> None: ...


class NetworkKeys:
    def __init__(self, ring: KeyRing, table: KeyTable) -> None:
        self.ring = ring
        self.table = table
        self.removed: set[str] = set()

    def load(self, config_key: Path | None) -> None:
        """Install the stored keys and the config file's key; the stored primary seals again."""
        keys, primary, removed = self.table.netkeys()
        self.removed = set(removed)
        for k in keys:
            self.ring.install(k)
        if config_key is not None:
            key = read_key_file(config_key)
            kid = key_id(key)
            if kid in self.removed:
                log.warning("network key %s from %s was removed from this node; not installed", kid, config_key)
            elif kid not in {k.key_id for k in self.ring.keys()}:
                self.ring.install(key)
                log.info("network key %s installed from %s", kid, config_key)
        if primary is not None and primary in {k.key_id for k in self.ring.keys()}:
            self.ring.use(primary)
        self.save()
        if not self.ring.sealed:
            log.warning("no network key: peer traffic is neither encrypted nor authenticated")

    def save(self) -> None:
        keys = {k.key_id: self.ring.key_bytes(k.key_id) for k in self.ring.keys()}
        self.table.save_netkeys(keys, self.ring.primary, self.removed)

    def install(self, key: bytes, *, use: bool) -> str:
        kid = self.ring.install(key)
        self.removed.discard(kid)
        if use:
            self.ring.use(kid)
        self.save()
        log.info("network key %s installed%s", kid, " and in use" if use else "")
        return kid

    def use(self, kid: str) -> None:
        self.ring.use(kid)  # ConfigError when it is not installed
        self.save()
        log.info("network key %s now seals outgoing frames", self.ring.primary)

    def remove(self, kid: str) -> None:
        self.ring.remove(kid)  # ConfigError when not installed, or in use
        self.removed.add(kid)
        self.save()
        log.info("network key %s removed", kid)

    def doc(self) -> list[dict]:
        return [{"key_id": k.key_id, "primary": k.primary} for k in self.ring.keys()]
