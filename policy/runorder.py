"""Run orders and run results: their formats, signatures and checks.

A run order is what an operator signs to have a command (an argv, a shell
string, or a converge of named bundles) run now on the nodes a selector
picks. The command line signs it with the operator's key; the agent it talks
to (the *origin*) finds the matching nodes and posts the order to each. A
node executes an order only when every check here holds:

    Malformed     the bytes are not an order of this format
    UnknownKey    the signing key is not an operator of the trust root
    BadSignature  the signature does not verify with that key
    Expired       the deadline has passed (or lies further ahead than allowed),
                  or the trust root itself has expired
    FromTheFuture the order was issued further ahead than the clock skew allows
    OutOfScope    the action is not one the operator may start, or this node
                  is outside the operator's selector scope
    NotTargeted   the order's own selector does not match this node

plus ``Replayed`` (the run id was seen before), which needs the node's
durable state and is checked by the daemon. Each refusal is a ``RunRefused``
carrying one of those reason names.

A result is signed by the executing node's key and names the run id, so the
origin can tell a node's genuine answer from a forged one: it verifies each
result with the node key it learned when the node answered discovery.

Both are canonical msgpack lists; a signature covers a domain tag and the
exact body bytes that travel, never a re-encoding of them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import msgpack

from grapevine.gossip.errors import ConfigError, GrapevineError, Reason, TrustError
from grapevine.gossip.item import SignedItem
from grapevine.policy import selectors
from grapevine.policy.keys import PublicKey, SigningKey

ORDER_DOMAIN = "grapevine/run-order/1"
RESULT_DOMAIN = "grapevine/run-result/1"

ACTIONS = ("command", "shell", "converge", "preview")  # the kinds of work an order can carry (only append)

# Limits checked on decode, before anything is built from the bytes: declared in the wire registry.
from grapevine.gossip.wire import (  # noqa: E402
    MAX_ARGV, MAX_BUNDLES, MAX_KEY_ID_LEN, MAX_NODE_ID_BYTES, MAX_ORDER_BYTES, MAX_PREVIEW_BUNDLES,
    MAX_PREVIEW_CANDIDATE_BYTES, MAX_PREVIEW_ORDER_BYTES, MAX_RESULT_BYTES, MAX_RUN_ID_LEN, MAX_SIGNED_ORDER_BYTES,
    MAX_STRING,
)
MAX_WINDOW_MS = 24 * 3600 * 1000  # issued -> deadline: a day; nodes remember seen ids that long
MAX_SKEW_MS = 60_000  # same allowance as for item stamps: one bad clock cannot matter more
MIN_TIMEOUT_MS = 1  # a zero timeout could never run anything
RUN_ID_BYTES = 16  # 128 random bits: no two orders ever share an id by chance


# ------------------------------------------------------------------ errors


class RunRefused(TrustError):
    """A run order (or result) that must not be acted on; ``reason`` is a ``Reason``."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{reason}: {detail}", reason=reason)


def _unpack(data: bytes, limit: int, what: str) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise RunRefused("Malformed", f"{what} must be bytes")
    if len(data) > limit:
        raise RunRefused("Malformed", f"{what} of {len(data)} bytes exceeds the limit of {limit}")
    try:
        return msgpack.unpackb(
            bytes(data), raw=False, strict_map_key=True, max_bin_len=limit, max_str_len=limit,
            max_array_len=max(MAX_ARGV, MAX_BUNDLES, MAX_PREVIEW_BUNDLES) + 16, max_map_len=0, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise RunRefused("Malformed", f"{what} is not valid msgpack: {exc}") from None


def _check_str(value: Any, name: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise RunRefused("Malformed", f"{name} must be a {'' if empty else 'non-empty '}string of at most {limit} characters")
    return value


def _check_node_id(value: Any, name: str) -> str:
    """A node id: at most ``MAX_NODE_ID_BYTES`` in UTF-8, the bound of every other place a node id travels."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "surrogatepass")) > MAX_NODE_ID_BYTES:
        raise RunRefused("Malformed", f"{name} must be a node id of 1..{MAX_NODE_ID_BYTES} bytes")
    return value


def _check_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RunRefused("Malformed", f"{name} must be a non-negative integer")
    return value


# ------------------------------------------------------------------ the order


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAction:
    """What to run: ``command`` (argv), ``shell`` (one string), ``converge`` (bundles) or
    ``preview`` (packed candidate bundle items to dry-run; see node/preview.py)."""

    kind: str
    argv: tuple[str, ...] = ()
    shell: str = ""
    bundles: tuple[str, ...] = ()
    candidates: tuple[bytes, ...] = ()  # preview: encoded SignedItems under bundle/, signed by their publisher

    def __post_init__(self) -> None:
        if self.kind not in ACTIONS:
            raise RunRefused("Malformed", f"action kind must be one of {', '.join(ACTIONS)}, not {self.kind!r}")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "bundles", tuple(self.bundles))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.kind == "command":
            if not self.argv or len(self.argv) > MAX_ARGV:
                raise RunRefused("Malformed", f"a command needs 1..{MAX_ARGV} arguments")
            for a in self.argv:
                _check_str(a, "a command argument", MAX_STRING, empty=True)
            if not self.argv[0]:
                raise RunRefused("Malformed", "the program name is empty")
        elif self.kind == "shell":
            _check_str(self.shell, "the shell string", MAX_STRING)
        elif self.kind == "preview":
            self.candidate_items()  # each one decodes as a bundle item, within the preview limits
        else:
            if len(self.bundles) > MAX_BUNDLES:
                raise RunRefused("Malformed", f"a converge names at most {MAX_BUNDLES} bundles")
            for b in self.bundles:
                _check_str(b, "a bundle name", 256)
        if (self.kind != "command" and self.argv) or (self.kind != "shell" and self.shell) or (
            self.kind != "converge" and self.bundles
        ) or (self.kind != "preview" and self.candidates):
            raise RunRefused("Malformed", f"a {self.kind} action carries only its own field")

    @classmethod
    def command(cls, argv: Iterable[str]) -> RunAction:
        return cls(kind="command", argv=tuple(argv))

    @classmethod
    def shell_string(cls, text: str) -> RunAction:
        return cls(kind="shell", shell=text)

    @classmethod
    def converge(cls, bundles: Iterable[str] = ()) -> RunAction:
        return cls(kind="converge", bundles=tuple(bundles))

    @classmethod
    def preview(cls, items: Iterable[Any]) -> RunAction:
        """A dry run of candidate bundle items (``SignedItem`` or their encoded bytes)."""
        return cls(kind="preview", candidates=tuple(i if isinstance(i, bytes) else i.encode() for i in items))

    def candidate_items(self) -> list[SignedItem]:
        """The preview's candidates, decoded; RunRefused(Malformed) past the limits or for a non-bundle."""
        if not 1 <= len(self.candidates) <= MAX_PREVIEW_BUNDLES:
            raise RunRefused("Malformed", f"a preview carries 1..{MAX_PREVIEW_BUNDLES} candidate bundles")
        total, items, keys = 0, [], set()
        for raw in self.candidates:
            if not isinstance(raw, bytes):
                raise RunRefused("Malformed", "a preview candidate must be bytes")
            total += len(raw)
            if total > MAX_PREVIEW_CANDIDATE_BYTES:
                raise RunRefused("Malformed", f"preview candidates exceed {MAX_PREVIEW_CANDIDATE_BYTES} bytes")
            try:
                item = SignedItem.decode(raw)
            except GrapevineError as exc:
                raise RunRefused("Malformed", f"a preview candidate is not a signed item: {exc}") from None
            if not item.key.startswith("bundle/") or item.key in keys:
                raise RunRefused("Malformed", f"preview candidate {item.key[:80]!r} is not a distinct bundle item")
            keys.add(item.key)
            items.append(item)
        return items

    def describe(self) -> str:
        if self.kind == "preview":
            return "preview " + ", ".join(i.key[len("bundle/"):] for i in self.candidate_items())
        if self.kind == "command":
            return " ".join(self.argv)
        if self.kind == "shell":
            return self.shell
        return "converge " + (", ".join(self.bundles) or "(all bundles)")

    def to_wire(self) -> list:
        wire = [self.kind, list(self.argv), self.shell, list(self.bundles)]
        return wire + [list(self.candidates)] if self.kind == "preview" else wire  # others keep their 4 fields

    @classmethod
    def from_wire(cls, obj: Any) -> RunAction:
        if not isinstance(obj, list) or len(obj) not in (4, 5) or not isinstance(obj[1], list) \
                or not isinstance(obj[3], list) or (len(obj) == 5 and not isinstance(obj[4], list)):
            raise RunRefused("Malformed", "an action is [kind, argv, shell, bundles(, candidates)]")
        return cls(kind=obj[0], argv=tuple(obj[1]), shell=obj[2], bundles=tuple(obj[3]),
                   candidates=tuple(obj[4]) if len(obj) == 5 else ())


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOrder:
    run_id: str
    origin: str  # node id the results go back to
    selector: str  # "" targets every node
    action: RunAction
    timeout_ms: int  # per node, for the command itself
    issued_ms: int
    deadline_ms: int  # after this no node starts it and no result is retried
    operator: str  # key id of the signing operator key

    def __post_init__(self) -> None:
        _check_str(self.run_id, "run id", MAX_RUN_ID_LEN)
        _check_node_id(self.origin, "origin")
        _check_str(self.selector, "selector", selectors.MAX_SELECTOR_CHARS, empty=True)
        _check_str(self.operator, "operator key id", MAX_KEY_ID_LEN)
        for name in ("timeout_ms", "issued_ms", "deadline_ms"):
            _check_int(getattr(self, name), name)
        if not isinstance(self.action, RunAction):
            raise RunRefused("Malformed", "action must be a RunAction")
        if self.timeout_ms < MIN_TIMEOUT_MS:
            raise RunRefused("Malformed", "timeout must be positive")
        if self.deadline_ms <= self.issued_ms:
            raise RunRefused("Malformed", "the deadline must come after the issue time")
        try:
            selectors.parse(self.selector)
        except selectors.SelectorSyntaxError as exc:
            raise RunRefused("Malformed", f"selector: {exc.message} at position {exc.position}") from None

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.run_id, self.origin, self.selector, self.action.to_wire(), self.timeout_ms,
             self.issued_ms, self.deadline_ms, self.operator],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> RunOrder:
        obj = _unpack(data, MAX_PREVIEW_ORDER_BYTES, "run order")
        if not isinstance(obj, list) or len(obj) != 8:
            raise RunRefused("Malformed", "a run order is a list of 8 fields")
        run_id, origin, sel, action, timeout_ms, issued, deadline, operator = obj
        order = cls(run_id=run_id, origin=origin, selector=sel, action=RunAction.from_wire(action),
                    timeout_ms=timeout_ms, issued_ms=issued, deadline_ms=deadline, operator=operator)
        if order.action.kind != "preview" and len(data) > MAX_ORDER_BYTES:
            raise RunRefused("Malformed", f"a {order.action.kind} order of {len(data)} bytes exceeds {MAX_ORDER_BYTES}")
        return order


def new_run_id() -> str:
    return os.urandom(RUN_ID_BYTES).hex()


def _signed_bytes(domain: str, body: bytes) -> bytes:
    return msgpack.packb([domain, body], use_bin_type=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedOrder:
    """An encoded order, the id of the key that signed it, and the signature."""

    body: bytes
    key_id: str
    signature: bytes
    order: RunOrder = field(compare=False)  # decoded from ``body``, never re-encoded

    @classmethod
    def sign(cls, order: RunOrder, key: SigningKey) -> SignedOrder:
        if order.operator != key.key_id:
            raise TrustError(f"the order names operator {order.operator} but key {key.key_id} signs it")
        body = order.encode()
        return cls(body=body, key_id=key.key_id, signature=key.sign(_signed_bytes(ORDER_DOMAIN, body)), order=order)

    def to_wire(self) -> list:
        return [self.body, self.key_id, self.signature]

    def encode(self) -> bytes:
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @classmethod
    def from_wire(cls, obj: Any) -> SignedOrder:
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise RunRefused("Malformed", "a signed order is [body, key id, signature]")
        body, kid, sig = obj
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise RunRefused("Malformed", "order body and signature must be bytes")
        _check_str(kid, "signing key id", MAX_KEY_ID_LEN)
        order = RunOrder.decode(body)
        if order.operator != kid:
            raise RunRefused("BadSignature", f"the order names operator {order.operator} but is signed by {kid}")
        return cls(body=body, key_id=kid, signature=sig, order=order)

    @classmethod
    def decode(cls, data: bytes) -> SignedOrder:
        return cls.from_wire(_unpack(data, MAX_SIGNED_ORDER_BYTES, "signed run order"))


# ------------------------------------------------------------------ scope

# The trust root names two operator actions: "run" covers both command forms. A preview needs
# "converge": it dry-runs a converge of a candidate the publisher signed (checked on every node
# like a gossiped item), changes nothing, and shows no more than that operator sees by converging
# the bundle once injected; the trust root gains no new action, so older nodes still read it.
TRUST_ACTION = {"command": "run", "shell": "run", "converge": "converge", "preview": "converge"}


def operator_selectors(root: Any, key_id: str, kind: str) -> list[str | None]:
    """Selectors within which the root lets ``key_id`` start ``kind`` (empty: not at all)."""
    if root is None:
        return []
    return list(root.operator_selectors(key_id, TRUST_ACTION[kind]))


def check_order(signed: SignedOrder, *, root: Any, now_ms: int, facts: Mapping[str, Any] | None) -> RunOrder:
    """Every check a node makes before running ``signed``, except the replay check.

    With ``facts=None`` the node-specific checks (scope selector, order
    selector) are skipped: that is what the origin uses to refuse a bad order
    before it bothers the fleet.
    """
    order = signed.order
    public = root.public_key(signed.key_id) if root is not None else None
    if public is None or signed.key_id not in getattr(root, "operators", {}):
        raise RunRefused("UnknownKey", f"key {signed.key_id} is not an operator in the trust root")
    if not public.verify(_signed_bytes(ORDER_DOMAIN, signed.body), signed.signature):
        raise RunRefused("BadSignature", f"run {order.run_id}: signature does not verify with key {signed.key_id}")
    if root.expired(now_ms):  # a root past its expiry authorises nothing new
        raise RunRefused("Expired", f"run {order.run_id}: the trust root (serial {root.serial}) expired at "
                         f"{root.expires_ms} ms, {now_ms - root.expires_ms} ms ago; no run order is accepted until it is replaced")
    if now_ms > order.deadline_ms:
        raise RunRefused("Expired", f"run {order.run_id}: deadline passed {now_ms - order.deadline_ms} ms ago")
    if order.issued_ms > now_ms + MAX_SKEW_MS:
        raise RunRefused("FromTheFuture", f"run {order.run_id}: issued {order.issued_ms - now_ms} ms ahead of this clock")
    if order.deadline_ms - order.issued_ms > MAX_WINDOW_MS:
        raise RunRefused("Expired", f"run {order.run_id}: deadline more than {MAX_WINDOW_MS // 1000} s after issue")
    scopes = operator_selectors(root, signed.key_id, order.action.kind)
    if not scopes:
        raise RunRefused("OutOfScope", f"operator {signed.key_id} may not start "
                         f"{TRUST_ACTION[order.action.kind]} actions")
    if facts is not None:
        if not any(selectors.matches(s, facts) for s in scopes):
            shown = " or ".join(repr(s) for s in scopes)
            raise RunRefused("OutOfScope", f"this node is outside operator {signed.key_id}'s scope {shown}")
        if not selectors.matches(order.selector or None, facts):
            raise RunRefused("NotTargeted", f"run {order.run_id}: selector {order.selector!r} does not match this node")
    return order


# ------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    run_id: str
    node: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    error: str = ""  # why it could not run, or a timeout note
    truncated: bool = False  # output beyond the per-stream limit was dropped
    report: bytes = b""  # msgpack of a converge report, for converge actions

    def __post_init__(self) -> None:
        _check_str(self.run_id, "run id", MAX_RUN_ID_LEN)
        _check_node_id(self.node, "node id")
        if not isinstance(self.exit_code, int) or isinstance(self.exit_code, bool):
            raise RunRefused("Malformed", "exit code must be an integer")
        for name in ("stdout", "stderr", "report"):
            if not isinstance(getattr(self, name), bytes):
                raise RunRefused("Malformed", f"{name} must be bytes")
        _check_int(self.duration_ms, "duration_ms")
        _check_str(self.error, "error", MAX_STRING, empty=True)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.error

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.run_id, self.node, self.exit_code, self.stdout, self.stderr, self.duration_ms,
             self.error, self.truncated, self.report],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> RunResult:
        obj = _unpack(data, MAX_RESULT_BYTES, "run result")
        if not isinstance(obj, list) or len(obj) != 9:
            raise RunRefused("Malformed", "a run result is a list of 9 fields")
        run_id, node, code, out, err, dur, error, trunc, report = obj
        return cls(run_id=run_id, node=node, exit_code=code, stdout=out, stderr=err, duration_ms=dur,
                   error=error, truncated=bool(trunc), report=report)

    def to_json(self) -> dict:
        doc = {
            "node": self.node,
            "exit_code": self.exit_code,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "duration_ms": self.duration_ms,
            "error": self.error,
            "truncated": self.truncated,
        }
        if self.report:
            try:
                doc["report"] = msgpack.unpackb(self.report, raw=False)
            except Exception:  # a report that does not decode is shown as absent
                doc["report"] = None
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedResult:
    body: bytes
    key_id: str
    signature: bytes
    result: RunResult = field(compare=False)

    @classmethod
    def sign(cls, result: RunResult, key: SigningKey) -> SignedResult:
        body = result.encode()
        return cls(body=body, key_id=key.key_id, signature=key.sign(_signed_bytes(RESULT_DOMAIN, body)), result=result)

    def to_wire(self) -> list:
        return [self.body, self.key_id, self.signature]

    @classmethod
    def from_wire(cls, obj: Any) -> SignedResult:
        if not isinstance(obj, (list, tuple)) or len(obj) != 3:
            raise RunRefused("Malformed", "a signed result is [body, key id, signature]")
        body, kid, sig = obj
        if not isinstance(body, bytes) or not isinstance(sig, bytes):
            raise RunRefused("Malformed", "result body and signature must be bytes")
        _check_str(kid, "signing key id", MAX_KEY_ID_LEN)
        return cls(body=body, key_id=kid, signature=sig, result=RunResult.decode(body))

    def verify(self, node_key: PublicKey, *, run_id: str, node: str) -> RunResult:
        """The result, if ``node_key`` signed it for this run and node; else RunRefused."""
        res = self.result
        if res.run_id != run_id:
            raise RunRefused("Malformed", f"result names run {res.run_id}, expected {run_id}")
        if res.node != node:
            raise RunRefused("BadSignature", f"result from {node} claims to come from {res.node}")
        if self.key_id != node_key.key_id or not node_key.verify(_signed_bytes(RESULT_DOMAIN, self.body), self.signature):
            raise RunRefused("BadSignature", f"result for run {run_id} is not signed by {node}'s key {node_key.key_id}")
        return res


# ------------------------------------------------------------------ batches


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSize:
    """``--batch``: a count of nodes, or a percentage of the targets."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str | int | None) -> BatchSize | None:
        if text is None or text == "":
            return None
        s = str(text).strip()
        try:
            if s.endswith("%"):
                pct = float(s[:-1])
                if not 0 < pct <= 100:
                    raise ValueError
                return cls(percent=pct)
            n = int(s)
            if n < 1:
                raise ValueError
            return cls(count=n)
        except ValueError:
            raise ConfigError(f"batch size {text!r}: give a positive count (10) or a percentage in (0, 100] (10%)") from None

    def size_for(self, total: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, math.ceil(total * (self.percent or 100) / 100))

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def plan_batches(nodes: Iterable[str], batch: BatchSize | None) -> list[list[str]]:
    """Split the targets into batches in a stable order (sorted node ids)."""
    ordered = sorted(set(nodes))
    if not ordered:
        return []
    size = len(ordered) if batch is None else batch.size_for(len(ordered))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def should_stop(failures: int, max_failures: int | None) -> bool:
    """Further batches stop once failures pass ``max_failures`` (None: never)."""
    return max_failures is not None and failures > max_failures
