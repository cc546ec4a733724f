"""The run target as a sans-I/O state machine: ``RunTarget``.

Every node plays the target. For each order posted to it, ``RunTarget``
decides, with the time passed in and nothing sent or slept:

1. ``check``: the order decodes, its operator signed it within scope and
   before its deadline (``policy.runorder.check_order``), its origin is a
   known member of the mesh, and its id is new here; a repeat from the
   origin whose first reply was lost (``retry``) is answered from the
   execution already under way, never run again;
2. the shell then verifies the origin's ticket (the origin's node-key
   signature over the run id and this node; ``ticket_valid``) with the key
   it holds for the origin; ``accept`` records the id as seen, durably,
   before anything runs;
3. ``result_post``: the signed result goes to one destination only, the
   origin named in the operator-signed order, and result posts leave within
   an outbound token bucket.

Every order that decoded, executed or refused, leaves one audit row
(``audit_row``), which the shell stores through its ``RunLog`` port.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import msgpack

from grapevine.gossip.errors import Reason
from grapevine.gossip.wire import MAX_DETAIL_CHARS
from grapevine.policy import runorder
from grapevine.policy.keys import PublicKey
from grapevine.policy.runorder import RunOrder, RunRefused, SignedOrder

from .ratelimit import TokenBucket

TICKET_DOMAIN = "grapevine/run-ticket/1"  # what an origin signs for each node it starts
MAX_EXECUTED = 1024  # recent executions a repeated order post from the origin is answered from
MAX_AUDIT_COMMAND_CHARS = 1000  # the command as recorded in the audit trail


class SeenRuns(Protocol):
    """Durable run ids (node/state.py): an order executes at most once, across restarts too."""

    def run_seen(self, run_id: str) -> bool: ...

    def mark_run_seen(self, run_id: str, deadline_ms: int) -> bool: ...


def ticket_bytes(run_id: str, node: str) -> bytes:
    return msgpack.packb([TICKET_DOMAIN, run_id, node], use_bin_type=True)


def ticket_valid(key: PublicKey | None, ticket: Any, run_id: str, node: str) -> bool:
    return key is not None and isinstance(ticket, bytes) and key.verify(ticket_bytes(run_id, node), ticket)


@dataclass(frozen=True, slots=True)
class Admit:
    """The order passed every check that needs no I/O; the ticket is next (``again``: a repeat post)."""

    order: RunOrder
    ticket: Any
    again: Any = None  # the execution already under way, for a retry from the origin


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: Reason
    detail: str
    order: RunOrder | None = None  # None: the order did not even decode

    def reply(self) -> dict:
        return {"ok": False, "refused": self.reason, "detail": self.detail[:MAX_DETAIL_CHARS]}


class RunTarget:
    """Decides about the orders posted to this node; the shell executes and sends."""

    def __init__(self, me: str, *, seen: SeenRuns, root: Callable[[], Any], facts: dict,
                 is_member: Callable[[str], bool], bucket: TokenBucket) -> None:
        self.me = me
        self.seen = seen
        self.root = root
        self.facts = facts
        self.is_member = is_member
        self.bucket = bucket
        self.executed: collections.OrderedDict[str, Any] = collections.OrderedDict()  # run id -> execution handle

    def check(self, body: Any, now_ms: int) -> Admit | Refuse:
        signed = None
        try:
            wire = body.get("order") if isinstance(body, dict) else None
            signed = SignedOrder.from_wire(wire)
            order = runorder.check_order(signed, root=self.root(), now_ms=now_ms, facts=self.facts)
        except RunRefused as exc:
            return Refuse(exc.reason, exc.detail, signed.order if signed is not None else None)
        if order.origin != self.me and not self.is_member(order.origin):
            return Refuse("UnknownOrigin", f"run {order.run_id}: origin {order.origin} is not a known member", order)
        ticket = body.get("ticket")
        if self.seen.run_seen(order.run_id):
            again = self.executed.get(order.run_id)
            if body.get("retry") is True and again is not None:
                return Admit(order, ticket, again)
            return Refuse("Replayed", f"run {order.run_id} was already received here", order)
        return Admit(order, ticket)

    def accept(self, admit: Admit, ticket_ok: bool) -> Refuse | None:
        """After the ticket check: None when the order is to run (its id now durably seen)."""
        order = admit.order
        if admit.again is not None:
            if ticket_ok:
                return None
            return Refuse("Replayed", f"run {order.run_id} was already received here", order)
        if not ticket_ok:
            return Refuse("NotSentByOrigin", f"origin {order.origin} has not sent run {order.run_id} here", order)
        if not self.seen.mark_run_seen(order.run_id, order.deadline_ms):
            return Refuse("Replayed", f"run {order.run_id} was already received here", order)
        return None

    def started(self, order: RunOrder, handle: Any) -> None:
        """Remember the execution, so a repeat post from the origin is answered from it."""
        self.executed[order.run_id] = handle
        while len(self.executed) > MAX_EXECUTED:
            self.executed.popitem(last=False)

    def result_post(self, order: RunOrder, now: float) -> str | None:
        """Where the result of ``order`` may be posted now: its origin, or None when over the outbound rate."""
        if order.origin == self.me:
            return order.origin
        return order.origin if self.bucket.take(now) else None


def describe_action(action: runorder.RunAction) -> str:
    return action.describe()[:MAX_AUDIT_COMMAND_CHARS]


def audit_row(order: RunOrder | None, *, started_ms: int, duration_ms: int | None, exit_code: int | None,
              refused: str | None, sender: str | None = None) -> dict | None:
    """One row of the run audit trail (``grapevine history --runs``); None when there is no order to name."""
    if order is None:
        return None
    return {"order": order.run_id, "operator": order.operator, "command": describe_action(order.action),
            "selector": order.selector, "origin": order.origin, "started_ms": started_ms,
            "duration_ms": duration_ms, "exit_code": exit_code, "refused": refused}
