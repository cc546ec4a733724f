"""A bounded flood of hostile connections at one agent's peer port (127.0.0.1 only).

Each of ``conns`` connection slots runs one kind of attack in a loop until
``seconds`` have passed, reconnecting whenever the agent closes it:

- ``gzip``: POST /v1/gossip with ``Content-Encoding: gzip`` and a bomb body
  (``GZIP_INFLATED`` zero bytes compressed to a few hundred KiB);
- ``slow``: POST /v1/gossip declaring ``SLOW_BODY_BYTES`` and sending them in
  ``SLOW_CHUNK`` pieces ``SLOW_PAUSE_S`` apart;
- ``ws``: a WebSocket upgrade to /v1/link without credentials, then idle;
- ``garbage``: random bytes that are not HTTP, then idle;
- ``idle``: a connection that sends nothing at all.

None of it needs the fleet key. Run as a script it prints one JSON document
(attempts, how they ended); ``run_flood`` is the same from Python. Every
socket goes to 127.0.0.1; every wait is bounded by the flood's end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import zlib
from collections import Counter

KINDS = ("gzip", "slow", "ws", "garbage", "idle")
GZIP_INFLATED = 512 * 1024 * 1024  # what one bomb inflates to
SLOW_BODY_BYTES = 8 * 1024 * 1024
SLOW_CHUNK = 64 * 1024
SLOW_PAUSE_S = 0.05
RECONNECT_PAUSE_S = 0.02  # between attempts on one slot: a flood, not a busy loop
CONNECT_TIMEOUT_S = 2.0


def gzip_bomb(inflated: int = GZIP_INFLATED) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    chunk = bytes(1024 * 1024)
    parts = [z.compress(chunk) for _ in range(inflated // len(chunk))]
    parts.append(z.flush())
    return b"".join(parts)


def _post_head(port: int, length: int, extra: str = "") -> bytes:
    return (f"POST /v1/gossip HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def _drain_until_closed(reader: asyncio.StreamReader, end: float) -> str:
    """Read (and drop) until the agent closes the connection or the flood ends."""
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return "held to the end"
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            return "held to the end"
        except (ConnectionError, OSError):
            return "reset"
        if not data:
            return "closed by agent"


async def _one(kind: str, port: int, end: float, bomb: bytes) -> str:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return "connect failed"
    try:
        if kind == "gzip":
            writer.write(_post_head(port, len(bomb), "Content-Encoding: gzip\r\n") + bomb)
            await writer.drain()
        elif kind == "slow":
            writer.write(_post_head(port, SLOW_BODY_BYTES))
            sent = 0
            while sent < SLOW_BODY_BYTES and time.monotonic() < end:
                writer.write(os.urandom(SLOW_CHUNK))
                await writer.drain()
                sent += SLOW_CHUNK
                await asyncio.sleep(SLOW_PAUSE_S)
        elif kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write((f"GET /v1/link HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            await writer.drain()
        elif kind == "garbage":
            writer.write(os.urandom(4096))
            await writer.drain()
        return await _drain_until_closed(reader, end)
    except (ConnectionError, OSError):
        return "reset"
    finally:
        writer.transport.abort()


async def run_flood(port: int, conns: int, seconds: float, kinds: tuple[str, ...] = KINDS) -> dict:
    bomb = gzip_bomb() if "gzip" in kinds else b""
    end = time.monotonic() + seconds
    outcomes: dict[str, Counter] = {k: Counter() for k in kinds}

    async def slot(i: int) -> None:
        kind = kinds[i % len(kinds)]
        while time.monotonic() < end:
            outcomes[kind][await _one(kind, port, end, bomb)] += 1
            await asyncio.sleep(RECONNECT_PAUSE_S)

    t0 = time.monotonic()
    await asyncio.gather(*(slot(i) for i in range(conns)))
    return {"port": port, "conns": conns, "seconds": round(time.monotonic() - t0, 2),
            "gzip_bomb_bytes": len(bomb), "gzip_inflates_to": GZIP_INFLATED if bomb else 0,
            "outcomes": {k: dict(v) for k, v in outcomes.items()},
            "attempts": sum(sum(v.values()) for v in outcomes.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=120)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--kinds", default=",".join(KINDS))
    a = p.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    if not set(kinds) <= set(KINDS) or not 0 < a.conns <= 1000 or not 0 < a.seconds <= 300:
        p.error("kinds from gzip,slow,ws,garbage,idle; 1..1000 connections; up to 300 s")
    print(json.dumps(asyncio.run(run_flood(a.port, a.conns, a.seconds, kinds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
