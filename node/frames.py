"""The frame envelope: its limits (from the wire registry) and the sender's node-key signature.

Inside the sealed frame (node/netkey.py) travels the envelope, a msgpack array::

    [2, sender node id, sender public key (32), destination, body (bytes), signature (64)]

``signature`` is the sender's node key (Ed25519) over ``SIGN_DOMAIN``, the
sender id, the destination and a SHA-256 hash of the body (SHA-256, not
BLAKE2b: with the CPU's SHA instructions it hashes a MiB in about half the
time, and a large frame is hashed once on each side). The receiver checks
it against the key pinned for the sender's name (node/pins.py), so holding the
fleet network key is not enough to speak for another node. ``destination`` is
the node id the frame is meant for (gossip frames and links) or ``""`` (peer
route requests, whose target is an address, and their answers); a gossip frame
addressed to another node is refused, so a key holder cannot replay one node's
frame to a third.

Every size the peer port checks is declared in the wire registry
(gossip/wire.py) and re-exported here under the names the transport, the fuzz
targets and the tests read; none of them spells a number of its own.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

from grapevine.gossip import codec
from grapevine.gossip.errors import ProtocolError, Reason
from grapevine.policy.keys import PublicKey, SigningKey

from .netkey import FRAME_HEADER_BYTES

SIGN_DOMAIN = b"grapevine-frame-v2\x00"  # a frame signature can never pass for an item or run-order signature

# -- limits: declared, with the reason for each value, in the wire registry (gossip/wire.py) ---------
from grapevine.gossip.wire import (  # noqa: E402,F401  (re-exported: the transport and tests read frames.MAX_*)
    ENVELOPE_OVERHEAD, ENVELOPE_VERSION, LINK_TOKEN_HEADER, LINK_TOKEN_MAX_AGE_MS, MAX_LINK_TOKEN_BYTES,
    MAX_NODE_ID_BYTES as MAX_NODE_ID_LEN, MAX_PEER_FRAME_BYTES as MAX_FRAME_BYTES, MAX_ROUTE_ANSWER_BYTES,
    MAX_ROUTE_BODY_BYTES, MAX_ROUTE_CONTAINER_LEN, MAX_ROUTE_FRAME_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES,
)

MAX_MESSAGE_BYTES = codec.MAX_FRAME_BYTES  # the largest envelope body: a gossip message
LINK_TOKENS_REMEMBERED = 4096  # tokens kept to refuse replays: far more links than one node opens in 5 min
__all__ = [
    "ENVELOPE_VERSION", "MAX_NODE_ID_LEN", "MAX_FRAME_BYTES", "MAX_ROUTE_BODY_BYTES", "MAX_ROUTE_FRAME_BYTES",
    "FRAME_HEADER_BYTES", "FrameRefused", "Envelope", "pack_envelope", "unpack_envelope", "node_name",
    "LINK_TOKEN_HEADER", "LinkTokens", "link_token_body",
]


class FrameRefused(ProtocolError):
    """A frame the peer port will not use: ``reason`` is what metrics and logs count, ``status`` the HTTP answer."""

    def __init__(self, status: int, reason: Reason | str, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.status = status


def node_name(node_id: str) -> str:
    """'name@host:port' -> 'name' (what a node key is pinned to)."""
    return node_id.rpartition("@")[0]


def _signed_bytes(sender: str, dest: str, body: bytes) -> bytes:
    return SIGN_DOMAIN + msgpack.packb([sender, dest], use_bin_type=True) + hashlib.sha256(body).digest()


def pack_envelope(key: SigningKey, sender: str, dest: str, body: bytes) -> bytes:
    sig = key.sign(_signed_bytes(sender, dest, body))
    return msgpack.packb([ENVELOPE_VERSION, sender, key.public.raw, dest, body, sig], use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str
    public_key: bytes
    dest: str
    body: bytes
    signature: bytes

    def verify(self, key: PublicKey) -> None:
        """FrameRefused(403, BadNodeSignature) unless ``key`` signed this envelope."""
        if not key.verify(_signed_bytes(self.sender, self.dest, self.body), self.signature):
            raise FrameRefused(403, "BadNodeSignature", f"frame from {self.sender} is not signed by its node key")


def unpack_envelope(plain: bytes) -> Envelope:
    """Decode (not yet verify) an envelope; FrameRefused(400, BadEnvelope) for anything malformed."""
    try:
        env = msgpack.unpackb(
            plain, raw=False, use_list=True, max_str_len=MAX_NODE_ID_LEN, max_bin_len=MAX_MESSAGE_BYTES,
            max_array_len=6, max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameRefused(400, "BadEnvelope", f"envelope is not valid msgpack: {exc}") from None
    if not (isinstance(env, list) and len(env) == 6 and env[0] == ENVELOPE_VERSION):
        raise FrameRefused(400, "BadEnvelope", f"envelope must be [{ENVELOPE_VERSION}, sender, key, dest, body, signature]")
    _, sender, pk, dest, body, sig = env
    if not (isinstance(sender, str) and isinstance(dest, str) and isinstance(body, bytes)):
        raise FrameRefused(400, "BadEnvelope", "envelope sender and destination must be text, its body bytes")
    if not (isinstance(pk, bytes) and len(pk) == PUBLIC_KEY_BYTES and isinstance(sig, bytes) and len(sig) == SIGNATURE_BYTES):
        raise FrameRefused(400, "BadEnvelope", "envelope must carry a 32-byte node key and a 64-byte signature")
    name, at, addr = sender.rpartition("@")
    if not (at and name and ":" in addr):
        raise FrameRefused(400, "BadEnvelope", f"sender {sender!r} is not of the form name@host:port")
    return Envelope(sender=sender, public_key=pk, dest=dest, body=body, signature=sig)


def unpack_route_body(body: bytes) -> Any:
    """A peer-route body (msgpack) with the route limits; FrameRefused(400, BadRouteBody)."""
    try:
        return msgpack.unpackb(body, raw=False, max_str_len=MAX_ROUTE_BODY_BYTES, max_bin_len=MAX_ROUTE_BODY_BYTES,
                               max_array_len=MAX_ROUTE_CONTAINER_LEN, max_map_len=MAX_ROUTE_CONTAINER_LEN, max_ext_len=0)
    except Exception as exc:
        raise FrameRefused(400, "BadRouteBody", f"route body is not valid msgpack: {exc}") from None


def link_token_body(now_ms: int) -> bytes:
    return msgpack.packb({"t": now_ms}, use_bin_type=True)


class LinkTokens:
    """Link tokens admitted lately: a token must be fresh and never seen before (time passed in)."""

    def __init__(self, *, max_age_ms: int = LINK_TOKEN_MAX_AGE_MS, remember: int = LINK_TOKENS_REMEMBERED) -> None:
        self.max_age_ms = max_age_ms
        self.remember = remember
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, env: Envelope, now_ms: int) -> None:
        """Accept the (already authenticated) token ``env`` or raise FrameRefused."""
        try:
            t = msgpack.unpackb(env.body, raw=False, max_str_len=8, max_bin_len=0, max_array_len=0, max_map_len=1)["t"]
            age = now_ms - int(t)
        except Exception:
            raise FrameRefused(400, "BadEnvelope", "link token body must be {t: sent_ms}") from None
        if abs(age) > self.max_age_ms:
            raise FrameRefused(403, "StaleLinkToken", f"link token from {env.sender} is {age} ms old (clock skew?)")
        if env.signature in self._seen:
            raise FrameRefused(403, "ReplayedLinkToken", f"link token from {env.sender} was used before")
        self._seen[env.signature] = None
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)
