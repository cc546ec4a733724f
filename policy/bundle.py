"""A policy bundle and its one canonical byte form.

A bundle is plain data: a name, a target selector, the resource entries as
written, attached file contents, and values sealed to single nodes. It
travels as the payload of the ``SignedItem`` ``bundle/<name>``; the item's
version (hybrid logical clock stamp + author key id) and signatures live on
the item, and the signature covers ``SignedItem.signing_bytes()``, which
embeds these payload bytes verbatim.

The encoding is canonical: a msgpack map with keys in sorted order at every
level, lists for sequences, ``bin`` for bytes, ``str`` for text. Packing the
same input twice gives identical bytes, and the order keys were written in
does not matter. ``Bundle.decode`` accepts only canonical bytes (it re-encodes
what it read and compares), so there is exactly one byte string per bundle.

Because dicts are stored key-sorted, the type of a resource entry is found
by which known type key it has (``file``, ``package``, ...), never by the
position of that key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from grapevine.gossip.errors import PolicyError, ProtocolError
from grapevine.gossip.item import MAX_KEY_LEN, SignedItem, Version
from grapevine.gossip.wire import MAX_SELECTOR_CHARS

from .rollout import RolloutPlan

if TYPE_CHECKING:
    from .keys import SigningKey

BUNDLE_KEY_PREFIX = "bundle/"
FORMAT = 1  # bumped only with a reader for the old format next to the new one
MAX_BUNDLE_BYTES = 1024 * 1024  # policy plus small attached files; large artefacts belong in packages
MAX_NAME_LEN = MAX_KEY_LEN - len(BUNDLE_KEY_PREFIX)  # so "bundle/<name>" always fits an item key
MAX_RESOURCES = 10_000  # far above any hand-written bundle; bounds decode work
MAX_FILES = 1_000  # attached templates and files per bundle
MAX_FILE_NAME_LEN = 255  # one path component on common filesystems
MAX_DEPTH = 32  # nesting of resource values; real entries are 2-3 levels deep
MAX_TARGET_LEN = MAX_SELECTOR_CHARS  # a selector expression, not a program
MAX_CONTAINER_LEN = 100_000  # any one list or map while decoding
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what msgpack can carry
# Values in one bundle's resources: each packs to at least one byte, so a bundle
# holding more could never be packed. Bounds the walk when YAML aliases repeat
# one list many times (a few hundred bytes can name billions of values).
MAX_VALUES = MAX_BUNDLE_BYTES

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
DOC_KEYS = {"bundle", "target", "files", "resources", "secrets", "rollout"}
ENCODED_KEYS = {"format", "name", "target", "resources", "files", "secrets"}  # plus "rollout" when a plan is carried


def canonical(value: Any, where: str, depth: int = 0, budget: list[int] | None = None) -> Any:
    """Return ``value`` as canonical plain data (dicts key-sorted, tuples as lists).

    Allowed: None, bool, int (64-bit), finite float, str, bytes, lists and
    string-keyed maps of those. Anything else is a ``PolicyError`` naming
    where it was found. ``budget`` (a one-element list) is the number of
    values still allowed; it is shared by the calls for one bundle.
    """
    if depth > MAX_DEPTH:
        raise PolicyError(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise PolicyError(f"{where}: more than {MAX_VALUES} values in one bundle")
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise PolicyError(f"{where}: integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PolicyError(f"{where}: {value} is not a finite number")
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return [canonical(v, f"{where}[{i}]", depth + 1, budget) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k in sorted(value, key=lambda k: (not isinstance(k, str), str(k))):
            if not isinstance(k, str):
                raise PolicyError(f"{where}: map key {k!r} is not a string")
            out[k] = canonical(value[k], f"{where}.{k}", depth + 1, budget)
        return out
    raise PolicyError(f"{where}: a {type(value).__name__} cannot be part of a bundle (use a string)")


def pack_canonical(value: Any) -> bytes:
    """msgpack bytes of already-canonical data."""
    return msgpack.packb(value, use_bin_type=True)


def unpack_bounded(data: bytes, limit: int, what: str) -> Any:
    """Decode msgpack from outside, every length bounded before decoding."""
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{what} must be bytes")
    if len(data) > limit:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds the limit of {limit}")
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what} is not valid msgpack: {exc}") from None


def check_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{source}: a bundle needs a name (`bundle: web/nginx`)")
    if len(name) > MAX_NAME_LEN:
        raise PolicyError(f"{source}: bundle name is {len(name)} characters, at most {MAX_NAME_LEN} allowed")
    if not NAME_RE.fullmatch(name):
        raise PolicyError(
            f"{source}: bundle name {name!r} must be /-separated parts of letters, digits, '.', '_' or '-'"
            " (each part starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    name: str
    target: str | None = None
    resources: tuple[dict, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    # secret name -> {node key id -> value sealed to that node}; see policy/secrets.py
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # the staged-rollout plan (policy/rollout.py), signed with the rest; None: apply on arrival
    rollout: RolloutPlan | None = None

    def __post_init__(self) -> None:
        src = f"bundle {self.name!r}"
        check_name(self.name, src)
        if self.target is not None and (not isinstance(self.target, str) or len(self.target) > MAX_TARGET_LEN):
            raise PolicyError(f"{src}: target must be a selector string of at most {MAX_TARGET_LEN} characters")
        if self.target is not None and not self.target.strip():
            object.__setattr__(self, "target", None)
        if not isinstance(self.resources, tuple):
            if not isinstance(self.resources, list):
                raise PolicyError(f"{src}: resources must be a list")
            object.__setattr__(self, "resources", tuple(self.resources))
        if len(self.resources) > MAX_RESOURCES:
            raise PolicyError(f"{src}: {len(self.resources)} resources, at most {MAX_RESOURCES} allowed")
        res = []
        budget = [MAX_VALUES]
        for i, r in enumerate(self.resources):
            if not isinstance(r, dict) or not r:
                raise PolicyError(f"{src}: resource #{i + 1} must be a non-empty mapping such as `file: /etc/motd`")
            res.append(canonical(r, f"{src} resource #{i + 1}", budget=budget))
        object.__setattr__(self, "resources", tuple(res))
        if not isinstance(self.files, dict) or len(self.files) > MAX_FILES:
            raise PolicyError(f"{src}: files must be a mapping of at most {MAX_FILES} names to contents")
        files = {}
        for fname in sorted(self.files, key=str):
            content = self.files[fname]
            if not isinstance(fname, str) or not fname or len(fname) > MAX_FILE_NAME_LEN or "\0" in fname:
                raise PolicyError(f"{src}: attached file name {fname!r} must be 1..{MAX_FILE_NAME_LEN} characters")
            if isinstance(content, str):
                content = content.encode("utf-8")
            if not isinstance(content, (bytes, bytearray)):
                raise PolicyError(f"{src}: attached file {fname!r} must be text or bytes")
            files[fname] = bytes(content)
        object.__setattr__(self, "files", files)
        if not isinstance(self.secrets, dict):
            raise PolicyError(f"{src}: secrets must be a mapping")
        secrets = {}
        for sname in sorted(self.secrets, key=str):
            sealed = self.secrets[sname]
            if not isinstance(sname, str) or not sname or len(sname) > MAX_FILE_NAME_LEN:
                raise PolicyError(f"{src}: secret name {sname!r} must be 1..{MAX_FILE_NAME_LEN} characters")
            if not isinstance(sealed, dict) or not all(
                isinstance(k, str) and isinstance(v, bytes) for k, v in sealed.items()
            ):
                raise PolicyError(f"{src}: secret {sname!r} must map node key ids to sealed bytes (seal it when packing)")
            secrets[sname] = {k: sealed[k] for k in sorted(sealed)}
        object.__setattr__(self, "secrets", secrets)
        if self.rollout is not None and not isinstance(self.rollout, RolloutPlan):
            raise PolicyError(f"{src}: rollout must be a plan (policy/rollout.py RolloutPlan)")

    @property
    def item_key(self) -> str:
        return BUNDLE_KEY_PREFIX + self.name

    @classmethod
    def from_document(cls, doc: dict, source: str) -> Bundle:
        """Build a bundle from a policy document (checks shape only)."""
        if not isinstance(doc, dict):
            raise PolicyError(f"{source}: a bundle document must be a mapping, got {type(doc).__name__}")
        unknown = sorted(set(map(str, doc)) - DOC_KEYS)
        if unknown:
            raise PolicyError(f"{source}: unknown top-level key(s) {unknown}; allowed: {sorted(DOC_KEYS)}")
        name = check_name(doc.get("bundle"), source)
        where = f"{source}: bundle {name!r}"
        target = doc.get("target")
        if target is not None and not isinstance(target, str):
            raise PolicyError(f"{where}: target must be a selector string such as 'role=web'")
        resources = doc.get("resources") or []
        if not isinstance(resources, (list, tuple)):
            raise PolicyError(f"{where}: resources must be a list")
        files = doc.get("files") or {}
        if not isinstance(files, dict):
            raise PolicyError(f"{where}: files must be a mapping of names to contents")
        secrets = doc.get("secrets") or {}
        plan = RolloutPlan.from_document(doc["rollout"], where) if doc.get("rollout") is not None else None
        try:
            return cls(name=name, target=target, resources=tuple(resources), files=dict(files), secrets=dict(secrets),
                       rollout=plan)
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def to_plain(self) -> dict:
        """The canonical map that ``encode`` packs (``rollout`` only when a plan is carried, so a bundle
        without one keeps the bytes it always had)."""
        plain = {
            "files": dict(self.files),
            "format": FORMAT,
            "name": self.name,
            "resources": list(self.resources),
            "secrets": {k: dict(v) for k, v in self.secrets.items()},
            "target": self.target,
        }
        if self.rollout is not None:
            plain["rollout"] = self.rollout.to_plain()
        return plain

    def encode(self) -> bytes:
        """Canonical msgpack bytes: same bundle, same bytes."""
        return pack_canonical(self.to_plain())

    @classmethod
    def decode(cls, data: bytes) -> Bundle:
        obj = unpack_bounded(data, MAX_BUNDLE_BYTES, "bundle")
        if not isinstance(obj, dict) or set(obj) - {"rollout"} != ENCODED_KEYS:
            raise ProtocolError(f"bundle must be a map with exactly the keys {sorted(ENCODED_KEYS)} (and a rollout plan)")
        if obj["format"] != FORMAT:
            raise ProtocolError(f"bundle format {obj['format']!r} is not supported (this version reads {FORMAT})")
        if not isinstance(obj["resources"], list):
            raise ProtocolError("bundle resources must be a list")
        bundle = cls(
            name=obj["name"],
            target=obj["target"],
            resources=tuple(obj["resources"]),
            files=obj["files"],
            secrets=obj["secrets"],
            rollout=RolloutPlan.from_plain(obj["rollout"]) if "rollout" in obj else None,
        )
        if bundle.encode() != bytes(data):
            raise ProtocolError(f"bundle {bundle.name!r} is not in canonical form")
        return bundle

    def summary(self) -> dict:
        """A JSON-friendly description (secret values are never included)."""
        return {
            "name": self.name,
            "target": self.target,
            "resources": list(self.resources),
            "files": {k: len(v) for k, v in self.files.items()},
            "secrets": {k: sorted(v) for k, v in self.secrets.items()},
            "rollout": None if self.rollout is None else self.rollout.to_document(),
        }


def pack(bundle: Bundle, key: SigningKey, now_ms: int, counter: int = 0) -> SignedItem:
    """Sign ``bundle`` as the item ``bundle/<name>`` with version (now_ms, counter, key id)."""
    payload = bundle.encode()
    if len(payload) > MAX_BUNDLE_BYTES:
        raise PolicyError(
            f"bundle {bundle.name!r} packs to {len(payload)} bytes, more than the limit of {MAX_BUNDLE_BYTES}"
        )
    item = SignedItem(key=bundle.item_key, version=Version(int(now_ms), int(counter), key.key_id), payload=payload)
    return item.with_signature(key.key_id, key.sign(item.signing_bytes()))


def bundles_from_file(path: str) -> list[Bundle]:
    """Load a policy file and build its bundles (shape checks only; secrets get sealed)."""
    from pathlib import Path

    from .authoring import attach_files, load_policy_file
    from .secrets import seal_document

    docs = load_policy_file(path)
    out = []
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        source = f"{path} (bundle #{i + 1})" if len(docs) > 1 else str(path)
        base = Path(path).parent
        b = Bundle.from_document(seal_document(attach_files(doc, base, source), base, source), source)
        if b.name in seen:
            raise PolicyError(f"{path}: bundle {b.name!r} is defined twice")
        seen.add(b.name)
        out.append(b)
    return out
