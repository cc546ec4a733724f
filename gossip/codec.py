"""The wire format: one msgpack array per message, one owner of the numbers.

A frame is ``[protocol_version, type_number, field, field, ...]``. The type
numbers below ARE the protocol: ONLY APPEND TO THE REGISTRY, never renumber
or reuse a number. Fields travel in declaration order.

``decode`` refuses bad input with ``ProtocolError`` in three stages, and
builds nothing until all of them pass:

1. the frame length is checked against ``MAX_FRAME_BYTES`` before any byte
   is looked at;
2. a header walk checks the msgpack structure without building objects:
   nesting depth, string, binary and array lengths, element count, no maps,
   no extension types, nothing trailing, nothing truncated;
3. msgpack decodes (with the same limits again), then each field is checked
   against its schema and the message dataclass validates itself.

The core never encodes; only drivers that put bytes on a wire call
``encode``. ``encoded_size`` gives the simulator byte counts cheaply.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import msgpack

from . import messages as m
from . import wire
from .errors import ProtocolError
from .item import SignedItem

# Every limit is declared (with the reason for its value) in the wire registry; all are checked
# before a body is decoded. ``MAX_FRAME_BYTES`` here is the gossip message bound, inside an envelope.
from .wire import (  # noqa: F401  (re-exported: callers and tests read codec.MAX_*)
    MAX_AUTHOR_LEN, MAX_BROADCAST_BYTES, MAX_IDS, MAX_KEY_ENTRIES, MAX_KEY_LEN, MAX_LEAF_GROUPS, MAX_LEAVES,
    MAX_NODE_ID_BYTES, MAX_PEERS, MAX_TOP_DIGESTS, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
)
from .wire import MAX_GOSSIP_ARRAY_LEN as MAX_ARRAY_LEN
from .wire import MAX_GOSSIP_BIN_LEN as MAX_BIN_LEN
from .wire import MAX_GOSSIP_DEPTH as MAX_DEPTH
from .wire import MAX_GOSSIP_ELEMENTS as MAX_ELEMENTS
from .wire import MAX_GOSSIP_FRAME_BYTES as MAX_FRAME_BYTES
from .wire import MAX_GOSSIP_STR_LEN as MAX_STR_LEN
from .wire import MAX_SYNC_ITEMS as MAX_ITEMS

assert m.DIGEST_LEN == wire.DIGEST_LEN, "gossip/messages.py must agree with the wire registry"

# ONLY APPEND TO THIS LIST. The numbers are the protocol.
REGISTRY: dict[int, type] = {
    1: m.Join,
    2: m.ForwardJoin,
    3: m.Welcome,
    4: m.Neighbor,
    5: m.NeighborReply,
    6: m.Disconnect,
    7: m.Shuffle,
    8: m.ShuffleReply,
    9: m.Ping,
    10: m.Pong,
    11: m.Push,
    12: m.Ephemeral,
    13: m.IHave,
    14: m.Graft,
    15: m.Prune,
    16: m.SyncRoot,
    17: m.SyncTop,
    18: m.SyncLeaves,
    19: m.SyncKeys,
    20: m.SyncItems,
}
TYPE_NUMBERS: dict[type, int] = {cls: n for n, cls in REGISTRY.items()}


# --- field schemas: (to_wire, from_wire) ----------------------------------


def _bad(what: str) -> ProtocolError:
    return ProtocolError(what)


def _fits_node_id(v: str) -> bool:
    """At most ``MAX_NODE_ID_BYTES`` in UTF-8 (what the envelope allows), cheaply for ASCII ids."""
    return len(v) <= MAX_NODE_ID_BYTES and (v.isascii() or len(v.encode()) <= MAX_NODE_ID_BYTES)


def _node_id(v: Any) -> str:
    if type(v) is not str or not v or not _fits_node_id(v):
        raise _bad(f"node id must be a string of 1..{MAX_NODE_ID_BYTES} bytes")
    return v


def _uint(v: Any) -> int:
    if type(v) is not int or v < 0 or v >= 1 << 63:
        raise _bad("expected a non-negative integer below 2**63")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _bad("expected a bool")
    return v


def _digest(v: Any) -> bytes:
    if type(v) is not bytes or len(v) != m.DIGEST_LEN:
        raise _bad(f"expected a {m.DIGEST_LEN}-byte digest")
    return v


def _origin(v: Any) -> str:
    if type(v) is not str or not _fits_node_id(v):
        raise _bad(f"origin must be a node id of at most {MAX_NODE_ID_BYTES} bytes, or empty")
    return v


def _cause(v: Any) -> bytes:
    if type(v) is not bytes or len(v) not in (0, m.DIGEST_LEN):
        raise _bad(f"expected an empty or {m.DIGEST_LEN}-byte message id")
    return v


def _payload(v: Any) -> bytes:
    if type(v) is not bytes or len(v) > MAX_BROADCAST_BYTES:
        raise _bad(f"broadcast payload must be bytes of at most {MAX_BROADCAST_BYTES}")
    return v


def _key(v: Any) -> str:
    if type(v) is not str or not v or len(v) > MAX_KEY_LEN:
        raise _bad(f"key must be a string of 1..{MAX_KEY_LEN} characters")
    return v


def _list(v: Any, limit: int, what: str) -> list:
    if type(v) is not list:
        raise _bad(f"{what} must be a list")
    if len(v) > limit:
        raise _bad(f"{what} holds {len(v)} entries, more than the limit of {limit}")
    return v


def _peers_in(v: Any) -> tuple[str, ...]:
    return tuple(_node_id(p) for p in _list(v, MAX_PEERS, "peer list"))


def _ihave_in(v: Any) -> tuple[tuple[bytes, int], ...]:
    out = []
    for e in _list(v, MAX_IDS, "announcement list"):
        e = _list(e, 2, "announcement")
        if len(e) != 2:
            raise _bad("announcement must be [id, hops]")
        out.append((_digest(e[0]), _uint(e[1])))
    return tuple(out)


def _ids_in(v: Any) -> tuple[bytes, ...]:
    return tuple(_digest(d) for d in _list(v, MAX_IDS, "id list"))


def _digests_in(v: Any) -> tuple[bytes, ...]:
    return tuple(_digest(d) for d in _list(v, MAX_TOP_DIGESTS, "digest list"))


def _groups_in(v: Any) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
    out = []
    for g in _list(v, MAX_LEAF_GROUPS, "leaf groups"):
        g = _list(g, 2, "leaf group")
        if len(g) != 2:
            raise _bad("leaf group must be [index, digests]")
        out.append((_uint(g[0]), _digests_in(g[1])))
    return tuple(out)


def _leaves_in(v: Any) -> tuple[int, ...]:
    return tuple(_uint(x) for x in _list(v, MAX_LEAVES, "leaf list"))


def _entries_in(v: Any) -> tuple[m.KeyEntry, ...]:
    out = []
    for e in _list(v, MAX_KEY_ENTRIES, "key entries"):
        e = _list(e, 5, "key entry")
        if len(e) != 5:
            raise _bad("key entry must be [key, wall_ms, counter, author, digest]")
        author = e[3]
        if type(author) is not str or len(author) > MAX_AUTHOR_LEN:
            raise _bad("key entry author must be a short string")
        out.append((_key(e[0]), _uint(e[1]), _uint(e[2]), author, _digest(e[4])))
    return tuple(out)


def _item_in(v: Any) -> SignedItem:
    return SignedItem.from_wire(v)


def _items_in(v: Any) -> tuple[SignedItem, ...]:
    return tuple(SignedItem.from_wire(x) for x in _list(v, MAX_ITEMS, "item list"))


def _keys_in(v: Any) -> tuple[str, ...]:
    return tuple(_key(k) for k in _list(v, MAX_ARRAY_LEN, "key list"))


def _same(v: Any) -> Any:
    return v


def _tuples_out(v: Any) -> list:
    return [list(x) for x in v]


Field = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]

# Per message type: (field name, to_wire, from_wire), in wire order.
SCHEMAS: dict[type, tuple[Field, ...]] = {
    m.Join: (),
    m.ForwardJoin: (("joiner", _same, _node_id), ("ttl", _same, _uint)),
    m.Welcome: (),
    m.Neighbor: (("high_priority", _same, _bool),),
    m.NeighborReply: (("accepted", _same, _bool),),
    m.Disconnect: (("leaving", _same, _bool),),
    m.Shuffle: (("origin", _same, _node_id), ("ttl", _same, _uint), ("peers", list, _peers_in)),
    m.ShuffleReply: (("peers", list, _peers_in),),
    m.Ping: (),
    m.Pong: (),
    m.Push: (("hops", _same, _uint), ("item", SignedItem.to_wire, _item_in), ("origin", _same, _origin)),
    m.Ephemeral: (
        ("msg_id", _same, _digest),
        ("origin", _same, _node_id),
        ("deadline_ms", _same, _uint),
        ("hops", _same, _uint),
        ("payload", _same, _payload),
    ),
    m.IHave: (("entries", _tuples_out, _ihave_in), ("pull", _same, _bool)),
    m.Graft: (("msg_ids", list, _ids_in), ("origin", _same, _origin)),
    m.Prune: (("cause", _same, _cause),),
    m.SyncRoot: (("root", _same, _digest), ("count", _same, _uint)),
    m.SyncTop: (("digests", list, _digests_in),),
    m.SyncLeaves: (("groups", lambda gs: [[i, list(ds)] for i, ds in gs], _groups_in),),
    m.SyncKeys: (("leaves", list, _leaves_in), ("entries", _tuples_out, _entries_in)),
    m.SyncItems: (("items", lambda its: [i.to_wire() for i in its], _items_in), ("want", list, _keys_in)),
}
assert set(SCHEMAS) == set(REGISTRY.values()) == set(m.MESSAGE_TYPES), "every message needs a number and a schema"

# Fields appended to a message after it first shipped: a frame may end
# before them (an older sender) and then they take their default. Encoding
# leaves them out while they hold the default, so such frames stay
# byte-identical to what older nodes send and read. ONLY APPEND.
OPTIONAL_TRAILING: dict[type, int] = {m.Push: 1, m.IHave: 1, m.Graft: 1}
_DEFAULTS: dict[type, tuple[Any, ...]] = {
    cls: tuple(cls.__dataclass_fields__[name].default for name, _, _ in SCHEMAS[cls][len(SCHEMAS[cls]) - k :])
    for cls, k in OPTIONAL_TRAILING.items()
}


# --- encoding -----------------------------------------------------------------


def encode(msg: m.Message) -> bytes:
    """The frame for ``msg``. Raises ``ProtocolError`` for a non-message."""
    cls = type(msg)
    number = TYPE_NUMBERS.get(cls)
    if number is None:
        raise ProtocolError(f"cannot encode {cls.__name__}: not a registered message type")
    frame: list[Any] = [PROTOCOL_VERSION, number]
    for name, to_wire, _ in SCHEMAS[cls]:
        frame.append(to_wire(getattr(msg, name)))
    defaults = _DEFAULTS.get(cls)
    if defaults is not None:
        for default in reversed(defaults):
            if frame[-1] != default or type(frame[-1]) is not type(default):
                break
            frame.pop()
    data = msgpack.packb(frame, use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"{cls.__name__} encodes to {len(data)} bytes, above MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return data


_ITEM_SIZES: dict[bytes, int] = {}
_ITEM_SIZES_MAX = 200_000  # cache entries before the size cache starts over


def _item_size(item: SignedItem) -> int:
    d = item.digest()
    size = _ITEM_SIZES.get(d)
    if size is None:
        if len(_ITEM_SIZES) >= _ITEM_SIZES_MAX:
            _ITEM_SIZES.clear()
        size = len(item.encode())
        _ITEM_SIZES[d] = size
    return size


def _uint_size(v: int) -> int:
    return 1 if v < 128 else 2 if v < 256 else 3 if v < 65536 else 5 if v < 1 << 32 else 9


def _str_size(s: str) -> int:
    n = len(s) if s.isascii() else len(s.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


def _array_header(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def encoded_size(msg: m.Message) -> int:
    """``len(encode(msg))``, computed from the fields for the frequent messages."""
    cls = type(msg)
    fixed = _FIXED_SIZES.get(cls)
    if fixed is not None:
        return fixed
    if cls is m.Neighbor or cls is m.NeighborReply or cls is m.Disconnect:
        return 4  # [version, type, bool]
    if cls is m.ForwardJoin:
        return 3 + _str_size(msg.joiner) + _uint_size(msg.ttl)  # type: ignore[union-attr]
    if cls is m.Shuffle:
        peers = msg.peers  # type: ignore[union-attr]
        return 3 + _str_size(msg.origin) + _uint_size(msg.ttl) + _array_header(len(peers)) + sum(map(_str_size, peers))  # type: ignore[union-attr]
    if cls is m.ShuffleReply:
        peers = msg.peers  # type: ignore[union-attr]
        return 3 + _array_header(len(peers)) + sum(map(_str_size, peers))
    if cls is m.Graft:
        n = len(msg.msg_ids)  # type: ignore[union-attr]
        origin = msg.origin  # type: ignore[union-attr]
        return 3 + _array_header(n) + 18 * n + (_str_size(origin) if origin else 0)
    if cls is m.SyncTop:
        n = len(msg.digests)  # type: ignore[union-attr]
        return 3 + _array_header(n) + 18 * n
    if cls is m.Push:
        origin = msg.origin  # type: ignore[union-attr]
        return 3 + _uint_size(msg.hops) + _item_size(msg.item) + (_str_size(origin) if origin else 0)  # type: ignore[union-attr]
    if cls is m.IHave:
        entries = msg.entries  # type: ignore[union-attr]
        n = len(entries)
        size = 3 + (1 if n < 16 else 3 if n < 65536 else 5) + 19 * n + (1 if msg.pull else 0)  # type: ignore[union-attr]
        for _, hops in entries:
            size += _uint_size(hops)
        return size
    if cls is m.SyncRoot:
        return 3 + 18 + _uint_size(msg.count)  # type: ignore[union-attr]
    if cls is m.Prune:
        return 5 if not msg.cause else 21  # type: ignore[union-attr]
    if cls is m.SyncItems and msg.items:  # type: ignore[union-attr]
        items = msg.items  # type: ignore[union-attr]
        n = len(items)
        header = 1 if n < 16 else 3 if n < 65536 else 5
        rest = len(encode(m.SyncItems(items=(), want=msg.want)))  # type: ignore[union-attr]
        return rest - 1 + header + sum(_item_size(i) for i in items)
    return len(encode(msg))


# --- decoding -----------------------------------------------------------------

# Messages without fields always encode to the same few bytes.
_FIXED_SIZES: dict[type, int] = {cls: len(encode(cls())) for cls, schema in SCHEMAS.items() if not schema}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def check_structure(data: bytes) -> None:
    """Walk the msgpack headers of ``data`` and enforce the size limits.

    Builds no objects: string and binary bodies are skipped by length. Raises
    ``ProtocolError`` naming the first limit that does not hold.
    """
    n = len(data)
    pos = 0
    remaining = [1]  # items still expected at each open nesting level
    elements = 0
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= n:
            raise ProtocolError("truncated frame")
        elements += 1
        if elements > MAX_ELEMENTS:
            raise ProtocolError(f"frame holds more than MAX_ELEMENTS={MAX_ELEMENTS} objects")
        b = data[pos]
        pos += 1
        length = -1  # bytes to skip
        count = -1  # array entries to open
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            continue
        if 0x90 <= b <= 0x9F:
            count = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            length = b & 0x1F
        elif b in (0xCC, 0xD0):
            length = 1
        elif b in (0xCD, 0xD1):
            length = 2
        elif b in (0xCE, 0xD2):
            length = 4
        elif b in (0xCF, 0xD3):
            length = 8
        elif b in (0xC4, 0xD9):
            if pos + 1 > n:
                raise ProtocolError("truncated frame")
            length = data[pos]
            pos += 1
        elif b in (0xC5, 0xDA, 0xDC):
            if pos + 2 > n:
                raise ProtocolError("truncated frame")
            v = _U16.unpack_from(data, pos)[0]
            pos += 2
            if b == 0xDC:
                count = v
            else:
                length = v
        elif b in (0xC6, 0xDB, 0xDD):
            if pos + 4 > n:
                raise ProtocolError("truncated frame")
            v = _U32.unpack_from(data, pos)[0]
            pos += 4
            if b == 0xDD:
                count = v
            else:
                length = v
        else:
            raise ProtocolError(f"frame uses msgpack type 0x{b:02x}, which the protocol never sends (maps, floats, extensions)")
        if count >= 0:
            if count > MAX_ARRAY_LEN:
                raise ProtocolError(f"array of {count} entries exceeds MAX_ARRAY_LEN={MAX_ARRAY_LEN}")
            if len(remaining) > MAX_DEPTH:
                raise ProtocolError(f"frame nests deeper than MAX_DEPTH={MAX_DEPTH}")
            remaining.append(count)
            continue
        is_str = 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB)
        if is_str and length > MAX_STR_LEN:
            raise ProtocolError(f"string of {length} bytes exceeds MAX_STR_LEN={MAX_STR_LEN}")
        if b in (0xC4, 0xC5, 0xC6) and length > MAX_BIN_LEN:
            raise ProtocolError(f"binary of {length} bytes exceeds MAX_BIN_LEN={MAX_BIN_LEN}")
        pos += length
        if pos > n:
            raise ProtocolError("truncated frame")
    if pos != n:
        raise ProtocolError(f"{n - pos} bytes trailing after the frame")


def decode(data: bytes) -> m.Message:
    """The message in ``data``, or ``ProtocolError`` saying what is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("frame must be bytes")
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    if not data:
        raise ProtocolError("empty frame")
    data = bytes(data)
    check_structure(data)
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_STR_LEN,
            max_bin_len=MAX_BIN_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack and UTF-8 decoding raise several unrelated types
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from None
    if type(frame) is not list or len(frame) < 2:
        raise ProtocolError("frame must be a list [version, type, fields...]")
    version, number = frame[0], frame[1]
    if type(version) is not int or not MIN_PROTOCOL_VERSION <= version <= PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this node speaks {MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION})"
        )
    cls = REGISTRY.get(number) if type(number) is int else None
    if cls is None:
        raise ProtocolError(f"unknown message type {number!r}")
    schema = SCHEMAS[cls]
    fields = len(frame) - 2
    required = len(schema) - OPTIONAL_TRAILING.get(cls, 0)
    if not required <= fields <= len(schema):
        wanted = str(len(schema)) if required == len(schema) else f"{required}..{len(schema)}"
        raise ProtocolError(f"{cls.__name__} needs {wanted} fields, got {fields}")
    kwargs = {}
    for (name, _, from_wire), value in zip(schema, frame[2:]):
        try:
            kwargs[name] = from_wire(value)
        except ProtocolError as exc:
            raise ProtocolError(f"{cls.__name__}.{name}: {exc}") from None
    return cls(**kwargs)
