"""Node keys pinned to node names: trust on first sight, a changed key refused and reported.

The first frame that arrives from a node name (``name`` of ``name@host:port``)
with a valid node-key signature pins that key to the name, in the data
directory's SQLite (node/state.py), so a restart keeps it. Every later frame
in that name must be signed with the same key; one signed with another key
is refused (``NodeKeyChanged``: logged, counted in
``grapevine_bad_frames{reason="NodeKeyChanged"}`` and
``grapevine_node_key_changes``). A node keeps its key in ``node.key`` in its
data directory, so restarts and address changes keep the pin valid.

A node that was legitimately re-keyed (a machine rebuilt with a new data
directory under an old name) is accepted again once an operator removes its
pin on every node that refuses it: ``DELETE /v1/pins/<name>`` on the local
API, ``grapevine pins forget NAME``; the next frame pins the new key.
``GET /v1/pins`` lists what is pinned.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from grapevine.policy.keys import PublicKey, key_id

from .frames import Envelope, FrameRefused, node_name

log = logging.getLogger("grapevine.node")

MAX_PINS = 100_000  # names pinned in memory; a fleet far larger than any this design targets


class PinStorage(Protocol):
    def node_pins(self) -> dict[str, tuple[bytes, int, str]]: ...
    def pin_node(self, name: str, key: bytes, now_ms: int, node_id: str) -> None: ...
    def unpin_node(self, name: str) -> bool: ...


class Pins:
    """The pins of one agent: an in-memory map in front of its storage."""

    def __init__(self, storage: PinStorage | None = None, *, on_change: Callable[[str], None] | None = None) -> None:
        self._storage = storage
        self._keys: dict[str, PublicKey] = {}
        self._info: dict[str, tuple[int, str]] = {}
        self._on_change = on_change or (lambda name: None)
        if storage is not None:
            for name, (raw, first_ms, nid) in storage.node_pins().items():
                self._keys[name] = PublicKey(raw)
                self._info[name] = (first_ms, nid)

    def pin_self(self, node_id: str, key: PublicKey, now_ms: int) -> None:
        """Pin this node's own name to its own key (nobody else may speak as this node)."""
        name = node_name(node_id)
        pinned = self._keys.get(name)
        if pinned is not None and pinned != key:
            log.warning("own name %s was pinned to node key %s; this node's key is %s: pin replaced",
                        name, key_id(pinned.raw), key.key_id)
            self.forget(name)
        if name not in self._keys:
            self._add(name, key, now_ms, node_id)

    def check(self, env: Envelope, now_ms: int) -> None:
        """Accept ``env``'s sender or raise FrameRefused (403 BadNodeSignature / NodeKeyChanged)."""
        name = node_name(env.sender)
        pinned = self._keys.get(name)
        if pinned is not None:
            if pinned.raw != env.public_key:
                try:
                    env.verify(PublicKey(env.public_key))
                    signed = "a valid signature"
                except (FrameRefused, Exception):
                    signed = "an invalid signature"
                self._on_change(name)
                raise FrameRefused(403, "NodeKeyChanged",
                                   f"frame as {env.sender} carries node key {key_id(env.public_key)} with {signed}; "
                                   f"{name} is pinned to {pinned.key_id} (if the node was re-keyed: grapevine pins forget {name})")
            env.verify(pinned)
            return
        try:
            key = PublicKey(env.public_key)
        except Exception:
            raise FrameRefused(400, "BadEnvelope", f"frame from {env.sender} carries a malformed node key") from None
        env.verify(key)
        if len(self._keys) >= MAX_PINS:
            raise FrameRefused(403, "TooManyPins", f"{MAX_PINS} node names pinned already; {name} not pinned")
        self._add(name, key, now_ms, env.sender)
        log.info("pinned node %s to node key %s (first seen as %s)", name, key.key_id, env.sender)

    def _add(self, name: str, key: PublicKey, now_ms: int, node_id: str) -> None:
        self._keys[name] = key
        self._info[name] = (now_ms, node_id)
        if self._storage is not None:
            self._storage.pin_node(name, key.raw, now_ms, node_id)

    def get(self, name: str) -> PublicKey | None:
        return self._keys.get(name)

    def forget(self, name: str) -> bool:
        had = self._keys.pop(name, None) is not None
        self._info.pop(name, None)
        if self._storage is not None:
            had = self._storage.unpin_node(name) or had
        if had:
            log.warning("pin of node %s removed; the next key seen for it will be pinned", name)
        return had

    def listing(self) -> list[dict]:
        return [{"name": n, "key_id": k.key_id, "key": k.raw.hex(), "first_seen_ms": self._info[n][0],
                 "first_seen_as": self._info[n][1]} for n, k in sorted(self._keys.items())]

    def __len__(self) -> int:
        return len(self._keys)


def pin_api_routes(pins: Pins) -> dict:
    """Local API routes: ``GET /v1/pins`` lists the pins, ``POST /v1/pins/forget {"name": N}`` removes one."""
    from aiohttp import web

    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"pins": pins.listing()})

    async def forget(request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except ValueError:
            doc = None
        name = doc.get("name") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not name:
            return web.json_response({"error": "BadRequest", "detail": 'body must be {"name": NODE_NAME}'}, status=400)
        if not pins.forget(name):
            return web.json_response({"error": "NotPinned", "detail": f"no pin for node {name!r}"}, status=404)
        return web.json_response({"forgotten": name, "pins": pins.listing()})

    return {("GET", "/v1/pins"): listing, ("POST", "/v1/pins/forget"): forget}
