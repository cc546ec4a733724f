"""The wire registry: every message that crosses the network, and every limit on it.

One module owns the sizes (memberlist's rule: name each hard limit, say why
it has that value, check it before a byte of body is decoded). Every decoder
and every size check reads its limit from here by name; no other module
spells a number for a wire field. ``tests/gossip/test_wire_registry.py``
checks that no module defines a limit of its own under a name declared here
and that every message the daemon sends is declared in ``MESSAGES``.

It lives in ``gossip/`` because every layer may read it: the gossip codec,
``policy/`` (run orders and results are decoded there) and ``node/`` (the
frame envelope, peer routes, broadcasts). It imports nothing but the
standard library, msgpack and ``errors.py``, so any module can import it without a cycle.

What travels, from the outside in::

    sealed frame      node/netkey.py       MAGIC | key id | nonce | box(length) | box(envelope)
    envelope          node/frames.py       [2, sender, node key, destination, body, signature]
    body, one of:
      gossip message  gossip/codec.py      [protocol version, type number, fields...]  (codec.REGISTRY)
      route request   node/transport.py    msgpack body of a peer route (ROUTES below)
      route answer    node/transport.py    msgpack answer to a route request
      link token      node/frames.py       {"t": sent_ms}, in the X-Grapevine-Link header of a link upgrade
    broadcast         node/agent.py        [kind, body] in an Ephemeral gossip message (BROADCASTS below)
    item              gossip/item.py       [key, wall_ms, counter, author, payload, signatures]

Gossip message types and their fields are numbered in ``codec.REGISTRY`` and
``codec.SCHEMAS`` (the numbers are the protocol; only append); everything
else that travels is declared in ``MESSAGES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import ProtocolError

# ============================================================ versions
PROTOCOL_VERSION = 1  # gossip frames; bumped only for changes old nodes cannot read
MIN_PROTOCOL_VERSION = 1  # oldest gossip frame version this build still decodes
ENVELOPE_VERSION = 2  # the frame envelope: 2 carries the sender's node key and signature; 1 had neither

# ============================================================ names and keys (every message)
# A node id is "name@host:port": a 63-character DNS label, "@", an IPv6 literal in brackets (at
# most 47 characters with its zone) and ":65535" is about 120 bytes; 320 is generous and is the
# one bound everywhere a node id travels (gossip fields, envelope sender and destination, run
# orders and results, discovery answers). Counted in UTF-8 bytes, as msgpack counts strings.
MAX_NODE_ID_BYTES = 320
MAX_KEY_LEN = 256  # item keys: "bundle/<name>" names are short; 256 leaves room for deep prefixes
MAX_KEY_ID_LEN = 64  # author, operator and node key ids are 16 hex characters; 64 allows other id schemes
MAX_AUTHOR_LEN = MAX_KEY_ID_LEN  # the author part of a version is a key id
DIGEST_LEN = 16  # blake2b-128: item digests, message ids and hash-tree nodes
PUBLIC_KEY_BYTES = 32  # Ed25519 public key
SIGNATURE_BYTES = 64  # Ed25519 signature
MAX_RUN_ID_LEN = 64  # run and query ids are 32 hex characters (16 random bytes); 64 allows other id schemes

# ============================================================ items (gossip/item.py)
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # a bundle with attached files; larger files belong elsewhere
MAX_SIGNATURES = 16  # a trust root signed by a threshold of admins (item + link signature each)
MAX_SIGNATURE_LEN = 128  # Ed25519 signatures are 64 bytes; 128 allows one other scheme without a new format
MAX_ITEM_BYTES = MAX_PAYLOAD_BYTES + 64 * 1024  # a packed item (.gv file, API upload): payload plus its fields

# ============================================================ gossip frames (gossip/codec.py)
# One 4 MiB item beside a sync batch bound of 4 MiB, with headroom for headers.
MAX_GOSSIP_FRAME_BYTES = 9 * 1024 * 1024
MAX_GOSSIP_DEPTH = 5  # nested arrays in the deepest legal frame: frame > items > item > signatures > pair
MAX_GOSSIP_STR_LEN = 1024  # the longest string field: a node id (320 bytes) or an item key (256 chars, up to 4 bytes each)
MAX_GOSSIP_BIN_LEN = MAX_PAYLOAD_BYTES  # an item payload, the largest binary field
MAX_GOSSIP_ARRAY_LEN = 4096  # the longest list: SyncKeys entries of 16 leaves, well below 4096
MAX_GOSSIP_ELEMENTS = 40_000  # all objects in a frame: 4096 entries x 6 objects plus headers
MAX_SYNC_ITEMS = 256  # items in one SyncItems message (GossipConfig.max_sync_items default)
MAX_PEERS = 64  # node ids in one shuffle sample (active + passive sample, with headroom)
MAX_IDS = 1024  # message ids in one IHave or Graft: one announcement round of a busy publisher
MAX_KEY_ENTRIES = MAX_GOSSIP_ARRAY_LEN  # entries in one SyncKeys answer
MAX_TOP_DIGESTS = 16  # digests in one SyncTop: the hash tree fans out 16 ways
MAX_LEAF_GROUPS = 16  # groups in one SyncLeaves: one per differing top digest
MAX_LEAVES = 256  # leaf indexes asked for in one SyncKeys: 16 x 16 leaves
# Ephemeral broadcasts carry run discovery queries (a selector and a few ids): far below an item.
# Every node decodes a broadcast body it relays, so the bound is the route body bound, not an item's.
MAX_BROADCAST_BYTES = 1024 * 1024

# ============================================================ sealed frames (node/netkey.py)
SEAL_HEADER_BYTES = 50  # magic 2 + key id 4 + nonce 24 + boxed length (4 + MAC 16): all a stranger gets us to read
SEAL_OVERHEAD_BYTES = SEAL_HEADER_BYTES + 16  # the header plus the body's MAC

# ============================================================ envelope (node/frames.py)
# The envelope adds two node ids, a node key, a signature and msgpack headers to its body.
ENVELOPE_OVERHEAD = 2 * MAX_NODE_ID_BYTES + PUBLIC_KEY_BYTES + SIGNATURE_BYTES + 64
MAX_PEER_FRAME_BYTES = MAX_GOSSIP_FRAME_BYTES + ENVELOPE_OVERHEAD + SEAL_OVERHEAD_BYTES  # the one frame cap: POSTs and links
# Peer-route bodies (run orders, results, discovery answers, key requests) are small, except a
# preview order, which carries its candidate bundles (MAX_PREVIEW_ORDER_BYTES below): 1 MiB covers a
# run result in its reply, and the preview bound plus ROUTE_BODY_OVERHEAD (the origin's ticket, the
# retry flag, the map around them) covers a preview. Only authenticated frames are read this far.
ROUTE_BODY_OVERHEAD = 4096
MAX_ROUTE_CONTAINER_LEN = 4096  # entries in any one list or map of a route body: a fleet-status answer's bundles
MAX_ROUTE_NAME_LEN = 64  # "query.answer", "run.order": short dotted names
# A link is authenticated by a frame in its upgrade request, base64 in one header line: it carries
# a few dozen bytes of body, and aiohttp refuses header lines above 8190 bytes anyway.
MAX_LINK_TOKEN_BYTES = 2048
# A link token is fresh per dial: one older than this (or this far ahead of our clock) is refused,
# and one seen before is refused. Five minutes is far beyond the clock skew a fleet runs with
# (items more than 60 s ahead are refused anyway).
LINK_TOKEN_MAX_AGE_MS = 300_000

# ============================================================ run orders and results (policy/runorder.py)
MAX_ORDER_BYTES = 64 * 1024  # an argv or shell script typed by a person; a payload belongs in a bundle
# A preview order carries the signed candidate bundle items themselves (nodes dry-run them, nothing is
# stored), so its cap covers the largest payload gossip carries plus each candidate's key, version and
# signature. Only preview orders may be that large: any other kind is refused past MAX_ORDER_BYTES.
MAX_PREVIEW_BUNDLES = 16  # candidate bundles in one preview: a policy file's bundles, previewed together
PREVIEW_ITEM_OVERHEAD = 1024  # key (256), author (64), version, one 64-byte signature and msgpack headers
MAX_PREVIEW_CANDIDATE_BYTES = MAX_PAYLOAD_BYTES + MAX_PREVIEW_BUNDLES * PREVIEW_ITEM_OVERHEAD  # all candidates
MAX_PREVIEW_ORDER_BYTES = MAX_ORDER_BYTES + MAX_PREVIEW_CANDIDATE_BYTES  # the run-order decoder's outer bound
MAX_SIGNED_ORDER_BYTES = MAX_PREVIEW_ORDER_BYTES + 256  # the largest order plus a key id and a signature
MAX_ROUTE_BODY_BYTES = max(1024 * 1024, MAX_PREVIEW_ORDER_BYTES + ROUTE_BODY_OVERHEAD)
MAX_ROUTE_FRAME_BYTES = MAX_ROUTE_BODY_BYTES + ENVELOPE_OVERHEAD + SEAL_OVERHEAD_BYTES
MAX_ROUTE_ANSWER_BYTES = MAX_ROUTE_FRAME_BYTES  # what a route request reads back
MAX_RUN_OUTPUT_BYTES = 64 * 1024  # per output stream of a run: enough for a status page, small enough for one result
MAX_REPORT_BYTES = 64 * 1024  # a converge report attached to a result; diffs are dropped past this
MAX_RESULT_BYTES = 256 * 1024  # two streams and a report of at most 64 KiB each, plus room for the fields
MAX_ARGV = 256  # arguments in one command line
MAX_STRING = 32 * 1024  # one argument, one shell string, one error text
MAX_BUNDLES = 64  # bundles named by one converge order
MAX_SELECTOR_CHARS = 4096  # a selector expression (bundle targets, run targets, queries), not a program
MAX_DETAIL_CHARS = 240  # a refusal's detail in a peer reply: one log line, never an echo of the input

# ============================================================ staged rollouts (policy/rollout.py, node/rollout.py)
MAX_ROLLOUT_STAGES = 16  # stages of one plan: [1, 1%, 10%, 50%, 100%] is typical; 16 leaves room
# A rollout record holds a bundle name, a version, a driver node id, one threshold and one
# (applied, healthy, failed) triple per opened stage and a reason: about 1 KiB at 16 stages.
MAX_ROLLOUT_RECORD_BYTES = 4096
MAX_ROLLOUT_REPORT_BYTES = 2048  # a node's report: bundle name, version text, state and a short detail


# ============================================================ the messages
@dataclass(frozen=True, slots=True, kw_only=True)
class WireMessage:
    """One message that crosses the network, besides the numbered gossip messages."""

    name: str  # what it is
    carrier: str  # "frame", "envelope", "route", "answer", "broadcast", "header", "item"
    tag: str  # the route name, broadcast kind or header name that selects it ("" when the carrier says all)
    max_bytes: int  # checked before the body is decoded
    decoder: str  # module:function that decodes it, reading its limits from here
    shape: str  # its fields, in wire order (arrays) or by key (maps)


ROUTE_HELLO = "hello"  # who is at this address (the transport's own route)
ROUTE_QUERY_ANSWER = "query.answer"  # node -> origin: "I match", with a fleet-status or run answer
ROUTE_RUN_ORDER = "run.order"  # origin -> node: the signed order
ROUTE_RUN_RESULT = "run.result"  # node -> origin: the signed result
ROUTE_RUN_KEY = "run.key"  # node -> origin: which node key is held at the origin's address
ROUTE_ROLLOUT_REPORT = "rollout.report"  # node -> driver: this node's gate state for one bundle version
ROUTE_ROLLOUT_STATUS = "rollout.status"  # any node -> driver: is a driver attached, and what it has heard
BROADCAST_QUERY = "query"  # discovery query (runs and fleet status)
LINK_TOKEN_HEADER = "X-Grapevine-Link"

MESSAGES: tuple[WireMessage, ...] = (
    WireMessage(name="sealed frame", carrier="frame", tag="", max_bytes=MAX_PEER_FRAME_BYTES,
                decoder="grapevine.node.netkey:KeyRing.open_header",
                shape="MAGIC | key id | nonce | box(body length) | box(envelope)"),
    WireMessage(name="envelope", carrier="envelope", tag="", max_bytes=MAX_PEER_FRAME_BYTES,
                decoder="grapevine.node.frames:unpack_envelope",
                shape="[ENVELOPE_VERSION, sender, node key (32), destination, body, signature (64)]"),
    WireMessage(name="gossip message", carrier="envelope", tag="", max_bytes=MAX_GOSSIP_FRAME_BYTES,
                decoder="grapevine.gossip.codec:decode", shape="[version, type number, fields...] (codec.REGISTRY)"),
    WireMessage(name="item", carrier="item", tag="", max_bytes=MAX_ITEM_BYTES,
                decoder="grapevine.gossip.item:SignedItem.decode",
                shape="[key, wall_ms, counter, author, payload, [[key id, signature]...]]"),
    WireMessage(name="link token", carrier="header", tag=LINK_TOKEN_HEADER, max_bytes=MAX_LINK_TOKEN_BYTES,
                decoder="grapevine.node.frames:LinkTokens.admit", shape='envelope whose body is {"t": sent_ms}'),
    WireMessage(name="hello", carrier="route", tag=ROUTE_HELLO, max_bytes=MAX_ROUTE_BODY_BYTES,
                decoder="grapevine.node.frames:unpack_route_body", shape='{} -> {"id": node id}'),
    WireMessage(name="discovery answer", carrier="route", tag=ROUTE_QUERY_ANSWER, max_bytes=MAX_ROUTE_BODY_BYTES,
                decoder="grapevine.node.discovery:DiscoveryBook.on_answer",
                shape='{"q": query id, "n": node id, "pk": node key, "i": status or run info} (signed by the envelope)'),
    WireMessage(name="run order", carrier="route", tag=ROUTE_RUN_ORDER, max_bytes=MAX_SIGNED_ORDER_BYTES,
                decoder="grapevine.policy.runorder:SignedOrder.from_wire",
                shape='{"order": [body, key id, signature], "ticket": signature, "retry"?} -> {"ok", "pk", "result"} | refusal'),
    WireMessage(name="run result", carrier="route", tag=ROUTE_RUN_RESULT, max_bytes=MAX_RESULT_BYTES,
                decoder="grapevine.policy.runorder:SignedResult.from_wire", shape="[body, key id, signature]"),
    WireMessage(name="origin key request", carrier="route", tag=ROUTE_RUN_KEY, max_bytes=MAX_ROUTE_BODY_BYTES,
                decoder="grapevine.node.frames:unpack_route_body", shape='{} -> {"n": node id, "pk": node key}'),
    WireMessage(name="rollout report", carrier="route", tag=ROUTE_ROLLOUT_REPORT, max_bytes=MAX_ROLLOUT_REPORT_BYTES,
                decoder="grapevine.node.rollout:decode_report",
                shape='{"b": bundle, "v": version text, "s": applied|healthy|failed|reverted, "d": detail, "t": term}'
                      ' (signed by the envelope) -> {"ok": true}'),
    WireMessage(name="rollout status request", carrier="route", tag=ROUTE_ROLLOUT_STATUS, max_bytes=MAX_ROLLOUT_REPORT_BYTES,
                decoder="grapevine.node.rollout:decode_status_request",
                shape='{"b": bundle, "v": version text} -> {"attached": bool, "nodes": {node: [state, detail]}}'),
    WireMessage(name="rollout record", carrier="item", tag="rollout/", max_bytes=MAX_ROLLOUT_RECORD_BYTES,
                decoder="grapevine.policy.rollout:RolloutRecord.decode",
                shape='item payload {"bundle", "version", "state", "stage", "thresholds", "driver", "term", "reason", "counts"}'),
    WireMessage(name="route refusal", carrier="answer", tag="", max_bytes=MAX_ROUTE_ANSWER_BYTES,
                decoder="grapevine.node.frames:unpack_route_body",
                shape='{"ok": false, "refused": Reason, "detail": text of at most MAX_DETAIL_CHARS}'),
    WireMessage(name="discovery query", carrier="broadcast", tag=BROADCAST_QUERY, max_bytes=MAX_BROADCAST_BYTES,
                decoder="grapevine.gossip.wire:unpack_broadcast",
                shape='[kind, {"q": query id, "o": origin, "s": selector, "k": kind}]'),
)
ROUTES: dict[str, WireMessage] = {m.tag: m for m in MESSAGES if m.carrier == "route"}
BROADCASTS: dict[str, WireMessage] = {m.tag: m for m in MESSAGES if m.carrier == "broadcast"}


# ============================================================ broadcast bodies
@dataclass(frozen=True, slots=True)
class Broadcast:
    """The payload of an Ephemeral gossip message: a ``kind`` (``BROADCASTS``) and its msgpack ``body``.

    On the wire it stays the two-element array ``[kind, body]`` every node already sends.
    """

    kind: str
    body: Any

    def pack(self) -> bytes:
        return msgpack.packb([self.kind, self.body], use_bin_type=True)


def unpack_broadcast(payload: bytes) -> Broadcast:
    """Decode a broadcast payload within ``MAX_BROADCAST_BYTES``; ``ProtocolError`` (reason BadBroadcast) otherwise."""
    if len(payload) > MAX_BROADCAST_BYTES:
        raise ProtocolError(f"broadcast of {len(payload)} bytes exceeds {MAX_BROADCAST_BYTES}", reason="BadBroadcast")
    try:
        obj = msgpack.unpackb(payload, raw=False, max_str_len=MAX_BROADCAST_BYTES, max_bin_len=MAX_BROADCAST_BYTES,
                              max_array_len=MAX_ROUTE_CONTAINER_LEN, max_map_len=MAX_ROUTE_CONTAINER_LEN, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"broadcast is not valid msgpack: {exc}", reason="BadBroadcast") from None
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and len(obj[0]) <= MAX_ROUTE_NAME_LEN):
        raise ProtocolError("broadcast must be [kind, body]", reason="BadBroadcast")
    return Broadcast(obj[0], obj[1])
