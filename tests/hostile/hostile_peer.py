"""A hostile mesh member: the fleet network key and a node key of its own, but no author key.

``HostilePeer`` speaks the real wire format (sealed frames, the msgpack
envelope, ``gossip.codec`` messages, peer routes) over plain HTTP to honest
agents on loopback. It can claim any sender id in the envelope, but it signs
every frame with its own node key (it has no other), so a claim to be a node
whose key is pinned is refused. It signs what it can sign: with its own node
key, or with keys it made up.

Every request it makes is bounded in time; every answer is recorded in
``attempts`` as (what was tried, HTTP status, refusal reason or "ok").
"""

from __future__ import annotations

import base64
import http.client
import re
import threading
import time
from collections import Counter
from typing import Any

import msgpack

from grapevine.cli.localfleet import wait_for
from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.gossip.item import SignedItem, Version
from grapevine.node.frames import pack_envelope
from grapevine.node.netkey import KeyRing, read_key_file
from grapevine.node.transport import LINK_TOKEN_HEADER
from grapevine.policy.bundle import Bundle
from grapevine.policy.keys import SigningKey

REQUEST_TIMEOUT_S = 10.0  # one POST to a loopback agent; a busy 2-core box can stall for seconds


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class HostilePeer:
    def __init__(self, netkey_path, name: str = "mallory", port: int = 9) -> None:
        self.ring = KeyRing()
        self.ring.install(read_key_file(netkey_path))
        self.node_key = SigningKey.generate()  # a valid node key: nodes sign results and nothing else
        self.node_id = f"{name}@127.0.0.1:{port}"
        self.ids: dict[int, str] = {}  # port -> node id of the honest agent there (the frames' destination)
        self.attempts: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    # -- frames -----------------------------------------------------------
    def frame(self, body: bytes, sender: str | None = None, dest: str = "", key: SigningKey | None = None) -> bytes:
        """A sealed frame in ``sender``'s name (default: its own), signed with its own node key."""
        return self.ring.seal(pack_envelope(key or self.node_key, sender or self.node_id, dest, body))

    def link_headers(self, dest: str, sender: str | None = None) -> dict[str, str]:
        """The upgrade header that opens a link to ``dest`` in ``sender``'s name (signed with its own key)."""
        token = self.frame(msgpack.packb({"t": now_ms()}), sender, dest)
        return {LINK_TOKEN_HEADER: base64.b64encode(token).decode("ascii")}

    def route_frame(self, body: Any, sender: str | None = None) -> bytes:
        return self.frame(msgpack.packb(body, use_bin_type=True), sender)

    def _post(self, port: int, path: str, data: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", path, body=data, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _note(self, what: str, status: int, outcome: str) -> None:
        with self._lock:
            self.attempts.append((what, status, outcome))

    def post_raw(self, port: int, data: bytes, what: str, path: str = "/v1/gossip") -> int:
        """POST bytes as they are (a frame that may not even be sealed)."""
        status, body = self._post(port, path, data)
        self._note(what, status, _json_error(body) if status >= 400 else f"delivered ({status}), judged by the core")
        return status

    def gossip(self, port: int, msg: m.Message, what: str, sender: str | None = None) -> int:
        """One gossip message in a frame sealed with the fleet key, as ``sender`` (default: itself)."""
        return self.post_raw(port, self.frame(codec.encode(msg), sender, self.ids.get(port, "")), what)

    def route(self, port: int, name: str, body: Any, what: str, sender: str | None = None) -> Any:
        """A peer-route request; returns the opened answer body (or None on an HTTP error)."""
        status, data = self._post(port, f"/v1/peer/{name}", self.route_frame(body, sender))
        if status != 200:
            self._note(what, status, _json_error(data))
            return None
        answer = open_answer(self.ring, data)
        outcome = "ok" if isinstance(answer, dict) and answer.get("ok") else str(
            answer.get("refused") if isinstance(answer, dict) else answer)
        self._note(what, status, outcome)
        return answer

    def outcomes(self) -> Counter:
        with self._lock:
            return Counter(o for _, _, o in self.attempts)

    # -- items it can make ------------------------------------------------
    def bundle_item(self, name: str, *, signer: SigningKey | None, author: str | None = None,
                    wall_ms: int | None = None, counter: int = 0, resources: tuple = ()) -> SignedItem:
        """``bundle/<name>`` claiming ``author`` (default: the signer's id), signed by ``signer`` or by nobody."""
        b = Bundle(name=name, resources=resources or ({"file": "/pwned", "content": f"{name} by {self.node_id}\n"},))
        kid = author or (signer.key_id if signer else self.node_key.key_id)
        item = SignedItem(key=b.item_key, version=Version(wall_ms or now_ms(), counter, kid), payload=b.encode())
        if signer is not None:
            item = item.with_signature(kid, signer.sign(item.signing_bytes()))
        return item


def open_answer(ring: KeyRing, data: bytes) -> Any:
    """The body of a peer-route answer frame (envelope v2: [2, sender, key, dest, body, signature])."""
    env = msgpack.unpackb(ring.open(data), raw=False)
    return msgpack.unpackb(env[4], raw=False)


def _json_error(body: bytes) -> str:
    """The ``error`` field of a JSON refusal, else the first bytes of the body."""
    text = body[:400].decode("utf-8", "replace")
    found = re.search(r'"error"\s*:\s*"([^"]+)"', text)
    return found.group(1) if found else text[:60]


def scrape_metrics(port: int) -> dict[tuple[str, str], float]:
    """``/metrics`` of an agent as {(metric, reason label): value} for the refusal counters."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        mt = re.match(r'^(grapevine_[a-z_]+)_total\{reason="([^"]*)"\}\s+([0-9.e+-]+)$', line)
        if mt:
            out[(mt.group(1), mt.group(2))] = float(mt.group(3))
    return out


def metrics_delta(before: dict, after: dict) -> Counter:
    c: Counter = Counter()
    for k, v in after.items():
        d = v - before.get(k, 0.0)
        if d > 0:
            c[k] += int(d)
    return c


def steady_metrics(mesh, timeout_s: float = 20.0) -> dict[int, dict]:
    """Every agent's refusal counters once two scrapes 0.2 s apart agree (port -> counters)."""
    last: dict[str, dict] = {}

    def steady() -> dict[int, dict] | None:
        now = {a.port: scrape_metrics(a.port) for a in mesh.agents}
        same = last.get("scrape") == now
        last["scrape"] = now
        return now if same else None

    return wait_for(steady, timeout_s, "the refusal counters to stop moving", interval=0.2)
