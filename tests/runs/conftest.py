"""A small mesh of real agent processes on loopback, shared by the run tests."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest

from grapevine.cli.client import AgentClient
from grapevine.cli.localfleet import LocalFleet
from grapevine.node.frames import pack_envelope
from grapevine.node.netkey import KeyRing, read_key_file
from grapevine.policy.keys import SigningKey
from grapevine.policy.trust import OperatorScope

MESH_NODES = 4


class Mesh:
    """The LocalFleet plus what the tests poke at: peer routes and the run stream."""

    def __init__(self, mesh: LocalFleet, limited: SigningKey, limited_path: Path) -> None:
        self.m = mesh
        self.limited = limited  # operator scoped to role=db: no node of this mesh is in it
        self.limited_path = limited_path
        self.ring = KeyRing()
        self.ring.install(read_key_file(mesh.keys.netkey))
        self.node_key = SigningKey.generate()  # the tester's own node key: frames are signed by their sender

    @property
    def agents(self):
        return self.m.agents

    def post_peer(self, agent, route: str, body: Any, sender: str = "tester@127.0.0.1:9") -> Any:
        """POST a sealed frame to a peer route, as any mesh member holding the network key could."""
        frame = self.ring.seal(pack_envelope(self.node_key, sender, "", msgpack.packb(body, use_bin_type=True)))
        conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
        try:
            conn.request("POST", f"/v1/peer/{route}", body=frame, headers={"Content-Type": "application/octet-stream"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, (resp.status, data[:300])
        finally:
            conn.close()
        env = msgpack.unpackb(self.ring.open(data), raw=False)  # [2, sender, key, dest, body, signature]
        return msgpack.unpackb(env[4], raw=False)

    def run_stream(self, via, signed, batch=None, max_failures=None) -> "StreamThread":
        t = StreamThread(via.socket, {"order": signed.encode().hex(), "batch": batch, "max_failures": max_failures})
        t.start()
        return t


class StreamThread(threading.Thread):
    def __init__(self, sock: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.sock, self.body = sock, body
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.seen = threading.Condition()

    def run(self) -> None:
        try:
            for ev in AgentClient(self.sock).stream("POST", "/v1/run", self.body):
                with self.seen:
                    self.events.append(ev)
                    self.seen.notify_all()
        except BaseException as exc:  # surfaced by summary()
            self.error = exc
        finally:
            with self.seen:
                self.seen.notify_all()

    def wait_for(self, kind: str, timeout: float = 20) -> dict:
        with self.seen:
            ok = self.seen.wait_for(lambda: any(e.get("event") == kind for e in self.events) or not self.is_alive(),
                                    timeout)
        assert ok, f"no {kind} event within {timeout} s"
        for e in self.events:
            if e.get("event") == kind:
                return e
        raise AssertionError(f"stream ended without a {kind} event: {self.events} {self.error!r}")

    def summary(self, timeout: float = 60) -> dict:
        self.join(timeout)
        assert not self.is_alive(), "run stream did not finish"
        if self.error is not None:
            raise self.error
        return self.wait_for("done")["summary"]


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    base = tmp_path_factory.mktemp("mesh")
    limited = SigningKey.generate()
    limited_path = base / "limited.key"
    limited.save(limited_path)
    with LocalFleet(base / "m", operators=[(limited.public, OperatorScope(selector="role=db", actions=("run",)))]) as m:
        for i in range(MESH_NODES):
            m.add(f"n{i}", tags={"role": "web", "idx": str(i)})
        m.start()
        m.wait_ready()
        m.wait_linked()
        yield Mesh(m, limited, limited_path)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def loads(text: str) -> dict:
    return json.loads(text)
