"""The replicated unit: a signed, versioned item under a namespaced key.

The mesh replicates one map ``key -> SignedItem``. A version is a hybrid
logical clock stamp with the author's key id as the final tie-break, so every
node orders two versions of a key the same way (a last-writer-wins register
per key). The gossip core never looks inside ``payload``; whether an item may
be admitted is decided by a validator injected from ``policy/``.

The signature covers ``signing_bytes()``: a fixed-order msgpack list of the
key, the version and the payload, so it covers exactly the bytes that travel.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

from .errors import ConfigError, ProtocolError

# Limits checked by ``SignedItem.from_wire`` before an item is built: declared in the wire registry.
from .wire import MAX_AUTHOR_LEN, MAX_ITEM_BYTES, MAX_KEY_LEN, MAX_PAYLOAD_BYTES, MAX_SIGNATURE_LEN, MAX_SIGNATURES

SIGNING_DOMAIN = "grapevine/item/1"


class Version(NamedTuple):
    """A hybrid logical clock stamp plus the author key id as tie-break.

    Tuples compare field by field, so ``Version`` ordering is exactly
    (wall_ms, counter, author).
    """

    wall_ms: int
    counter: int
    author: str

    # The one text form of a version, the one operators see and type (API, CLI, logs, history):
    # ``WALL_MS.COUNTER.AUTHOR``. The author may itself hold dots; the first two never do.
    def __str__(self) -> str:
        return f"{self.wall_ms}.{self.counter}.{self.author}"

    @property
    def stamp(self) -> str:
        """``WALL_MS.COUNTER``: the clock stamp alone (a converge order names ``bundle@stamp``)."""
        return f"{self.wall_ms}.{self.counter}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """``str(v)`` back to ``v``; ``ConfigError`` (reason Malformed) for anything else."""
        m = _VERSION_TEXT.fullmatch(text) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(f"version {text!r} must look like WALL_MS.COUNTER.AUTHOR (see `grapevine history`)")
        return cls(int(m[1]), int(m[2]), m[3])

    @staticmethod
    def parse_stamp(text: str) -> tuple[int, int]:
        """``WALL_MS.COUNTER`` (optionally followed by ``.AUTHOR``) -> (wall_ms, counter); ConfigError otherwise."""
        m = _STAMP_TEXT.match(text) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(f"version stamp {text!r} must look like WALL_MS.COUNTER")
        return int(m[1]), int(m[2])


_VERSION_TEXT = re.compile(r"([0-9]{1,20})\.([0-9]{1,20})\.(.+)", re.DOTALL)
_STAMP_TEXT = re.compile(r"([0-9]{1,20})\.([0-9]{1,20})(?:\.|\Z)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedItem:
    key: str
    version: Version
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...] = ()
    # digest() result, computed once: the core hashes every item it handles.
    _digest: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or len(self.key) > MAX_KEY_LEN:
            raise ProtocolError(f"item key must be 1..{MAX_KEY_LEN} characters")
        if not isinstance(self.version, Version):
            object.__setattr__(self, "version", Version(*self.version))
        v = self.version
        if not (isinstance(v.wall_ms, int) and isinstance(v.counter, int) and v.wall_ms >= 0 and v.counter >= 0):
            raise ProtocolError(f"item {self.key!r}: version stamp must be two non-negative integers")
        if not isinstance(v.author, str) or len(v.author) > MAX_AUTHOR_LEN:
            raise ProtocolError(f"item {self.key!r}: author key id must be at most {MAX_AUTHOR_LEN} characters")
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"item {self.key!r}: payload must be bytes of at most {MAX_PAYLOAD_BYTES}")
        if len(self.signatures) > MAX_SIGNATURES:
            raise ProtocolError(f"item {self.key!r}: more than {MAX_SIGNATURES} signatures")
        for pair in self.signatures:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not isinstance(pair[0], str)
                or len(pair[0]) > MAX_AUTHOR_LEN
                or not isinstance(pair[1], bytes)
                or len(pair[1]) > MAX_SIGNATURE_LEN
            ):
                raise ProtocolError(f"item {self.key!r}: malformed signature entry")

    @property
    def author(self) -> str:
        return self.version.author

    def signing_bytes(self) -> bytes:
        """The exact bytes every signature on this item covers."""
        v = self.version
        return msgpack.packb([SIGNING_DOMAIN, self.key, v.wall_ms, v.counter, v.author, self.payload])

    def with_signature(self, key_id: str, signature: bytes) -> SignedItem:
        sigs = tuple(p for p in self.signatures if p[0] != key_id) + ((key_id, signature),)
        return SignedItem(key=self.key, version=self.version, payload=self.payload, signatures=sigs)

    def to_wire(self) -> list:
        v = self.version
        return [self.key, v.wall_ms, v.counter, v.author, self.payload, [list(p) for p in self.signatures]]

    @classmethod
    def from_wire(cls, obj: object) -> SignedItem:
        if not isinstance(obj, (list, tuple)) or len(obj) != 6:
            raise ProtocolError("item must be a list of 6 fields")
        key, wall, counter, author, payload, sigs = obj
        if not isinstance(sigs, (list, tuple)):
            raise ProtocolError("item signatures must be a list")
        if len(sigs) > MAX_SIGNATURES:
            raise ProtocolError(f"item carries more than {MAX_SIGNATURES} signatures")
        pairs = []
        for s in sigs:
            if not isinstance(s, (list, tuple)) or len(s) != 2:
                raise ProtocolError("item signature must be a [key_id, signature] pair")
            pairs.append((s[0], s[1]))
        if not isinstance(wall, int) or not isinstance(counter, int) or isinstance(wall, bool) or isinstance(counter, bool):
            raise ProtocolError("item version stamp must be integers")
        return cls(key=key, version=Version(wall, counter, author), payload=payload, signatures=tuple(pairs))

    def encode(self) -> bytes:
        """Canonical msgpack bytes of the whole item (a packed ``.gv`` file)."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes, max_bytes: int = MAX_ITEM_BYTES) -> SignedItem:
        if len(data) > max_bytes:
            raise ProtocolError(f"item of {len(data)} bytes exceeds the limit of {max_bytes}")
        try:
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=MAX_PAYLOAD_BYTES,
                max_str_len=MAX_KEY_LEN * 4,
                max_array_len=64,  # the item (6 fields) and its signature list; from_wire counts signatures
                max_map_len=0,
                max_ext_len=0,
            )
        except ProtocolError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"item is not valid msgpack: {exc}") from None
        return cls.from_wire(obj)

    def digest(self) -> bytes:
        """16-byte content hash: holders of the same key agree iff digests match."""
        d = self._digest
        if d is None:
            d = hashlib.blake2b(self.encode(), digest_size=16).digest()
            object.__setattr__(self, "_digest", d)
        return d
