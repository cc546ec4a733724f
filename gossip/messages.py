"""Every message peers exchange, as frozen, slotted, keyword-only dataclasses.

Three families travel between nodes:

- membership (HyParView): ``Join``, ``ForwardJoin``, ``Welcome``,
  ``Neighbor``, ``NeighborReply``, ``Disconnect``, ``Shuffle``,
  ``ShuffleReply``, ``Ping``, ``Pong``;
- broadcast (Plumtree): ``Push`` (an item), ``Ephemeral`` (a run order or
  query), ``IHave``, ``Graft``, ``Prune``;
- anti-entropy: ``SyncRoot``, ``SyncTop``, ``SyncLeaves``, ``SyncKeys``,
  ``SyncItems``.

Each class says with ``carries_payload`` whether it carries a full item or
broadcast payload (the simulator counts those as payload copies). Messages
check their own field types on construction, cheaply, because the core
builds many of them per second in a large simulation; the codec
(``codec.py``) adds the size limits for bytes that come from outside.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Union

from .errors import ProtocolError
from .item import SignedItem
from .wire import DIGEST_LEN


def fast_init(cls: type) -> type:
    """Give a frozen, slotted, keyword-only dataclass a quicker ``__init__``.

    The generated ``__init__`` of a frozen dataclass sets each field through
    ``object.__setattr__`` by name; this one calls each slot's own setter,
    then ``__post_init__`` as before. Same fields, defaults, keyword-only
    signature and checks; about half the cost, which matters because the
    core builds a message and a ``Send`` for every hop of every broadcast.
    """
    params, body, env = [], [], {"MISSING": MISSING}
    for f in fields(cls):
        if not f.init:
            continue
        setter = f"_set_{f.name}"
        env[setter] = getattr(cls, f.name).__set__
        if f.default is not MISSING:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: default_factory is not supported by fast_init")
        else:
            params.append(f.name)
        body.append(f"    {setter}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    sig = "self, *, " + ", ".join(params) if params else "self"
    src = f"def __init__({sig}) -> None:\n" + ("\n".join(body) if body else "    pass") + "\n"
    namespace: dict[str, Any] = {}
    exec(src, env, namespace)  # noqa: S102 - source built above from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise ProtocolError(what)


def _is_int(v: object) -> bool:
    return type(v) is int and v >= 0


def _is_digest(v: object) -> bool:
    return type(v) is bytes and len(v) == DIGEST_LEN


# --- membership -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """A new node asks a contact to adopt it into the overlay."""

    carries_payload: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardJoin:
    """Random walk announcing ``joiner``; ``ttl`` counts the hops left."""

    joiner: str
    ttl: int
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.joiner) is str and self.joiner != ""):
            raise ProtocolError("ForwardJoin.joiner must be a node id")
        if not (_is_int(self.ttl)):
            raise ProtocolError("ForwardJoin.ttl must be a non-negative integer")


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """The sender has put the receiver into its active view; add it back."""

    carries_payload: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Neighbor:
    """Ask to become an active neighbour; high priority when the asker is isolated."""

    high_priority: bool
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.high_priority) is bool):
            raise ProtocolError("Neighbor.high_priority must be a bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class NeighborReply:
    carries_payload: ClassVar[bool] = False
    accepted: bool

    def __post_init__(self) -> None:
        if not (type(self.accepted) is bool):
            raise ProtocolError("NeighborReply.accepted must be a bool")


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    """The sender dropped the receiver from its active view.

    ``leaving`` means the sender shuts down: forget it entirely rather than
    keeping it as a passive spare.
    """

    leaving: bool = False
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.leaving) is bool):
            raise ProtocolError("Disconnect.leaving must be a bool")


def _check_peers(peers: object, name: str) -> None:
    if not (type(peers) is tuple):
        raise ProtocolError(f"{name} must be a tuple of node ids")
    for p in peers:  # type: ignore[union-attr]
        if not (type(p) is str and p != ""):
            raise ProtocolError(f"{name} must hold non-empty node ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class Shuffle:
    """A sample of ``origin``'s views on a random walk; ``ttl`` hops left."""

    origin: str
    ttl: int
    peers: tuple[str, ...]
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.origin) is str and self.origin != ""):
            raise ProtocolError("Shuffle.origin must be a node id")
        if not (_is_int(self.ttl)):
            raise ProtocolError("Shuffle.ttl must be a non-negative integer")
        _check_peers(self.peers, "Shuffle.peers")


@dataclass(frozen=True, slots=True, kw_only=True)
class ShuffleReply:
    peers: tuple[str, ...]
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_peers(self.peers, "ShuffleReply.peers")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Liveness probe of an active peer that has been silent for a while."""

    carries_payload: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    carries_payload: ClassVar[bool] = False


# --- broadcast ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """An item travelling down the broadcast tree; its id is ``item.digest()``.

    ``hops`` counts the links travelled including this one (1 for the
    publisher's own neighbours). ``origin`` is the publishing node, which
    selects the broadcast tree the item travels (empty: the shared tree;
    frames from before the field existed decode with it empty).
    """

    hops: int
    item: SignedItem
    origin: str = ""
    carries_payload: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (_is_int(self.hops)):
            raise ProtocolError("Push.hops must be a non-negative integer")
        if not (isinstance(self.item, SignedItem)):
            raise ProtocolError("Push.item must be a SignedItem")
        if not (type(self.origin) is str):
            raise ProtocolError("Push.origin must be a node id or empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ephemeral:
    """A broadcast that is delivered once per node and never stored.

    ``deadline_ms`` is the origin's clock at which the broadcast expires.
    """

    msg_id: bytes
    origin: str
    deadline_ms: int
    hops: int
    payload: bytes
    carries_payload: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (_is_digest(self.msg_id)):
            raise ProtocolError(f"Ephemeral.msg_id must be {DIGEST_LEN} bytes")
        if not (type(self.origin) is str and self.origin != ""):
            raise ProtocolError("Ephemeral.origin must be a node id")
        if not (_is_int(self.deadline_ms)):
            raise ProtocolError("Ephemeral.deadline_ms must be a non-negative integer")
        if not (_is_int(self.hops)):
            raise ProtocolError("Ephemeral.hops must be a non-negative integer")
        if not (type(self.payload) is bytes):
            raise ProtocolError("Ephemeral.payload must be bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class IHave:
    """Lazy announcement: (message id, hops at the announcer) pairs.

    ``pull`` says no eager copy follows (the announcer has no tree for the
    publisher yet): the receiver grafts the closest announcer at once instead
    of waiting for the graft timeout.
    """

    entries: tuple[tuple[bytes, int], ...]
    pull: bool = False
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.pull) is bool):
            raise ProtocolError("IHave.pull must be a bool")
        if not (type(self.entries) is tuple):
            raise ProtocolError("IHave.entries must be a tuple")
        for e in self.entries:
            if not (type(e) is tuple and len(e) == 2 and _is_digest(e[0]) and _is_int(e[1])):
                raise ProtocolError("IHave.entries must hold (message id, hops) pairs")


@dataclass(frozen=True, slots=True, kw_only=True)
class Graft:
    """Make the link eager again and send these missing messages (may be empty).

    ``origin`` names the publisher whose tree the link joins (empty: the
    tree of the grafted messages, or the shared tree).
    """

    msg_ids: tuple[bytes, ...]
    origin: str = ""
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.origin) is str):
            raise ProtocolError("Graft.origin must be a node id or empty")
        if not (type(self.msg_ids) is tuple):
            raise ProtocolError("Graft.msg_ids must be a tuple")
        for m in self.msg_ids:
            if not (_is_digest(m)):
                raise ProtocolError(f"Graft.msg_ids must hold {DIGEST_LEN}-byte ids")


@dataclass(frozen=True, slots=True, kw_only=True)
class Prune:
    """The sender got a duplicate over this link: announce lazily from now on.

    ``cause`` is the id of the duplicated message (empty if none): a node
    that has meanwhile taken the sender as its parent for that very message
    knows the prune is stale and ignores it.
    """

    cause: bytes = b""
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.cause) is bytes and len(self.cause) in (0, DIGEST_LEN)):
            raise ProtocolError("Prune.cause must be empty or a message id")


# --- anti-entropy -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRoot:
    """Opens an exchange: the initiator's hash-tree root and item count."""

    root: bytes
    count: int
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (_is_digest(self.root)):
            raise ProtocolError(f"SyncRoot.root must be {DIGEST_LEN} bytes")
        if not (_is_int(self.count)):
            raise ProtocolError("SyncRoot.count must be a non-negative integer")


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTop:
    """The responder's top-level digests; empty when the roots already agree."""

    digests: tuple[bytes, ...]
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.digests) is tuple):
            raise ProtocolError("SyncTop.digests must be a tuple")
        for d in self.digests:
            if not (_is_digest(d)):
                raise ProtocolError(f"SyncTop.digests must hold {DIGEST_LEN}-byte digests")


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncLeaves:
    """For each differing top node: its index and the initiator's leaf digests."""

    groups: tuple[tuple[int, tuple[bytes, ...]], ...]
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.groups) is tuple):
            raise ProtocolError("SyncLeaves.groups must be a tuple")
        for g in self.groups:
            if not (type(g) is tuple and len(g) == 2 and _is_int(g[0]) and type(g[1]) is tuple):
                raise ProtocolError("SyncLeaves group malformed")
            for d in g[1]:
                if not (_is_digest(d)):
                    raise ProtocolError(f"SyncLeaves digests must be {DIGEST_LEN} bytes")


# (key, wall_ms, counter, author, digest): one stored version, summarised.
KeyEntry = tuple[str, int, int, str, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncKeys:
    """The responder's versions for the leaves in ``leaves`` (each complete)."""

    leaves: tuple[int, ...]
    entries: tuple[KeyEntry, ...]
    carries_payload: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (type(self.leaves) is tuple and all(_is_int(x) for x in self.leaves)):
            raise ProtocolError("SyncKeys.leaves must be integers")
        if not (type(self.entries) is tuple):
            raise ProtocolError("SyncKeys.entries must be a tuple")
        for e in self.entries:
            _need(
                type(e) is tuple
                and len(e) == 5
                and type(e[0]) is str
                and _is_int(e[1])
                and _is_int(e[2])
                and type(e[3]) is str
                and _is_digest(e[4]),
                "SyncKeys entries must be (key, wall_ms, counter, author, digest)",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncItems:
    """Items the receiver lacks, and keys the sender wants in return."""

    items: tuple[SignedItem, ...]
    want: tuple[str, ...] = ()
    carries_payload: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (type(self.items) is tuple):
            raise ProtocolError("SyncItems.items must be a tuple")
        for it in self.items:
            if not (isinstance(it, SignedItem)):
                raise ProtocolError("SyncItems.items must hold SignedItems")
        if not (type(self.want) is tuple and all(type(k) is str for k in self.want)):
            raise ProtocolError("SyncItems.want must hold keys")


Message = Union[
    Join,
    ForwardJoin,
    Welcome,
    Neighbor,
    NeighborReply,
    Disconnect,
    Shuffle,
    ShuffleReply,
    Ping,
    Pong,
    Push,
    Ephemeral,
    IHave,
    Graft,
    Prune,
    SyncRoot,
    SyncTop,
    SyncLeaves,
    SyncKeys,
    SyncItems,
]

MESSAGE_TYPES: tuple[type, ...] = Message.__args__  # type: ignore[attr-defined]
for _cls in MESSAGE_TYPES:
    fast_init(_cls)
del _cls
