"""Agent configuration: a TOML file, overridden by GRAPEVINE_* variables, overridden by flags.

Every setting has one name used in all three places: ``data_dir`` in the
TOML file, ``GRAPEVINE_DATA_DIR`` in the environment, ``--data-dir`` on the
command line. Lists (``join``) and maps (``tags``) are comma separated in the
environment (``GRAPEVINE_JOIN=10.0.0.1:7946,10.0.0.2:7946``,
``GRAPEVINE_TAGS=role=web,env=prod``). A TOML file may put the settings at
the top level or under an ``[agent]`` table, with tags in ``[tags]``.

``AgentConfig`` is frozen; ``load_config`` is the only way the daemon builds
one, so every setting is checked once, with a ``ConfigError`` naming the
setting and where its bad value came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from grapevine.gossip.errors import ConfigError


ENV_PREFIX = "GRAPEVINE_"
HISTORY_KEEP_DEFAULT = 50  # accepted versions kept per key: enough to roll back through a bad week
HISTORY_KEEP_MAX = 1000  # the bound: history is read whole by `grapevine history`
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # a DNS label or so: shows up in ids and logs
TAG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")  # selector grammar identifiers
PRESETS = ("lan", "local")
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes including the terminating NUL on Linux
# What the daemon changes in the core's presets (the ``gossip`` setting overrides these too).
# - probes: over the daemon's transport a peer that dies closes its link at once, so the
#   core's pings of active peers can be rarer: idle CPU per agent drops below Serf's
#   (benchmarks/RESULTS-mesh.md), and a dead machine is still noticed within ~9 s.
# - flood_hops is left at the core's (3): with a broadcast tree per publisher, a publisher's first
#   broadcast is pushed on every link within 3 hops of it and pulled beyond, so a node that
#   starts a run or injects for the first time is not held up by a pull round trip per hop.
DAEMON_GOSSIP_DEFAULTS: dict[str, dict[str, int]] = {
    "lan": {"probe_interval_ms": 3_000, "probe_timeout_ms": 9_000},
}


def default_data_dir() -> Path:
    """/var/lib/grapevine as root, ~/.local/share/grapevine otherwise."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/grapevine")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "grapevine"


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ConfigError naming ``what``."""
    text = text.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", text) or re.match(r"^([^:\s]+):(\d+)$", text)
    if not m:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: port {port} is out of range 1..65535")
    return m.group(1), port


def parse_tags(items: list[str] | tuple[str, ...], what: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for raw in items:
        if "=" not in raw:
            raise ConfigError(f"{what}: tag {raw!r} must look like key=value")
        k, v = raw.split("=", 1)
        k, v = k.strip(), v.strip()
        if not TAG_KEY_RE.match(k):
            raise ConfigError(f"{what}: tag key {k!r} is not a valid identifier")
        tags[k] = v
    return tags


def parse_gossip_overrides(value: Any) -> dict[str, float]:
    """'name=value,...' or a table -> overrides of GossipConfig fields (checked by name and kind)."""
    from grapevine.gossip.config import GossipConfig

    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in (s.strip() for s in value.split(",")) if p]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("expected name=value pairs")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of gossip settings")
    known = {f.name: f.type for f in dataclasses.fields(GossipConfig)}
    out: dict[str, float] = {}
    for k, v in value.items():
        if k not in known:
            raise ValueError(f"unknown gossip setting {k!r}")
        out[k] = float(v) if str(known[k]) == "float" else int(v)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    name: str
    bind: str  # HOST:PORT the peer HTTP server listens on
    data_dir: Path
    advertise: str = ""  # HOST:PORT other nodes use to reach us; defaults to bind
    join: tuple[str, ...] = ()  # HOST:PORT contacts tried at start and whenever isolated
    root: Path = Path("/")  # every provider path goes through this root
    trust: Path | None = None  # the first trust root (a signed trust/root item)
    network_key: Path | None = None  # seeds the fleet key ring on first start
    tags: Mapping[str, str] = field(default_factory=dict)
    log_format: str = "text"  # text | json
    log_level: str = "info"
    api_socket: Path | None = None  # defaults to <data_dir>/agent.sock
    gossip_preset: str = "lan"  # lan | local (short intervals for tests and the demo)
    gossip: Mapping[str, float] = field(default_factory=dict)  # GossipConfig fields overriding the preset
    tick_max_ms: int = 5000  # the core is ticked at least this often even when it asks for nothing
    converge_debounce_ms: int = 200  # at most one converge per window; bundles arriving within it converge together
    converge_interval_s: float = 1800.0  # periodic converge corrects drift
    converge_splay_s: float = 300.0  # random extra delay so a fleet does not converge in lockstep
    converge_on_start: bool = True  # converge what the store holds once after start
    stale_after_s: float = 120.0  # no valid frame from the mesh for this long -> status "stale"
    rejoin_min_s: float = 0.5  # first retry delay when isolated; doubles up to rejoin_max_s
    rejoin_max_s: float = 30.0
    send_timeout_s: float = 5.0  # one POST or WebSocket connect to a peer
    # WebSocket ping period of a link; a missing pong closes it. The core's own probes already catch a
    # silent peer within probe_timeout_ms (9 s on lan), so this only has to catch what they cannot.
    link_heartbeat_s: float = 15.0
    drain_timeout_s: float = 5.0  # SIGTERM: in-flight work gets this long, then is cancelled
    # every commit survives a crash of the agent; "always" also waits for the disk on every commit,
    # "local" on all but items received from peers (which anti-entropy restores after a machine crash)
    fsync: str = "local"
    # accepted versions kept per key, 1..1000: 1 keeps only the live one; always bounded (see node/state.py)
    history_keep: int = HISTORY_KEEP_DEFAULT
    reports_keep: int = 200  # converge reports kept in the store
    runs_keep: int = 10_000  # run orders executed or refused kept in the audit trail (`history --runs`)...
    runs_keep_days: int = 30  # ...and for at most this many days
    # the user run orders execute as ("": the agent's own); an agent that is not root can only run as itself
    run_user: str = ""
    # serve /metrics on the peer port too: anyone who reaches that port can read it, so it is off
    # unless the port is firewalled to the monitoring system (/health is always served)
    peer_metrics: bool = False
    # HOST:PORT of the read-only fleet web page ("": off). It shows what `status --fleet` shows to
    # anyone who can reach it, without a login: bind it to loopback or a management address.
    ui: str = ""
    # "asyncio" (the standard loop; with it OpenSSL stays out of the daemon, which never speaks TLS:
    # about 10 MiB less resident memory per agent) or "uvloop" (libuv, which imports ssl; faster I/O
    # under heavy load). Both measured side by side in benchmarks/RESULTS-mesh.md.
    event_loop: str = "asyncio"

    @property
    def socket_path(self) -> Path:
        return self.api_socket or (self.data_dir / "agent.sock")

    @property
    def advertise_address(self) -> str:
        if self.advertise:
            return self.advertise
        host, port = parse_hostport(self.bind, "bind")
        if host in ("0.0.0.0", "::", ""):
            raise ConfigError("bind: a wildcard address needs an explicit 'advertise' HOST:PORT")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def node_id(self) -> str:
        return f"{self.name}@{self.advertise_address}"

    def gossip_config(self):
        """The core's GossipConfig: the preset, the daemon's defaults for it, then the ``gossip`` overrides."""
        from grapevine.gossip.config import GossipConfig

        base = GossipConfig.local() if self.gossip_preset == "local" else GossipConfig.lan()
        try:
            return base.replace(**{**DAEMON_GOSSIP_DEFAULTS.get(self.gossip_preset, {}), **dict(self.gossip)})
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"gossip: {exc}") from None


# setting -> (kind, environment-friendly) ; kind drives parsing of env/TOML values
_KINDS: dict[str, str] = {}
for _f in dataclasses.fields(AgentConfig):
    _t = str(_f.type)
    if _f.name in ("join",):
        _KINDS[_f.name] = "list"
    elif _f.name == "tags":
        _KINDS[_f.name] = "tags"
    elif _f.name == "gossip":
        _KINDS[_f.name] = "gossip"
    elif _f.name in ("data_dir", "root", "trust", "network_key", "api_socket"):
        _KINDS[_f.name] = "path"
    elif _t == "int":
        _KINDS[_f.name] = "int"
    elif _t == "float":
        _KINDS[_f.name] = "float"
    elif _t == "bool":
        _KINDS[_f.name] = "bool"
    else:
        _KINDS[_f.name] = "str"


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _KINDS.get(name)
    if kind is None:
        raise ConfigError(f"{source}: unknown setting {name!r}")
    try:
        if kind == "list":
            if isinstance(value, str):
                value = [v for v in (p.strip() for p in value.split(",")) if v]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of HOST:PORT strings")
            return tuple(value)
        if kind == "tags":
            if isinstance(value, str):
                value = [p for p in (s.strip() for s in value.split(",")) if p]
            if isinstance(value, (list, tuple)):
                return parse_tags(list(value), f"{source}: tags")
            if isinstance(value, Mapping):
                return parse_tags([f"{k}={v}" for k, v in value.items()], f"{source}: tags")
            raise ValueError("expected a table of key = value")
        if kind == "gossip":
            return parse_gossip_overrides(value)
        if kind == "path":
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ValueError("expected a path")
            return Path(os.path.expanduser(str(value))).absolute()  # the daemon never depends on its cwd
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: setting {name!r}: {exc} (got {value!r})") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    flat: dict[str, Any] = {}
    for k, v in doc.items():
        if k == "agent" and isinstance(v, dict):
            flat.update(v)
        elif k in ("tags", "gossip") and isinstance(v, dict):
            flat[k] = v
        else:
            flat[k] = v
    return {k: _coerce(k, v, f"config file {path}") for k, v in flat.items()}


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _KINDS:
        key = ENV_PREFIX + name.upper()
        if key in environ and environ[key] != "":
            out[name] = _coerce(name, environ[key], f"environment {key}")
    return out


def load_config(
    *,
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Merge defaults < TOML file < GRAPEVINE_* environment < flags, then check."""
    environ = os.environ if environ is None else environ
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_toml(Path(config_file)))
    merged.update(read_env(environ))
    for k, v in (flags or {}).items():
        if v is None or v == () or v == []:
            continue  # a flag not given leaves the lower layers alone
        merged[k] = _coerce(k, v, f"flag --{k.replace('_', '-')}")
    if "data_dir" not in merged:
        merged["data_dir"] = default_data_dir()
    for required in ("name", "bind"):
        if not merged.get(required):
            raise ConfigError(f"setting {required!r} is required (--{required}, {ENV_PREFIX}{required.upper()} or the config file)")
    cfg = AgentConfig(**merged)
    check_config(cfg)
    return cfg


def check_config(cfg: AgentConfig) -> None:
    if not NAME_RE.match(cfg.name):
        raise ConfigError(f"name: {cfg.name!r} must be 1..63 letters, digits, '.', '_' or '-'")
    parse_hostport(cfg.bind, "bind")
    _ = cfg.advertise_address
    for j in cfg.join:
        parse_hostport(j, "join")
    if cfg.ui:
        parse_hostport(cfg.ui, "ui")
    if cfg.event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(f"event_loop: {cfg.event_loop!r} must be 'uvloop' or 'asyncio'")
    if cfg.fsync not in ("always", "local", "never"):
        raise ConfigError(f"fsync: {cfg.fsync!r} must be always, local or never")
    if cfg.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {cfg.log_format!r} must be 'text' or 'json'")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {cfg.log_level!r} must be debug, info, warning or error")
    if cfg.gossip_preset not in PRESETS:
        raise ConfigError(f"gossip_preset: {cfg.gossip_preset!r} must be one of {', '.join(PRESETS)}")
    cfg.gossip_config()
    positive = (
        "tick_max_ms", "converge_interval_s", "stale_after_s", "rejoin_min_s", "rejoin_max_s",
        "send_timeout_s", "link_heartbeat_s", "drain_timeout_s", "reports_keep", "runs_keep", "runs_keep_days",
    )
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be greater than zero (got {getattr(cfg, name)})")
    check_history_keep(cfg.history_keep)
    for name in ("converge_debounce_ms", "converge_splay_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must not be negative (got {getattr(cfg, name)})")
    if cfg.rejoin_max_s < cfg.rejoin_min_s:
        raise ConfigError("rejoin_max_s: must not be smaller than rejoin_min_s")
    if len(str(cfg.socket_path).encode()) > MAX_SOCKET_PATH:
        raise ConfigError(f"api_socket: {cfg.socket_path} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter path")
    if cfg.trust is not None and not cfg.trust.is_file():
        raise ConfigError(f"trust: trust root file {cfg.trust} does not exist")
    if cfg.run_user:
        import pwd

        try:
            uid = pwd.getpwnam(cfg.run_user).pw_uid
        except KeyError:
            raise ConfigError(f"run_user: there is no user {cfg.run_user!r} on this machine") from None
        if os.geteuid() != 0 and uid != os.geteuid():
            raise ConfigError(f"run_user: only an agent running as root can run commands as {cfg.run_user!r}")
    if cfg.network_key is not None and not cfg.network_key.is_file():
        raise ConfigError(f"network_key: key file {cfg.network_key} does not exist")


def check_history_keep(value: object) -> int:
    """``history_keep`` must be a whole number from 1 to ``HISTORY_KEEP_MAX`` (ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= HISTORY_KEEP_MAX:
        raise ConfigError(
            f"history_keep: {value!r} must be a whole number from 1 (only the live version) to {HISTORY_KEEP_MAX};"
            f" history is always bounded (default {HISTORY_KEEP_DEFAULT})"
        )
    return value
