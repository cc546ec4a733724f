"""The fleet's state as one document, from the answers to a fleet status query.

``summarize`` is pure (the answers in, a document out): ``grapevine status
--fleet`` prints it and the fleet web page (node/ui.py) renders it, so both
say the same thing about drift and staleness. For every bundle it finds the
newest version any node holds; a targeted node that holds an older one, has
not applied it, or whose last converge failed is listed with its problems;
a node that heard no gossip recently, or whose last converge is older than
``STALE_CONVERGE_S``, is stale.
"""

from __future__ import annotations

from typing import Any

from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import Version

STALE_CONVERGE_S = 3600.0  # a node whose last converge is older than this is flagged stale


def stamp_key(text: str) -> tuple:
    """A version's text (``str(Version)``) as a sortable tuple; junk from a node sorts first, never crashes."""
    try:
        return tuple(Version.parse(text))
    except ConfigError:
        return (0, 0, text or "")


def summarize(answer: dict[str, Any]) -> dict[str, Any]:
    """Every answering node's bundles, last converge and staleness, and what is not converged."""
    nodes: dict = answer["answers"]
    newest: dict[str, str] = {}
    for info in nodes.values():
        for b in info.get("bundles", []):
            if b["name"] not in newest or stamp_key(b["version"]) > stamp_key(newest[b["name"]]):
                newest[b["name"]] = b["version"]
    bundles = {name: {"version": v, "targeted": 0, "applied": 0} for name, v in sorted(newest.items())}
    details = []
    for node, info in sorted(nodes.items()):
        problems = []
        for b in info.get("bundles", []):
            if not b.get("targeted"):
                continue
            row = bundles[b["name"]]
            row["targeted"] += 1
            if b.get("applied") and b["version"] == newest[b["name"]]:
                row["applied"] += 1
            elif b["version"] != newest[b["name"]]:
                problems.append(f"{b['name']}: holds {b['version']}, newest is {newest[b['name']]}")
            else:
                problems.append(f"{b['name']}: {b['version']} not applied"
                                + (f" (applied {b['applied_version']})" if b.get("applied_version") else ""))
        last = info.get("last_report")
        if last and (last.get("failed") or last.get("error")):
            problems.append(f"last converge failed: {last.get('failed')} resource(s) {last.get('error') or ''}".strip())
        now = info.get("now_ms") or 0
        if info.get("stale"):
            problems.append("stale: no gossip heard recently")
        elif last and last.get("at_ms") and now - last["at_ms"] > STALE_CONVERGE_S * 1000:
            problems.append(f"stale: last converge {int((now - last['at_ms']) / 1000)} s ago")
        if problems:
            details.append({"node": node, "problems": problems, "last_report": last})
    return {
        "nodes": len(nodes),
        "converged": len(nodes) - len(details),
        "not_converged": details,
        "bundles": bundles,
        "members": nodes,
        "discovery_ms": answer.get("discovery_ms"),
        "origin": answer.get("origin"),
    }
