"""What the peer port reads before it answers: the headers and at most a 50-byte frame header.

Real agents on loopback, raw sockets: each request below is answered with
its refusal while the client has sent only headers (or a header and a few
bytes), so the agent cannot have read the body it declared.
"""

from __future__ import annotations

import json
import socket

from grapevine.gossip import codec
from grapevine.gossip import messages as m
from grapevine.node.frames import MAX_FRAME_BYTES, MAX_ROUTE_FRAME_BYTES

TIMEOUT_S = 10.0


def ask(port: int, head: str, body: bytes = b"") -> tuple[int, dict]:
    """Send a request's head (and ``body``, which may be short of what the head declares); read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(payload) if payload.startswith(b"{") else {}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def post(path: str, port: int, length: int | None, extra: str = "") -> str:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{size}{extra}\r\n"


def test_a_body_over_the_cap_is_refused_at_the_headers(world):
    port = world.agents[0].port
    status, doc = ask(port, post("/v1/gossip", port, MAX_FRAME_BYTES + 1))
    assert (status, doc["error"]) == (413, "TooLarge")
    status, doc = ask(port, post("/v1/peer/hello", port, MAX_ROUTE_FRAME_BYTES + 1))
    assert (status, doc["error"]) == (413, "TooLarge")


def test_compressed_and_chunked_bodies_are_refused_at_the_headers(world):
    port = world.agents[0].port
    status, doc = ask(port, post("/v1/gossip", port, 4 << 20, "Content-Encoding: gzip\r\n"))
    assert (status, doc["error"]) == (415, "CompressedBody")
    status, doc = ask(port, post("/v1/gossip", port, None))
    assert (status, doc["error"]) == (411, "NoLength")


def test_a_strangers_header_is_refused_before_its_body_is_read(world):
    port = world.agents[0].port
    status, doc = ask(port, post("/v1/gossip", port, 8 << 20), b"G\x02" + bytes(48))  # 50 bytes of 8 MiB
    assert (status, doc["error"]) == (403, "UnknownNetworkKey")


def test_a_header_that_disagrees_with_the_content_length_is_refused(world):
    h, a = world.hostile, world.agents[0]
    frame = h.frame(codec.encode(m.Ping()), dest=a.node_id)
    status, doc = ask(a.port, post("/v1/gossip", a.port, len(frame) + 1000), frame)
    assert (status, doc["error"]) == (400, "LengthMismatch")
