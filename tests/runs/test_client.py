"""The one local-API client against a real HTTP/1.1 server on a Unix socket (no agent needed).

The server here answers as the agent does: JSON bodies, refusals as
``{"error", "detail"}`` with a 4xx status, runs as chunked NDJSON. It can
also misbehave (hang up mid-stream, stall) to show what the CLI reports.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time

import pytest

from grapevine.cli.client import AgentClient, AgentRefused, AgentUnavailable
from grapevine.gossip.errors import GrapevineError


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, status: int, doc) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunks(self, parts: list[bytes], *, finish: bool = True, stall_s: float = 0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for p in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            self.wfile.flush()
        time.sleep(stall_s)  # a server that stalls mid-stream is what these tests are about
        if finish:
            self.wfile.write(b"0\r\n\r\n")

    def do_GET(self) -> None:
        if self.path == "/v1/status":
            self._json(200, {"node": "n@127.0.0.1:1"})
        else:
            self._json(404, {"error": "NotFound", "detail": f"no route {self.path}"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        events = [json.dumps({"event": "targets", "n": body["n"]}).encode() + b"\n",
                  b'{"event": "result", "no', b'de": "a"}\n{"event": "done"}\n']  # a line split across chunks
        if self.path == "/v1/run":
            self._chunks(events)
        elif self.path == "/v1/run-cut":
            self._chunks(events[:1], finish=False)
            self.close_connection = True
        elif self.path == "/v1/run-stall":
            self._chunks(events[:1], stall_s=3)
        else:
            self._json(400, {"error": "Malformed", "detail": "bad order"})


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that left early: expected here
        pass

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port) pair


@pytest.fixture
def sock(tmp_path):
    path = str(tmp_path / "agent.sock")
    server = _Server(path, _Handler)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


def test_json_answer_and_refusal_with_the_agents_reason(sock):
    client = AgentClient(sock, 5)
    assert client.get("/v1/status") == {"node": "n@127.0.0.1:1"}
    with pytest.raises(AgentRefused) as exc:
        client.get("/v1/nothing")
    assert isinstance(exc.value, GrapevineError)  # the CLI exits 2 with the reason
    assert (exc.value.status, exc.value.error, exc.value.detail) == (404, "NotFound", "no route /v1/nothing")


def test_stream_yields_each_line_even_when_split_across_chunks(sock):
    events = list(AgentClient(sock, 5).stream("POST", "/v1/run", {"n": 3}))
    assert events == [{"event": "targets", "n": 3}, {"event": "result", "node": "a"}, {"event": "done"}]


def test_a_stream_refused_up_front_raises_the_refusal(sock):
    with pytest.raises(AgentRefused, match="Malformed: bad order"):
        list(AgentClient(sock, 5).stream("POST", "/v1/other", {"n": 1}))


def test_an_agent_hanging_up_mid_stream_is_reported_not_taken_for_the_end(sock):
    got = []
    with pytest.raises(AgentUnavailable, match="lost the stream"):
        for ev in AgentClient(sock, 5).stream("POST", "/v1/run-cut", {"n": 1}):
            got.append(ev)
    assert got == [{"event": "targets", "n": 1}]


def test_a_stalled_stream_ends_after_its_timeout(sock):
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable, match="lost the stream"):
        list(AgentClient(sock, 5).stream("POST", "/v1/run-stall", {"n": 1}, timeout=0.5))
    assert time.monotonic() - t0 < 2.5


def test_no_agent_at_the_socket_is_unavailable_and_says_where(tmp_path):
    missing = str(tmp_path / "none.sock")
    with pytest.raises(AgentUnavailable, match=f"cannot reach the agent at {missing}"):
        AgentClient(missing, 1).get("/v1/status")
