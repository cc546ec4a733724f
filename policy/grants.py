"""Publisher grants: what a publisher's bundles may touch, beyond the bundle-name prefix.

A publisher key is granted one or more bundle-name prefixes. Each prefix may
carry clauses that narrow what the bundles under it may declare:

``paths``
    globs that every ``file``, ``directory`` and ``symlink`` path must match,
    and a symlink's target too (a relative target is taken from the link's
    directory). Globs are absolute paths matched component by component:
    ``*`` and ``?`` match within one component (never across ``/``), ``**``
    as a whole component matches zero or more components, so
    ``/etc/nginx/**`` covers ``/etc/nginx`` and everything below it. Paths
    are normalised first (``//``, ``.`` and ``..`` resolved textually, never
    above ``/``), so ``/etc/nginx/../shadow`` is ``/etc/shadow``.
``types``
    the resource types allowed. A grant with any clause but no ``types``
    allows ``file``, ``directory``, ``symlink`` and ``service``: ``exec``,
    ``package``, ``user`` and ``group`` run programs or change accounts (a
    group can be deleted) and must be granted by name.
``target``
    a ceiling: a selector the bundle's target must stay within. It is
    checked on the selectors as written, conservatively: the target must
    provably imply the ceiling (it contains the ceiling's conditions as
    ``and`` terms, or narrower ones such as ``os=debian`` under
    ``os in (debian, ubuntu)``). A bundle with no target, or one that cannot
    be shown to stay inside, is refused. Resource ``when`` selectors only
    narrow a bundle's target, so they cannot reach beyond the ceiling.

A prefix without clauses is unrestricted (every path, type and node), which
is what roots written before grants existed say. When several prefixes of
one publisher cover a bundle name, the bundle is admitted if any one of
their grants covers all of it. The same check runs in ``bundle pack
--trust``, in the admission of every node (so ``inject`` and gossip refuse
alike) and when a rotation re-checks stored bundles. A refusal is
``OutOfScope`` naming the resource and the grant.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from grapevine.gossip.errors import PolicyError, TrustError

from . import selectors
from .refusal import OUT_OF_SCOPE, Refusal

__all__ = ["Grant", "KNOWN_TYPES", "DEFAULT_TYPES", "normalise", "glob_matches", "implies", "violation"]

KNOWN_TYPES = ("directory", "exec", "file", "group", "package", "service", "symlink", "user")
PRIVILEGED_TYPES = ("exec", "group", "package", "user")  # run programs or change accounts: granted only by name
DEFAULT_TYPES = tuple(t for t in KNOWN_TYPES if t not in PRIVILEGED_TYPES)
PATH_TYPES = ("file", "directory", "symlink")
MAX_GLOBS = 64  # path globs per grant
MAX_GLOB_CHARS = 1024
MAX_PATH_PARTS = 256  # components in a matched path: bounds the glob matcher's table


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One bundle-name prefix of a publisher and the clauses that narrow it (None: no clause)."""

    prefix: str
    paths: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        where = f"grant {self.prefix!r}"
        if not isinstance(self.prefix, str) or not self.prefix:
            raise TrustError("a grant needs a non-empty bundle-name prefix")
        if self.paths is not None:
            if not isinstance(self.paths, (tuple, list)) or not 1 <= len(self.paths) <= MAX_GLOBS:
                raise TrustError(f"{where}: paths must be 1..{MAX_GLOBS} globs")
            globs = []
            for g in self.paths:
                if not isinstance(g, str) or not g.startswith("/") or len(g) > MAX_GLOB_CHARS or "\0" in g:
                    raise TrustError(f"{where}: path glob {g!r} must be an absolute path of at most {MAX_GLOB_CHARS} characters")
                if any(part in (".", "..") for part in g.split("/")):
                    raise TrustError(f"{where}: path glob {g!r} must not contain '.' or '..' components")
                norm = normalise(g)
                if any("**" in part and part != "**" for part in norm.split("/")):
                    raise TrustError(f"{where}: path glob {g!r}: '**' must be a whole path component (as in /srv/**)")
                globs.append(norm)
            object.__setattr__(self, "paths", tuple(sorted(set(globs))))
        if self.types is not None:
            if not isinstance(self.types, (tuple, list)) or not self.types:
                raise TrustError(f"{where}: types must be a non-empty list")
            unknown = sorted(str(t) for t in self.types if t not in KNOWN_TYPES)
            if unknown:
                raise TrustError(f"{where}: unknown resource type(s) {unknown} (known: {', '.join(KNOWN_TYPES)})")
            object.__setattr__(self, "types", tuple(sorted(set(self.types))))
        if self.target is not None:
            if not isinstance(self.target, str) or not self.target.strip():
                raise TrustError(f"{where}: target must be a selector such as role=web")
            try:
                sel = selectors.parse(self.target)
            except PolicyError as exc:
                raise TrustError(f"{where}: target: {exc}") from None
            object.__setattr__(self, "target", str(sel))

    @property
    def restricted(self) -> bool:
        return self.paths is not None or self.types is not None or self.target is not None

    @property
    def allowed_types(self) -> tuple[str, ...]:
        if self.types is not None:
            return self.types
        return DEFAULT_TYPES if self.restricted else KNOWN_TYPES

    def covers_name(self, name: str) -> bool:
        return self.prefix == "*" or name.startswith(self.prefix)

    def describe(self) -> str:
        """``web/ [paths /etc/nginx/**; types file,service; target role=web]``, or ``web/ (unrestricted)``."""
        if not self.restricted:
            return f"{self.prefix} (unrestricted)"
        return f"{self.prefix} [{'; '.join(f'{k} {v}' for k, v in self.clauses().items())}]"

    def clauses(self) -> dict[str, str]:
        """Every dimension in words: what an operator reads in ``trust show``."""
        if not self.restricted:
            return {"paths": "any", "types": "any", "target": "any"}
        return {
            "paths": ",".join(self.paths) if self.paths is not None else "any",
            "types": ",".join(self.allowed_types),
            "target": self.target if self.target is not None else "any",
        }

    def to_plain(self) -> dict:
        return {
            "paths": list(self.paths) if self.paths is not None else None,
            "target": self.target,
            "types": list(self.types) if self.types is not None else None,
        }

    @classmethod
    def from_plain(cls, prefix: str, obj: Any) -> Grant:
        if not isinstance(obj, dict) or set(obj) != {"paths", "target", "types"}:
            raise TrustError(f"grant {prefix!r} must be a map of paths, target and types")
        grant = cls(
            prefix=prefix,
            paths=tuple(obj["paths"]) if isinstance(obj["paths"], list) else obj["paths"],
            types=tuple(obj["types"]) if isinstance(obj["types"], list) else obj["types"],
            target=obj["target"],
        )
        if not grant.restricted:
            raise TrustError(f"grant {prefix!r} is stored without any clause")
        if grant.to_plain() != obj:
            raise TrustError(f"grant {prefix!r} is not in canonical form")
        return grant

    @classmethod
    def parse(cls, spec: str) -> Grant:
        """``PREFIX[;paths=GLOB,GLOB][;types=T,T][;target=SELECTOR]`` (the ``--publisher`` value after ``PUB=``)."""
        prefix, *clauses = spec.split(";")
        fields: dict[str, Any] = {}
        for clause in clauses:
            name, sep, value = clause.partition("=")
            name = name.strip()
            if not sep or name not in ("paths", "types", "target"):
                raise TrustError(f"publisher clause {clause!r}: expected paths=GLOB,..., types=TYPE,... or target=SELECTOR")
            if name in fields:
                raise TrustError(f"publisher clause {name} is given twice in {spec!r}")
            if name == "target":
                fields[name] = value.strip()
            else:
                fields[name] = tuple(v.strip() for v in value.split(",") if v.strip())
        return cls(prefix=prefix.strip(), **fields)


# -- paths ---------------------------------------------------------------------------


def normalise(path: str, base: str | None = None) -> str:
    """An absolute path with ``//``, ``.`` and ``..`` resolved as text (never above ``/``).

    A relative ``path`` is taken from the directory ``base``; without a base it is an error.
    """
    if not path.startswith("/"):
        if base is None:
            raise PolicyError(f"path {path!r} is not absolute")
        path = base.rstrip("/") + "/" + path
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def glob_matches(pattern: str, path: str) -> bool:
    """Whether normalised ``path`` matches normalised ``pattern`` (see the module docstring)."""
    pat = _parts(pattern)[0]
    got, path = _parts(path)
    if len(got) > MAX_PATH_PARTS:
        return False
    match = fnmatch.fnmatchcase
    if "**" not in pat:  # the common shapes first
        return len(pat) == len(got) and all(match(g, p) for g, p in zip(got, pat))
    first = pat.index("**")
    last = len(pat) - 1 - pat[::-1].index("**")
    head, tail = pat[:first], pat[last + 1:]
    if len(got) < len(head) + len(tail):
        return False
    if not all(match(g, p) for g, p in zip(got, head)):  # literal ends first: most paths fail here
        return False
    if tail and not all(match(g, p) for g, p in zip(got[len(got) - len(tail):], tail)):
        return False
    pat = pat[first:last + 1]
    if all(p == "**" for p in pat):
        return True
    # pat is now ** seg ** seg ... **: each run of plain components may match anywhere after the
    # previous one, and the earliest place is always as good as a later one (it leaves more room).
    # The search for it runs in the regex engine, over the middle of the path as one string.
    at = len("".join("/" + g for g in got[: len(head)]))  # where the middle starts in ``path`` ...
    end = len(path) - len("".join("/" + g for g in got[len(got) - len(tail):])) if tail else len(path)  # ... and ends
    for seg in _segments(pat):
        found = seg.search(path, at, end)
        if found is None:
            return False
        at = found.end()
    return True


@functools.lru_cache(maxsize=4096)
def _parts(path: str) -> tuple[tuple[str, ...], str]:
    """The components of ``path`` and its spelling with single slashes (what offsets refer to)."""
    parts = tuple(p for p in path.split("/") if p)
    return parts, "".join("/" + p for p in parts)


def _component_re(part: str) -> str:
    """One glob component as a regex that never matches a "/"."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1 if i < len(part) and part[i] == "!" else i
            j = j + 1 if j < len(part) and part[j] == "]" else j
            close = part.find("]", j)
            if close < 0:
                out.append(re.escape(c))
                continue
            body = part[i:close]
            i = close + 1
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("(?:(?!/)[" + body.replace("\\", "\\\\") + "])")
        else:
            out.append(re.escape(c))
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _segments(pat: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    """The runs of plain components between the ``**`` of ``pat``, compiled: each
    matches whole components, starting at a "/" and ending before one."""
    out, run = [], []
    for p in pat + ("**",):
        if p == "**":
            if run:
                out.append(re.compile("".join("/" + _component_re(r) for r in run) + "(?=/|$)"))
            run = []
        else:
            run.append(p)
    return tuple(out)


# -- targets ---------------------------------------------------------------------------


def _atom_implies(t: selectors.Compare, c: selectors.Compare) -> bool:
    if t == c:
        return True
    if t.key != c.key or t.op not in ("=", "in"):
        return False
    values = t.values  # the node has (an element) equal to one of these
    if c.op == "in":
        return set(values) <= set(c.values)
    if c.op == "=":
        return set(values) == {c.values[0]}
    if c.op == "~=":
        return all(fnmatch.fnmatchcase(v, c.values[0]) for v in values)
    return False


def _implies(t: Any, c: Any) -> bool:
    if isinstance(c, selectors.Everything):
        return True
    if isinstance(t, selectors.Everything):
        return False
    if isinstance(c, selectors.And):
        return all(_implies(t, p) for p in c.parts)
    if isinstance(t, selectors.Or):
        return all(_implies(p, c) for p in t.parts)
    if isinstance(t, selectors.And) and any(_implies(p, c) for p in t.parts):
        return True
    if isinstance(c, selectors.Or):
        return any(_implies(t, p) for p in c.parts)
    if isinstance(t, selectors.Compare) and isinstance(c, selectors.Compare):
        return _atom_implies(t, c)
    return t == c


def implies(target: str | None, ceiling: str | None) -> bool:
    """True only if every node ``target`` matches also matches ``ceiling`` (sound, not complete)."""
    return _implies(selectors.parse(target).tree, selectors.parse(ceiling).tree)


# -- bundles ---------------------------------------------------------------------------


def _resource_violation(grant: Grant, raw: Mapping[str, Any], index: int) -> str | None:
    from .resources import entry_type

    try:
        rtype = entry_type(raw)
    except PolicyError as exc:
        return f"resource #{index}: cannot tell its type ({exc})"
    name = raw.get(rtype)
    label = f"resource {rtype}:{name}"
    if rtype not in grant.allowed_types:
        return f"{label}: type {rtype} is not granted (allowed: {', '.join(grant.allowed_types)})"
    if grant.paths is None or rtype not in PATH_TYPES:
        return None
    if not isinstance(name, str) or not name.startswith("/"):
        return f"{label}: the path must be absolute"
    path = normalise(name)
    if not any(glob_matches(g, path) for g in grant.paths):
        return f"{label}: path {path} is outside the granted paths"
    to = raw.get("to")
    if rtype == "symlink" and to is not None:
        if not isinstance(to, str) or not to or "\0" in to:
            return f"{label}: the link target must be a path"
        dest = normalise(to, base=path.rsplit("/", 1)[0] or "/")
        if not any(glob_matches(g, dest) for g in grant.paths):
            return f"{label}: link target {dest} is outside the granted paths"
    return None


def violation(grant: Grant, bundle: Any) -> str | None:
    """Why ``bundle`` steps outside ``grant`` (the first reason found), or None."""
    if not grant.restricted:
        return None
    if grant.target is not None:
        try:
            inside = implies(bundle.target, grant.target)
        except PolicyError as exc:
            return f"target: {exc}"
        if not inside:
            shown = repr(bundle.target) if bundle.target else "(every node)"
            return (f"target {shown} is not within the ceiling {grant.target!r}"
                    f" (write the target as ({grant.target}) and ...)")
    for i, raw in enumerate(bundle.resources, start=1):
        why = _resource_violation(grant, raw, i)
        if why is not None:
            return why
    return None


def check_bundle(grants: Iterable[Grant], author: str, bundle: Any) -> None:
    """Raise ``Refusal(OutOfScope)`` unless one of ``grants`` (the author's, covering the name) covers the bundle."""

    reasons = []
    for grant in grants:
        why = violation(grant, bundle)
        if why is None:
            return
        reasons.append(f"{why}, under grant {grant.describe()}")
    if not reasons:
        raise Refusal(OUT_OF_SCOPE, f"key {author} has no grant covering bundle {bundle.name!r}")
    raise Refusal(OUT_OF_SCOPE, f"bundle {bundle.name!r} by {author}: " + "; ".join(reasons))
