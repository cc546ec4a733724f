"""What every resource type shares: attribute schema, check/apply contract,
the converge context (root, facts, command runner, caches).

A resource goes through three phases, in this order:

1. ``prepare(ctx)`` — validate values against the node (render templates,
   resolve attached files). Raises ``PolicyError``; runs for every selected
   resource before anything is applied, so a broken policy changes nothing.
2. ``check(ctx)`` — read-only. Returns a ``Change`` (what apply would do,
   with a diff) or ``Converged(reason)``. Raises ``ResourceError`` when the
   current state cannot be read or cannot be fixed.
3. ``apply(ctx, change)`` — performs exactly the planned change.

A resource that is the target of a ``notify`` from a changed resource also
gets ``refresh(ctx)`` (restart a service, run a refresh-only exec).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from grapevine.gossip.errors import GrapevineError, PolicyError, Reason

# Captured output of a command kept in a report: enough for an error message,
# bounded so a chatty command cannot bloat the stored report.
MAX_OUTPUT_BYTES = 8 * 1024
# Default limit for commands run by providers (apt can be slow, never forever).
DEFAULT_COMMAND_TIMEOUT_S = 600.0
# Read-only probes (dpkg-query, systemctl is-active) should answer at once.
PROBE_TIMEOUT_S = 60.0
# Symlinks followed while resolving one path under the root: the kernel's own
# limit (ELOOP), so a path that works on a real node resolves here too, and a
# planted loop ends quickly.
MAX_LINKS_FOLLOWED = 40
# Secret values shorter than this are not searched for in old file contents
# and reports (a one-letter value would hide every diff); a file rendered
# from a secret is hidden whatever the value's length.
MIN_SCRUBBED_SECRET = 4

COMMON_ATTRS = ("require", "notify", "when")


class ResourceError(GrapevineError):
    """A resource could not be checked or applied on this node (not a policy error)."""

    reason = Reason.FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class Attr:
    """Schema of one attribute: kind is str, bool, int, mode, list, dict, command, path."""

    kind: str
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A planned change: one summary line per difference and a diff to show."""

    summary: tuple[str, ...]
    diff: str = ""
    data: Any = None  # provider-private details for apply


@dataclass(frozen=True, slots=True, kw_only=True)
class Converged:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


def _tail_file(fh: Any) -> str:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - MAX_OUTPUT_BYTES))
    data = fh.read()
    prefix = "..." if size > MAX_OUTPUT_BYTES else ""
    return prefix + data.decode("utf-8", errors="replace")


def _kill_group(proc: Any) -> None:
    """Kill a command that overran, with every process it started, and reap it."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def format_argv(argv: tuple[str, ...] | list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


@dataclass(slots=True)
class Context:
    """Everything a provider may consult: root, facts, caches, the runner."""

    root: Path
    facts: Mapping[str, Any]
    dry_run: bool = False
    cache: dict[str, Any] = field(default_factory=dict)  # provider caches, one converge long
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # bundle -> opened secrets of this node
    node_key_id: str = ""  # the key that opened them ("" = this converge has no node key)
    # bundle -> (resource id or "", error): bundles that could not be prepared on this node and are not applied
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)

    def secret_values(self) -> list[str]:
        """Every opened secret value long enough to look for in old file contents and reports."""
        out = self.cache.get("secret-values")
        if out is None:
            vals = {v for per in self.secrets.values() for v in per.values() if len(v) >= MIN_SCRUBBED_SECRET}
            out = self.cache["secret-values"] = sorted(vals, key=len, reverse=True)
        return out

    def holds_secret(self, data: bytes | str | None) -> bool:
        if not data:
            return False
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return any(v in text for v in self.secret_values())

    def scrub(self, text: str) -> str:
        """``text`` with every opened secret value replaced by ``<secret>``."""
        for v in self.secret_values():
            if v in text:
                text = text.replace(v, "<secret>")
        return text

    @property
    def rooted(self) -> bool:
        return str(self.root) != "/"

    def path(self, p: str, *, follow: bool = False) -> str:
        """Map a policy path onto the root, every parent resolved inside it.

        In a rooted converge each component is looked up with ``lstat``; a
        symlink is followed only while it stays under the root (an absolute
        target must lie under the root's own path, ``..`` must not climb
        above it), otherwise ``ResourceError`` names the path and the link.
        The last component is not followed unless ``follow`` (a file
        resource replaces a link at its own path, never writes through it).
        Every read and write of a provider goes through here, so a link
        planted under the root cannot make a converge read or write a file
        outside it. Resolved parents are cached until ``forget_paths``.
        """
        if not self.rooted:
            return p
        if follow:
            return self._resolve(p, p, follow_last=True)
        parent, base = os.path.split(p if p.startswith("/") else "/" + p)
        key = "real:" + parent
        real = self.cache.get(key)
        if real is None:
            real = self.cache[key] = self._resolve(parent, p, follow_last=True)
        return os.path.join(real, base) if base else real

    def confined(self, p: str) -> str:
        """The same as ``path(p)``: kept for writers, which used to check only here."""
        return self.path(p)

    def _real_root(self) -> str:
        root = self.cache.get("real-root")
        if root is None:
            root = self.cache["real-root"] = os.path.realpath(str(self.root))
        return root

    def _inside_root(self, target: str) -> list[str] | None:
        """The components of an absolute link target below the root, None if it lies outside."""
        for prefix in {self._real_root(), os.path.normpath(str(self.root))}:
            if target == prefix or target.startswith(prefix.rstrip("/") + "/"):
                return target[len(prefix):].split("/")
        return None

    def _resolve(self, rel: str, shown: str, *, follow_last: bool) -> str:
        """Host path of policy path ``rel`` under the root; ResourceError for a link out of it."""
        import stat as stat_mod

        root = self._real_root()
        cur, links = root, 0
        todo = [c for c in reversed(rel.split("/")) if c not in ("", ".")]
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur == root:
                    raise ResourceError(f"{shown}: a symlink on the way climbs above the root {self.root}; refusing to follow it")
                cur = os.path.dirname(cur)
                continue
            nxt = os.path.join(cur, comp)
            if not todo and not follow_last:
                return nxt
            try:
                st = os.lstat(nxt)
            except (FileNotFoundError, NotADirectoryError):
                # Nothing below exists: a writer creates real directories there.
                rest = [c for c in reversed(todo) if c not in ("", ".")]
                if ".." in rest:
                    raise ResourceError(f"{shown}: {self._shown(nxt)} does not exist") from None
                return os.path.join(nxt, *rest)
            except OSError as exc:
                raise ResourceError(f"{shown}: cannot look up {self._shown(nxt)}: {exc.strerror}") from None
            if not stat_mod.S_ISLNK(st.st_mode):
                cur = nxt
                continue
            links += 1
            if links > MAX_LINKS_FOLLOWED:
                raise ResourceError(f"{shown}: more than {MAX_LINKS_FOLLOWED} symlinks on the way (a loop?)")
            target = os.readlink(nxt)
            if target.startswith("/"):
                inside = self._inside_root(os.path.normpath(target) if "/../" not in target + "/" else target)
                if inside is None:
                    raise ResourceError(
                        f"{shown}: {self._shown(nxt)} is a symlink to {target}, outside the root {self.root};"
                        " refusing to follow it"
                    )
                cur = root
                todo.extend(reversed(inside))
            else:
                todo.extend(reversed(target.split("/")))
        return cur

    def _shown(self, host_path: str) -> str:
        """A host path under the root as the policy names it."""
        root = self._real_root()
        return host_path[len(root):] or "/" if host_path.startswith(root) else host_path

    def forget_paths(self) -> None:
        """Drop resolved parents after a symlink was created or changed, or a command ran."""
        for key in [k for k in self.cache if k.startswith("real:")]:
            del self.cache[key]

    def run(
        self,
        argv: list[str] | tuple[str, ...],
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        shell: bool = False,
    ) -> CommandResult:
        """Run a command with a timeout; output is captured and bounded."""
        import subprocess  # imported here: a converge of files only never pays for it
        import tempfile

        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        args = tuple(argv)
        # Output goes to unnamed temporary files, not pipes: memory stays
        # bounded whatever a command prints, and a killed command's children
        # cannot keep us waiting on a pipe they inherited.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    args[0] if shell else list(args),
                    shell=shell,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,  # its own process group, killed as a whole on timeout
                )
            except FileNotFoundError as exc:
                raise ResourceError(f"command not found: {exc.filename or args[0]}") from None
            except OSError as exc:
                raise ResourceError(f"cannot run {format_argv(args)}: {exc.strerror}") from None
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise ResourceError(f"command timed out after {timeout:g}s: {format_argv(args)}") from None
            except BaseException:
                _kill_group(proc)
                raise
            return CommandResult(argv=args, returncode=returncode, stdout=_tail_file(out), stderr=_tail_file(err))

    def must(self, argv: list[str], **kw: Any) -> CommandResult:
        """Run and raise ResourceError naming the command on a non-zero exit."""
        res = self.run(argv, **kw)
        if res.returncode != 0:
            raise ResourceError(f"{format_argv(argv)} exited {res.returncode}: {res.output()[-500:]}")
        return res


class Resource:
    """Base of every resource type. Subclasses set TYPE and ATTRS."""

    TYPE: ClassVar[str] = ""
    ATTRS: ClassVar[dict[str, Attr]] = {}
    NAME_IS_PATH: ClassVar[bool] = False
    REFRESHABLE: ClassVar[bool] = False

    __slots__ = ("id", "name", "attrs", "bundle", "files")

    def __init__(self, *, name: str, attrs: dict[str, Any], bundle: str, files: Mapping[str, bytes]) -> None:
        self.id = f"{self.TYPE}:{name}"
        self.name = name
        self.attrs = attrs  # validated and with defaults filled in
        self.bundle = bundle
        self.files = files

    # ---- schema ----------------------------------------------------------

    @classmethod
    def validate(cls, name: Any, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Check the entry against ATTRS; returns (name, attrs with defaults)."""
        if not isinstance(name, str) or not name:
            raise PolicyError(f"the name of a {cls.TYPE} must be a non-empty string, not {name!r}")
        if cls.NAME_IS_PATH and not (name.startswith("/") and "\0" not in name):
            raise PolicyError(f"{cls.TYPE} path {name!r} must be absolute")
        if cls.NAME_IS_PATH and "/../" in name + "/":
            raise PolicyError(f"{cls.TYPE} path {name!r} must not contain '..'")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key in COMMON_ATTRS or key == cls.TYPE:
                continue
            spec = cls.ATTRS.get(key)
            if spec is None:
                known = ", ".join(sorted(set(cls.ATTRS) | set(COMMON_ATTRS)))
                raise PolicyError(f"unknown attribute {key!r} for {cls.TYPE} (known: {known})")
            out[key] = _coerce(cls.TYPE, key, spec, value)
        for key, spec in cls.ATTRS.items():
            if key not in out:
                if spec.required:
                    raise PolicyError(f"missing attribute {key!r} (a {cls.TYPE} needs it)")
                out[key] = spec.default
        cls.validate_combination(name, out)
        return name, out

    @classmethod
    def validate_combination(cls, name: str, attrs: dict[str, Any]) -> None:
        """Rules across attributes (content and source together, ...)."""

    # ---- phases ----------------------------------------------------------

    def prepare(self, ctx: Context) -> None:
        """Resolve what needs facts (templates); raise PolicyError."""

    def check(self, ctx: Context) -> Change | Converged:
        raise NotImplementedError

    def apply(self, ctx: Context, change: Change) -> str:
        """Carry out ``change``; return command output worth keeping ('' if none)."""
        raise NotImplementedError

    def refresh(self, ctx: Context, *, just_changed: Change | None = None) -> Change | None:
        """What a notify does to this resource (None: nothing).

        ``just_changed`` is the change this converge already applied to the
        resource itself, if any (a service just started needs no restart).
        """
        return None

    def apply_refresh(self, ctx: Context, change: Change) -> str:
        return self.apply(ctx, change)

    def __repr__(self) -> str:
        return f"<{self.id} from {self.bundle}>"


# ---------------------------------------------------------------- coercion


def parse_mode(value: Any) -> int:
    """'0644', '644', 0o644 or 420 -> 0o644; PolicyError otherwise."""
    if isinstance(value, bool):
        raise PolicyError(f"bad mode {value!r}: expected an octal string such as '0644'")
    if isinstance(value, int):
        # YAML reads `0644` as the int 420 and TOML `0o644` likewise, so an int
        # is the numeric mode. `mode: 644` (decimal 644 = 0o1204) is almost
        # certainly a forgotten leading zero: refuse it rather than guess.
        text = str(value)
        if value > 0o777 and set(text) <= set("01234567"):
            raise PolicyError(f"bad mode {value!r}: ambiguous number; write it as a quoted string such as '0{text}'")
        if not 0 <= value <= 0o7777:
            raise PolicyError(f"bad mode {value!r}: expected an octal string such as '0644'")
        mode = value
    elif isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("0o"):
            text = text[2:]
        if not text or not set(text) <= set("01234567") or len(text) > 4:
            raise PolicyError(f"bad mode {value!r}: expected 3 or 4 octal digits such as '0644'")
        mode = int(text, 8)
    else:
        raise PolicyError(f"bad mode {value!r}: expected an octal string such as '0644'")
    if mode > 0o7777:
        raise PolicyError(f"bad mode {value!r}: more than 4 octal digits")
    return mode


def _coerce(rtype: str, key: str, spec: Attr, value: Any) -> Any:
    where = f"attribute {key!r}"
    kind = spec.kind
    if value is None:
        if spec.required:
            raise PolicyError(f"{where} must not be empty")
        return spec.default
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise PolicyError(f"{where} must be a string, not {type(value).__name__}")
        value = str(value)
        if spec.choices and value not in spec.choices:
            raise PolicyError(f"{where} is {value!r}; expected one of {', '.join(spec.choices)}")
        return value
    if kind == "path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise PolicyError(f"{where} must be an absolute path, not {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.lower() in ("true", "yes", "on")
        raise PolicyError(f"{where} must be true or false, not {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise PolicyError(f"{where} must be a number, not {value!r}")
        if isinstance(value, (int, float)) and value >= 0:
            return value
        if isinstance(value, str):
            try:
                n = float(value) if "." in value else int(value)
            except ValueError:
                pass
            else:
                if n >= 0:
                    return n
        raise PolicyError(f"{where} must be a non-negative number, not {value!r}")
    if kind == "mode":
        return parse_mode(value)
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            raise PolicyError(f"{where} must be a list of strings")
        return tuple(str(v) for v in value)
    if kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise PolicyError(f"{where} must be a mapping of names to strings")
        return {str(k): str(v) for k, v in value.items()}
    if kind == "command":
        if isinstance(value, str):
            if not value.strip():
                raise PolicyError(f"{where} must not be empty")
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return tuple(str(v) for v in value)
        raise PolicyError(f"{where} must be a shell string or a non-empty list of arguments")
    raise AssertionError(f"unknown attribute kind {kind}")  # a bug in a schema, not in a policy


def ref_list(value: Any, what: str) -> tuple[str, ...]:
    """A require/notify value: one 'type:name' string or a list of them."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{what} must be a resource id like 'package:nginx' or a list of them")
    for v in value:
        rtype, sep, rname = v.partition(":")
        if not sep or not rtype or not rname:
            raise PolicyError(f"{what} entry {v!r} is not a resource id like 'package:nginx'")
    return tuple(value)
