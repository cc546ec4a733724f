"""Fleet preview: one node's plan for candidate bundles, and the fleet's plan aggregated.

``grapevine inject site.yaml --preview`` sends the signed candidates to their
targets in a ``preview`` run order; each node dry-runs a converge in which
the candidates stand in for the bundles of the same names (node/preview.py)
and answers with a *plan*::

    {"targeted": [bundle names of candidates that target this node],
     "refused":  [{"bundle", "reason", "detail"}],   # a candidate this node would not admit or apply
     "error":    "",                                 # the dry run could not run at all
     "resources": [{"id", "bundle", "status", "change", "diff", "diff_sha", "error"}]}

Only the candidates' own resources are in a plan: the other bundles on the
node take part in the dry run (so ``require`` and ``notify`` across bundles
resolve) but are not what the operator asked about. ``diff_sha`` is the
SHA-256 of the full diff, so nodes are grouped correctly even when a diff's
text had to be dropped to keep the result small (``fit_plan``).

``aggregate`` turns the plans of every target into the fleet's plan: one
group per distinct change (resource, change summary, diff) with the nodes
that share it, the nodes already in the desired state, and the nodes that
would fail and why. Each target lands in exactly one of ``groups`` (through
each of its changes), ``unchanged`` and ``failed``; a node that would fail
anywhere is listed as failed only, since that is what must be fixed first.
Everything here is pure: plain dicts in, plain dicts out.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

import msgpack

PLAN_STATUSES = ("changed", "unchanged", "failed", "skipped")
MAX_ERROR_CHARS = 400  # one node's failure as shown in the fleet's plan
MAX_CHANGE_CHARS = 400  # one resource's change summary
OMITTED = "(diff omitted: too large to report)"  # the digest still groups the nodes that share it


def diff_sha(diff: str) -> str:
    return hashlib.sha256(diff.encode("utf-8", "replace")).hexdigest() if diff else ""


def plan_from_report(report: Mapping[str, Any], candidates: Iterable[str], *,
                     refused: Iterable[Mapping[str, str]] = (), targeted: Iterable[str] = ()) -> dict:
    """A node's plan from its dry-run converge report (``Report.to_json()`` or an error document)."""
    names = set(candidates)
    rows = []
    for r in report.get("resources") or ():
        if r.get("bundle") not in names:
            continue
        status = r.get("status") if r.get("status") in PLAN_STATUSES else "failed"
        change = "; ".join(r.get("changes") or ()) or (str(r.get("reason") or "") if status == "skipped" else "")
        diff = str(r.get("diff") or "")
        rows.append({"id": str(r.get("id")), "bundle": str(r.get("bundle")), "status": status,
                     "change": change[:MAX_CHANGE_CHARS], "diff": diff, "diff_sha": diff_sha(diff),
                     "error": str(r.get("error") or "")[:MAX_ERROR_CHARS]})
    return {"targeted": sorted(set(targeted)), "refused": [dict(x) for x in refused],
            "error": str(report.get("error") or "")[:MAX_ERROR_CHARS], "resources": rows}


def fit_plan(plan: dict, limit: int) -> bytes:
    """The plan packed in at most ``limit`` bytes: the largest diffs' text dropped first (their digests stay)."""
    packed = msgpack.packb(plan, use_bin_type=True)
    if len(packed) <= limit:
        return packed
    rows = [dict(r) for r in plan.get("resources", ())]
    excess = len(packed) - limit
    for r in sorted(rows, key=lambda r: len(r["diff"]), reverse=True):
        if excess <= 0 or not r["diff"]:
            break
        excess -= len(r["diff"].encode("utf-8", "replace")) - len(OMITTED)
        r["diff"] = OMITTED
    packed = msgpack.packb(dict(plan, resources=rows), use_bin_type=True)
    if len(packed) <= limit:
        return packed
    # still too large: no diff text at all, short summaries (the digests still group the nodes)
    rows = [dict(r, diff=OMITTED if r["diff"] else "", change=r["change"][:80]) for r in rows]
    packed = msgpack.packb(dict(plan, resources=rows), use_bin_type=True)
    if len(packed) <= limit:
        return packed
    # thousands of resources: what decides the node's place in the fleet's plan, as an error
    why = plan_failure(plan)
    short = {"targeted": plan.get("targeted", []), "refused": [], "resources": [],
             "error": (why or "")[:MAX_ERROR_CHARS // 2] + f" (the plan of {len(rows)} resources is too large to report)"}
    return msgpack.packb(short, use_bin_type=True)


def plan_failure(plan: Mapping[str, Any]) -> str | None:
    """Why the node would fail, or None."""
    if plan.get("error"):
        return str(plan["error"])
    reasons = [f"{x.get('bundle')}: {x.get('reason')}: {x.get('detail', '')}".rstrip(": ") for x in plan.get("refused") or ()]
    reasons += [f"{r['id']}: {r.get('error') or 'failed'}" for r in plan.get("resources") or () if r.get("status") == "failed"]
    if reasons:
        return "; ".join(reasons)[:MAX_ERROR_CHARS]
    return None


def aggregate(targets: Iterable[str], plans: Mapping[str, Mapping[str, Any]],
              failures: Mapping[str, str] = {}) -> dict:
    """The fleet's plan from each target's plan (``plans``) and the targets that gave none (``failures``).

    A target with neither a plan nor a failure is reported failed as ``no answer``.
    Groups: largest first, then by resource id; names sorted.
    """
    targets = sorted(set(targets) | set(plans) | set(failures))
    groups: dict[tuple[str, str, str], dict] = {}
    unchanged, failed, not_targeted = [], [], []
    for node in targets:
        if node in failures:
            failed.append({"node": node, "error": str(failures[node])[:MAX_ERROR_CHARS]})
            continue
        plan = plans.get(node)
        if plan is None:
            failed.append({"node": node, "error": "no answer"})
            continue
        why = plan_failure(plan)
        if why is not None:
            failed.append({"node": node, "error": why})
            continue
        if not plan.get("targeted"):
            not_targeted.append(node)
            continue
        changed = [r for r in plan.get("resources") or () if r.get("status") in ("changed", "skipped")]
        if not changed:
            unchanged.append(node)
            continue
        for r in changed:
            key = (r["id"], r.get("change") or r["status"], r.get("diff_sha") or diff_sha(r.get("diff") or ""))
            g = groups.setdefault(key, {"resource": key[0], "change": key[1], "diff": "", "nodes": []})
            if not g["diff"] or (g["diff"] == OMITTED and r.get("diff")):
                g["diff"] = r.get("diff") or ""
            g["nodes"].append(node)
    out = sorted(groups.values(), key=lambda g: (-len(g["nodes"]), g["resource"], g["change"]))
    for g in out:
        g["count"] = len(g["nodes"])
    return {"targets": targets, "groups": out, "unchanged": unchanged, "failed": failed,
            "not_targeted": not_targeted,
            "changed_nodes": len({n for g in out for n in g["nodes"]})}


# -- the text view: a screenful at any fleet size -------------------------------------------
SHOW_GROUPS = 8  # groups listed (largest first); the rest are counted
SHOW_DIFFS = 3  # groups whose diff is printed
DIFF_LINES = 8  # lines of each printed diff
SHOW_NAMES = 3  # node names per line, then "and N more"
SHOW_FAILURES = 5  # distinct failure reasons listed


def _names(nodes: list[str], shown: int = SHOW_NAMES) -> str:
    text = ", ".join(nodes[:shown])
    return text + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")


def render(doc: Mapping[str, Any]) -> list[str]:
    """The fleet's plan as lines of text: groups with counts and a few names, diffs of the largest."""
    targets, groups = doc["targets"], doc["groups"]
    lines = [f"preview of {len(targets)} target(s): {doc.get('changed_nodes', 0)} would change, "
             f"{len(doc['unchanged'])} already in the desired state, {len(doc['failed'])} would fail; nothing was changed"]
    for i, g in enumerate(groups[:SHOW_GROUPS]):
        lines.append(f"  {g['resource']}: {g['change'] or 'change'}  on {g['count']} node(s): {_names(g['nodes'])}")
        if i < SHOW_DIFFS and g["diff"]:
            diff = g["diff"].splitlines()
            lines += [f"      {ln}" for ln in diff[:DIFF_LINES]]
            if len(diff) > DIFF_LINES:
                lines.append(f"      ... {len(diff) - DIFF_LINES} more diff line(s) (--json shows all)")
    if len(groups) > SHOW_GROUPS:
        rest = groups[SHOW_GROUPS:]
        lines.append(f"  and {len(rest)} more change(s) on {len({n for g in rest for n in g['nodes']})} node(s) (--json lists them)")
    if doc["unchanged"]:
        lines.append(f"unchanged: {len(doc['unchanged'])} node(s): {_names(doc['unchanged'])}")
    if doc.get("not_targeted"):
        lines.append(f"not targeted by any candidate: {len(doc['not_targeted'])} node(s)")
    if doc["failed"]:
        by_error: dict[str, list[str]] = {}
        for f in doc["failed"]:
            by_error.setdefault(f["error"], []).append(f["node"])
        lines.append(f"would fail: {len(doc['failed'])} node(s)")
        ranked = sorted(by_error.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        for error, nodes in ranked[:SHOW_FAILURES]:
            lines.append(f"  {len(nodes)} node(s) ({_names(nodes)}): {error[:200]}")
        if len(ranked) > SHOW_FAILURES:
            lines.append(f"  and {len(ranked) - SHOW_FAILURES} more reason(s) (--json lists them)")
    return lines
