"""What the core asks its driver to do or tells it happened.

Every entry point of ``GossipNode`` returns a list of these. The driver (the
simulator or the daemon) delivers ``Send``, reports failed deliveries back
through ``GossipNode.on_send_failed``, opens and closes long-lived links on
``PeerUp``/``PeerDown``, and hands ``ItemAccepted``/``Delivered`` to the
layers above (policy, run executor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .item import SignedItem, Version
from .messages import Message, fast_init


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    peer: str
    msg: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemAccepted:
    item: SignedItem
    previous: Version | None
    source: str | None  # None: published locally
    hops: int  # broadcast hops from the publisher (0: local; anti-entropy counts one hop)


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemRefused:
    key: str
    reason: str  # "Stale", "FromTheFuture", or the validator's reason
    source: str | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """An ephemeral broadcast delivered here, at most once per ``msg_id``."""

    msg_id: bytes
    origin: str
    payload: bytes
    hops: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerUp:
    """``peer`` entered the active view: keep a link open to it."""

    peer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDown:
    """``peer`` left the active view: its link may be closed."""

    peer: str


Effect = Union[Send, ItemAccepted, ItemRefused, Delivered, PeerUp, PeerDown]
for _cls in Effect.__args__:  # type: ignore[attr-defined]
    fast_init(_cls)  # one Send per message sent: the quicker constructor matters
del _cls
