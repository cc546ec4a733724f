"""Staged rollouts on a node (filled in below): the wire forms of reports and status requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grapevine.gossip import wire
from grapevine.gossip.errors import ProtocolError
from grapevine.gossip.item import Version
from grapevine.gossip.wire import MAX_DETAIL_CHARS, MAX_KEY_LEN
from grapevine.policy.rollout_machines import REPORT_STATES

REPORT_ROUTE = wire.ROUTE_ROLLOUT_REPORT
STATUS_ROUTE = wire.ROUTE_ROLLOUT_STATUS


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReport:
    """A node's gate state for one bundle version, as posted to the driver (the envelope signs it)."""

    bundle: str
    version: Version
    state: str
    detail: str = ""
    term: int = 0

    def to_wire(self) -> dict:
        return {"b": self.bundle, "v": str(self.version), "s": self.state, "d": self.detail[:MAX_DETAIL_CHARS],
                "t": self.term}


def _bundle_and_version(body: Any, what: str) -> tuple[str, Version]:
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} must be a map", reason="BadRouteBody")
    b, v = body.get("b"), body.get("v")
    if not isinstance(b, str) or not b or len(b) > MAX_KEY_LEN or not isinstance(v, str) or len(v) > 2 * MAX_KEY_LEN:
        raise ProtocolError(f"{what} must name a bundle and a version", reason="BadRouteBody")
    try:
        return b, Version.parse(v)
    except Exception:
        raise ProtocolError(f"{what}: {v[:40]!r} is not a version", reason="BadRouteBody") from None


def decode_report(body: Any) -> NodeReport:
    """A ``rollout.report`` route body (bounded by the transport at MAX_ROUTE_BODY_BYTES first)."""
    bundle, version = _bundle_and_version(body, "rollout report")
    state, detail, term = body.get("s"), body.get("d", ""), body.get("t", 0)
    if state not in REPORT_STATES:
        raise ProtocolError(f"rollout report state must be one of {REPORT_STATES}", reason="BadRouteBody")
    if not isinstance(detail, str) or not isinstance(term, int) or isinstance(term, bool) or not 0 <= term < 2**32:
        raise ProtocolError("rollout report: detail must be text and term a small number", reason="BadRouteBody")
    return NodeReport(bundle=bundle, version=version, state=state, detail=detail[:MAX_DETAIL_CHARS], term=term)


def decode_status_request(body: Any) -> tuple[str, Version]:
    """A ``rollout.status`` route body: which rollout is asked about."""
    return _bundle_and_version(body, "rollout status request")
