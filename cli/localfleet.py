"""Agents on loopback, started and ended by one owner.

``LocalFleet`` is the one way this project starts ``grapevine agent``
processes on one machine: the demo, the daemon and run tests, the chaos lab
and the benchmarks all go through it.

    with LocalFleet(tmp) as fleet:            # keys, network key, trust root under tmp
        web = [fleet.add(f"web{i}", tags={"role": "web"}) for i in range(3)]
        fleet.start()                         # one Popen per agent, recorded
        fleet.wait_ready()                    # every API socket answers
        fleet.wait_linked()                   # every agent has an active peer
        answer, item = fleet.inject(web[0], {"bundle": "demo/x", "resources": [...]})
    # every process it started is ended here, by PID, also on an error,
    # Ctrl-C or SIGTERM (turned into KeyboardInterrupt while the fleet is entered)

Each agent has its own data directory and converge root under the fleet's
directory, a free loopback port outside the ephemeral range (or an address
the caller gives, in a network namespace the caller made), and an
environment without the caller's ``GRAPEVINE_*`` variables, so what runs is
what the fleet says. Agents talk to the launcher through ``AgentClient``,
the same client the command line uses.

This module lives in ``cli/`` because it runs the ``grapevine`` command and
speaks to agents through the command line's client; ``node/`` stays free of
both.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from grapevine.cli.client import AgentClient

READY_TIMEOUT_S = 30.0  # one agent from exec to an answering API socket; 20 agents importing on 2 busy cores
LINK_TIMEOUT_S = 30.0  # every agent linked to at least one peer
STOP_GRACE_S = 5.0  # SIGTERM to exit (the agent drains its links); then SIGKILL
REAP_TIMEOUT_S = 10.0  # a SIGKILLed process is reaped within this
POLL_S = 0.05  # condition polling period
CLI_TIMEOUT_S = 60.0  # one `grapevine` command run by a test
PORT_FLOOR = 10_000  # listening ports are picked above this and below the ephemeral range
PORT_TRIES = 200  # random picks before giving up
KEY_VALIDITY_DAYS = 1  # the fleet's trust root; a fleet lives for minutes
DEFAULT = "default"  # `netkey=DEFAULT`: the fleet's network key

# Short intervals for tests: reconnects, heartbeats and timeouts in about a
# second instead of the production defaults, so failures show up fast.
FAST_ENV = {
    "GRAPEVINE_GOSSIP_PRESET": "local",
    "GRAPEVINE_CONVERGE_DEBOUNCE_MS": "100",
    "GRAPEVINE_REJOIN_MIN_S": "0.2",
    "GRAPEVINE_REJOIN_MAX_S": "1",
    "GRAPEVINE_LINK_HEARTBEAT_S": "1",
    "GRAPEVINE_SEND_TIMEOUT_S": "2",
    "GRAPEVINE_DRAIN_TIMEOUT_S": "2",
    "GRAPEVINE_TICK_MAX_MS": "500",
    "GRAPEVINE_PEER_METRICS": "true",  # tests read /metrics on the peer port (off by default where supported)
    "GRAPEVINE_LOG_LEVEL": "info",
}

T = TypeVar("T")


class FleetError(RuntimeError):
    """An agent of a local fleet could not be started, or exited, or a wait ran out."""


class WaitTimeout(FleetError, AssertionError):
    """``wait_for`` ran out of time (an AssertionError too, so a test reports it as a failure)."""


def wait_for(cond: Callable[[], T], timeout: float, what: str = "condition", interval: float = POLL_S) -> T:
    """Poll ``cond`` until it returns something true and return that, or raise ``WaitTimeout``.

    An exception from ``cond`` counts as "not yet" (a socket not there yet, a
    file half written) and is named in the timeout message; a ``FleetError``
    (an agent exited) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
            if last:
                return last
        except FleetError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


# -- ports ---------------------------------------------------------------------
_port_rng = random.Random()  # port picks only; nothing here needs to be reproducible


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            lo, hi = fh.read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1", taken: Iterable[int] = ()) -> int:
    """A free TCP port outside the ephemeral range (and not in ``taken``).

    Agents open many outgoing connections while a mesh starts; a listening
    port picked from the ephemeral range could be taken by one of them
    between the pick and the agent's bind.
    """
    taken = set(taken)
    lo, hi = _ephemeral_range()
    below = (PORT_FLOOR, lo) if lo - PORT_FLOOR > 1000 else None
    above = (hi + 1, 65535) if 65535 - hi > 1000 else None
    span = below or above
    for _ in range(PORT_TRIES):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, _port_rng.randrange(*span) if span else 0))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise FleetError(f"no free port found on {host}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (see ``free_port``)."""
    ports: list[int] = []
    for _ in range(n):
        ports.append(free_port(host, ports))
    return ports


# -- keys ------------------------------------------------------------------------
@dataclass(frozen=True)
class FleetKeys:
    """One author key (admin, publisher of every name, operator everywhere), a trust root, a network key."""

    dir: Path
    author: Path  # the author key's file (``--key`` of inject, run, rollback)
    trust: Path  # the trust root (``--trust`` of every agent)
    netkey: Path  # the fleet network key
    author_key: Any  # the SigningKey itself

    @classmethod
    def create(cls, d: Path, operators: Iterable[tuple[Any, Any]] = ()) -> FleetKeys:
        """Generate everything under ``d``; ``operators`` adds (PublicKey, OperatorScope) pairs to the root."""
        from grapevine.node.netkey import generate_key, write_key_file
        from grapevine.policy import trust, trust_files
        from grapevine.policy.keys import SigningKey

        d.mkdir(parents=True, exist_ok=True)
        key = SigningKey.generate()
        key.save(d / "operator.key")
        now = time.time_ns() // 1_000_000 - 1000  # a second in the past: no agent sees it from the future
        root = trust_files.build_root(
            serial=1, now_ms=now, expires_days=KEY_VALIDITY_DAYS, admins=[key.public], threshold=1,
            publishers=[(key.public, trust.ALL_NAMES)],
            operators=[(key.public, trust.OperatorScope(selector=None, actions=("run", "converge"))), *operators],
        )
        trust_files.write_item_file(d / "root.gv", trust_files.init_root(root, [key], now))
        write_key_file(d / "fleet.netkey", generate_key())
        return cls(dir=d, author=d / "operator.key", trust=d / "root.gv", netkey=d / "fleet.netkey", author_key=key)


# -- one agent -------------------------------------------------------------------
@dataclass(eq=False)
class LocalAgent:
    """One ``grapevine agent`` process of a ``LocalFleet`` (declared; started by ``start``)."""

    fleet: LocalFleet = field(repr=False)
    name: str
    host: str
    port: int
    data_dir: Path
    root: Path
    log_path: Path
    tags: dict[str, str] = field(default_factory=dict)
    join: list[str] | None = None  # None: the fleet's first two agents
    netkey: Path | None = None
    netns: str | None = None  # run inside this network namespace (``ip netns exec``)
    env: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # more `grapevine agent` flags
    proc: subprocess.Popen | None = field(default=None, repr=False)
    stopped: bool = False  # ended on purpose (stop, kill): not expected to answer until started again

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def node_id(self) -> str:
        return f"{self.name}@{self.address}"

    @property
    def socket(self) -> str:
        """The agent's local API socket."""
        return str(self.data_dir / "agent.sock")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 10.0) -> AgentClient:
        return AgentClient(self.socket, timeout)

    def start(self) -> None:
        """Spawn the process (its own session: a Ctrl-C at the terminal reaches the launcher, which ends it)."""
        if self.alive():
            raise FleetError(f"agent {self.name} is already running (pid {self.proc.pid})")
        self.stopped = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(prefix + self.command(), env=self.fleet.environ(self),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def command(self) -> list[str]:
        """The command line this agent is started with (worked out at each start, from the fleet)."""
        return self.fleet.argv(self)

    def check_alive(self) -> None:
        """Raise FleetError (with the log's tail) if the process was started and exited on its own."""
        if self.proc is not None and not self.stopped and self.proc.poll() is not None:
            raise FleetError(f"agent {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def ready(self) -> bool:
        """The process runs and its API answers as this node."""
        self.check_alive()
        try:
            return self.client(2).get("/v1/status")["node"] == self.node_id
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        wait_for(self.ready, timeout, f"agent {self.name} to answer on {self.socket}")

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        """Send ``sig``, then SIGKILL after ``grace`` seconds; the exit status (0 if never started)."""
        if self.proc is None:
            return 0
        self.stopped = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(REAP_TIMEOUT_S)
        return self.proc.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) and reap the process."""
        self.stopped = True
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            self.proc.wait(REAP_TIMEOUT_S)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"

    def status(self) -> dict:
        return self.client().get("/v1/status")

    def http_get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` on the agent's peer port (``/metrics``, ``/health``): (status, body)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, or with no labels the sum over all label values (0 if absent)."""
        _, body = self.http_get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == f"{name}{{{labels}}}" or (not labels and (key == name or key.startswith(name + "{"))):
                total += float(value)
        return total


# -- the fleet -------------------------------------------------------------------
class LocalFleet:
    """Keys, a trust root and agent processes under one directory; owns every process it starts."""

    agent_class: type[LocalAgent] = LocalAgent

    def __init__(self, base: Path, *, keys: FleetKeys | None = None, preset: str | None = "local",
                 env: dict[str, str] | None = None, operators: Iterable[tuple[Any, Any]] = (),
                 python: str = sys.executable) -> None:
        """``preset``: gossip timing flag for every agent ("local" reacts fast; "lan" is production; None: no
        flag). ``env``: variables for every agent (``FAST_ENV`` for tests). ``operators``: more operator
        grants in a generated trust root."""
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.keys = keys or FleetKeys.create(self.base / "keys", operators)
        self.preset = preset
        self.env = dict(env or {})
        self.python = python
        self.agents: list[LocalAgent] = []
        self._old_sigterm: Any = None

    # -- declaring and starting ---------------------------------------------------
    def add(self, name: str, *, tags: dict[str, str] | None = None, port: int | None = None,
            host: str = "127.0.0.1", join: Iterable[str] | None = None, netkey: Path | str | None = DEFAULT,
            netns: str | None = None, env: dict[str, str] | None = None, extra: Iterable[str] = ()) -> LocalAgent:
        """Declare an agent. ``join``: addresses to join (None: the fleet's first two agents); ``netkey``:
        a key file, None for none, or the fleet's."""
        if any(a.name == name for a in self.agents):
            raise FleetError(f"agent {name} is already in this fleet")
        if port is None:
            port = free_port(host, (a.port for a in self.agents))
        d = self.base / name
        agent = self.agent_class(
            fleet=self, name=name, host=host, port=port, data_dir=d / "data", root=d / "root",
            log_path=d / "agent.log", tags=dict(tags or {}), join=None if join is None else list(join),
            netkey=self.keys.netkey if netkey == DEFAULT else (Path(netkey) if netkey else None),
            netns=netns, env=dict(env or {}), extra=list(extra))
        agent.root.mkdir(parents=True, exist_ok=True)
        self.agents.append(agent)
        return agent

    def argv(self, agent: LocalAgent) -> list[str]:
        joins = agent.join if agent.join is not None else [a.address for a in self.agents[:2] if a is not agent]
        cmd = [self.python, "-m", "grapevine.cli.main", "agent", "--name", agent.name, "--bind", agent.address,
               "--data-dir", str(agent.data_dir), "--root", str(agent.root), "--trust", str(self.keys.trust)]
        if self.preset:
            cmd += ["--preset", self.preset]
        if agent.netkey is not None:
            cmd += ["--network-key", str(agent.netkey)]
        for j in joins:
            cmd += ["--join", j]
        for k, v in agent.tags.items():
            cmd += ["--tag", f"{k}={v}"]
        return cmd + agent.extra

    def environ(self, agent: LocalAgent) -> dict[str, str]:
        """The caller's environment without its GRAPEVINE_* settings, then the fleet's, then the agent's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPEVINE_")}
        env.update(self.env)
        env.update(agent.env)
        return env

    def start(self, *agents: LocalAgent) -> None:
        """Spawn ``agents`` (default: every declared agent not running); does not wait for them."""
        for a in agents or [a for a in self.agents if not a.alive()]:
            a.start()

    def wait_ready(self, *agents: LocalAgent, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every one of ``agents`` (default: all started and not stopped) answers on its socket."""
        pending = list(agents or self.expected())

        def all_ready() -> bool:
            pending[:] = [a for a in pending if not a.ready()]
            return not pending

        try:
            wait_for(all_ready, timeout, "agents to start")
        except WaitTimeout:
            raise WaitTimeout(f"agents not ready after {timeout:g} s: {[a.name for a in pending]}\n"
                              + "\n".join(f"--- {a.name}\n{a.log_tail(10)}" for a in pending)) from None

    def up(self, *agents: LocalAgent, timeout: float = READY_TIMEOUT_S) -> None:
        """``start`` then ``wait_ready``."""
        agents = agents or tuple(a for a in self.agents if not a.alive())
        for a in agents:
            a.start()
        self.wait_ready(*agents, timeout=timeout)

    def expected(self) -> list[LocalAgent]:
        """The agents started and not stopped on purpose: those that should be up."""
        return [a for a in self.agents if a.proc is not None and not a.stopped]

    def linked(self, agents: Iterable[LocalAgent] = ()) -> bool:
        for a in agents or self.expected():
            a.check_alive()
            try:
                if not a.client(5).get("/v1/members").get("active"):
                    return False
            except Exception:  # noqa: BLE001 - still starting
                return False
        return True

    def wait_linked(self, *agents: LocalAgent, timeout: float = LINK_TIMEOUT_S) -> float:
        """Wait until each of ``agents`` (default: those expected up) has an active peer; the seconds it took."""
        t0 = time.monotonic()
        wait_for(lambda: self.linked(agents), timeout, "every agent linked to a peer")
        return time.monotonic() - t0

    # -- ending ---------------------------------------------------------------------
    def stop(self, agent: LocalAgent, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> int:
        return agent.stop(sig, grace)

    def close(self, grace: float = STOP_GRACE_S) -> None:
        """End every process this fleet started, by PID: SIGTERM to all at once, SIGKILL after ``grace``
        (at once with ``grace=0``). Safe to call twice."""
        live = [a for a in self.agents if a.alive()]
        first = signal.SIGTERM if grace > 0 else signal.SIGKILL
        for a in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(a.proc.pid, first)
        deadline = time.monotonic() + grace
        for a in live:
            try:
                a.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(a.proc.pid, signal.SIGKILL)
        for a in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                a.proc.wait(REAP_TIMEOUT_S)

    def __enter__(self) -> LocalFleet:
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        with contextlib.suppress(ValueError):  # not the main thread: signals are the caller's business
            self._old_sigterm = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    # -- talking to the agents ------------------------------------------------------------
    def inject(self, via: LocalAgent, bundle: dict | Any, counter: int = 0) -> tuple[dict, Any]:
        """Inject a bundle document (packed and signed with the fleet's key) or a signed item; (answer, item)."""
        from grapevine.policy.bundle import Bundle, pack

        item = bundle
        if isinstance(bundle, dict):
            item = pack(Bundle.from_document(bundle, "local fleet"), self.keys.author_key,
                        time.time_ns() // 1_000_000, counter)
        return via.client().post("/v1/inject", data=item.encode()), item

    def applied(self, agent: LocalAgent, name: str) -> str | None:
        """The version of bundle ``name`` applied on ``agent``, or None (also when it does not answer)."""
        try:
            rows = agent.client().get("/v1/bundles").get("bundles", [])
        except Exception:  # noqa: BLE001 - a stopped agent has applied nothing we can see
            return None
        return next((r.get("version") for r in rows if r.get("name") == name and r.get("applied")), None)

    def cli(self, *args: str, agent: LocalAgent | None = None, check: bool = True,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run ``grapevine ARGS`` (with ``--agent`` when given) as a subprocess; raise on failure if ``check``."""
        argv = [self.python, "-m", "grapevine.cli.main", *args]
        if agent is not None:
            argv += ["--agent", agent.socket]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPEVINE_")}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and res.returncode != 0:
            raise AssertionError(f"grapevine {' '.join(args)} exited {res.returncode}: {res.stderr}{res.stdout}")
        return res

    def cli_json(self, *args: str, agent: LocalAgent | None = None) -> Any:
        return json.loads(self.cli(*args, "--json", agent=agent).stdout)
