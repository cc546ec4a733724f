"""The one client of the agent's local API, over its Unix socket.

The agent is found by ``--agent SOCKET``, else ``$GRAPEVINE_AGENT``, else
``agent.sock`` in the default data directory. ``AgentClient`` speaks HTTP/1.1
with the standard library only (``http.client``), so commands start fast and
need no event loop. Every command that talks to an agent uses it (the run
stream included), and so do the local launcher, the tests and the benchmarks.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Iterator

import click

from grapevine.gossip.errors import GrapevineError, Reason

CONNECT_TIMEOUT_S = 10.0  # the local agent answers at once or is not there
ENV_AGENT = "GRAPEVINE_AGENT"
STREAM_READ_BYTES = 64 * 1024  # one read of a run stream; events are split into lines as they arrive


class AgentUnavailable(click.ClickException):
    exit_code = 1


class AgentRefused(GrapevineError):
    """The agent answered with an error (bad input: exit status 2)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if detail else error, reason=Reason.from_text(error))
        self.status = status
        self.error = error
        self.detail = detail


def find_socket(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get(ENV_AGENT):
        return os.environ[ENV_AGENT]
    from grapevine.node.config import default_data_dir

    return str(default_data_dir() / "agent.sock")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket: connect within ``timeout``, then read with ``read_timeout`` (None: no limit)."""

    def __init__(self, path: str, timeout: float, read_timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path
        self._read_timeout = read_timeout

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        s.settimeout(self._read_timeout)
        self.sock = s


FOREVER = None  # ``stream(..., timeout=FOREVER)``: a run may stream for as long as it takes


class AgentClient:
    """The one client of the agent's local API: JSON requests and NDJSON streams over its Unix socket.

    Every command that talks to an agent goes through it, and so do the local
    launcher (``localfleet``), the tests and the benchmarks. Errors: the agent
    not there or hanging up is ``AgentUnavailable`` (exit 1); an answer of
    400 or more is ``AgentRefused`` (a GrapevineError: exit 2), carrying the
    agent's ``error`` and ``detail``.
    """

    def __init__(self, path: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def _unavailable(self, what: str, exc: BaseException) -> AgentUnavailable:
        return AgentUnavailable(f"{what} the agent at {self.path}: {exc or type(exc).__name__}"
                                f" (is `grapevine agent` running? use --agent or ${ENV_AGENT})")

    def _send(self, method: str, path: str, body: bytes | None, content_type: str, read_timeout: float | None):
        conn = _UnixConnection(self.path, self.timeout, read_timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unavailable("cannot reach", exc) from None

    @staticmethod
    def _refused(status: int, raw: bytes) -> AgentRefused:
        try:
            err = json.loads(raw)
        except ValueError:
            err = None
        if not isinstance(err, dict):
            return AgentRefused(status, str(status), raw[:200].decode("utf-8", "replace"))
        return AgentRefused(status, str(err.get("error", status)), str(err.get("detail", "")))

    def request(self, method: str, path: str, doc: Any = None, *, data: bytes | None = None,
                timeout: float | None = None) -> Any:
        """One JSON answer; ``data`` sends raw bytes instead of ``doc`` as JSON; ``timeout`` bounds the read."""
        body, ctype = (data, "application/octet-stream") if data is not None else (
            (json.dumps(doc).encode(), "application/json") if doc is not None else (None, "application/json"))
        conn, resp = self._send(method, path, body, ctype, timeout or self.timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unavailable("lost the connection to", exc) from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise self._refused(resp.status, raw)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise AgentUnavailable(f"the agent answered {path} with something that is not JSON") from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, doc: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, doc, **kw)

    @staticmethod
    def _event(path: str, line: bytes) -> dict:
        try:
            return json.loads(line)
        except ValueError:
            raise AgentUnavailable(f"the agent sent a line of {path} that is not JSON") from None

    def stream(self, method: str, path: str, doc: Any = None, timeout: float | None = FOREVER) -> Iterator[dict]:
        """One JSON document per line until the agent ends the response (``timeout``: the longest wait for
        more of it); a connection lost before the end is ``AgentUnavailable``, never a short stream."""
        body = json.dumps(doc).encode() if doc is not None else None
        conn, resp = self._send(method, path, body, "application/json", timeout)
        try:
            if resp.status >= 400:
                raise self._refused(resp.status, resp.read())
            # read1, not readline: on a chunked body http.client's readline takes a connection closed
            # in the middle of the stream for its end, and a run cut short would look finished.
            buf = b""
            while True:
                try:
                    data = resp.read1(STREAM_READ_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise self._unavailable("lost the stream from", exc) from None
                if not data:
                    break
                *lines, buf = (buf + data).split(b"\n")
                yield from (self._event(path, line) for line in lines if line.strip())
            if buf.strip():
                yield self._event(path, buf)
        finally:
            conn.close()


def agent_client(socket_path: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> AgentClient:
    return AgentClient(find_socket(socket_path), timeout)


agent_option = click.option("--agent", "agent_socket", default=None,
                            help="Agent API socket (default: $GRAPEVINE_AGENT, then agent.sock in the data dir).")
