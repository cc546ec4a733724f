"""``grapevine inject site.yaml --key K --preview``: the fleet's plan for a change, changing nothing.

The candidates are packed and signed with ``--key`` (the publisher), checked
against the agent's trust root first (a bundle outside its grant is refused
here, exit 2, before anything is sent), and sent in one ``preview`` run order
signed with the same key (the operator; the trust root must let it
``converge`` the targets). The order goes where the bundles' own targets
select; each node answers with its plan and the plans are aggregated
(policy/preview.py). Exit status: 0 the preview ran (changes may be
planned), 1 some target would fail or did not answer, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from grapevine.gossip.errors import GrapevineError
from grapevine.policy import preview as plans
from grapevine.policy import runorder, selectors

PREVIEW_TIMEOUT_S = 60.0  # per node: a dry run reads, it does not install anything


def order_selector(targets: list[str | None]) -> str:
    """The nodes any candidate targets: its target, or the targets joined with ``or``; "" for every node."""
    distinct = sorted({(t or "").strip() for t in targets})
    if "" in distinct or not distinct:
        return ""
    text = distinct[0] if len(distinct) == 1 else " or ".join(f"({t})" for t in distinct)
    if len(text) > selectors.MAX_SELECTOR_CHARS:
        return ""  # every node is asked; each one checks which candidates target it
    return text


def preview_candidates(sock: str, items: list, key_path: Path, *, timeout_s: float = PREVIEW_TIMEOUT_S) -> dict:
    """Send the candidates as one preview order and return the fleet's plan (the JSON document)."""
    from grapevine.policy.bundle import Bundle
    from grapevine.policy.keys import SigningKey
    from grapevine.policy.runorder import RunAction

    from .client import AgentClient
    from .run import build_order

    bundles = [i for i in items if i.key.startswith("bundle/")]
    if not bundles:
        raise click.UsageError("--preview: no bundle to preview")
    try:
        action = RunAction.preview(bundles)
    except runorder.RunRefused as exc:
        raise click.UsageError(f"--preview: {exc.detail}") from None
    selector = order_selector([Bundle.decode(i.payload).target for i in bundles])
    signed = build_order(sock=sock, key=SigningKey.load(key_path), selector=selector, action=action,
                         timeout_s=timeout_s, batched=False)
    body = {"order": signed.encode().hex(), "batch": None, "max_failures": None}
    summary: dict | None = None
    for ev in AgentClient(sock).stream("POST", "/v1/run", body):
        if ev.get("event") == "done":
            summary = ev["summary"]
        elif ev.get("event") == "error":
            raise GrapevineError(f"the preview failed in the agent: {ev.get('detail')}")
    if summary is None:
        raise click.ClickException("the agent closed the preview stream before it finished")
    doc = fleet_plan(summary)
    doc.update(run_id=signed.order.run_id, selector=selector,
               bundles=[i.key[len("bundle/"):] for i in bundles], discovery_ms=summary.get("discovery_ms"))
    return doc


def fleet_plan(summary: dict) -> dict:
    """Aggregate a preview run's summary (node/origin.py) into the fleet's plan."""
    plan_of: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for r in summary.get("results") or ():
        report = r.get("report")
        if isinstance(report, dict) and "resources" in report:
            plan_of[r["node"]] = report
        else:
            failures[r["node"]] = r.get("error") or f"exit {r.get('exit_code')} without a plan"
    for x in summary.get("refused") or ():
        failures[x["node"]] = f"refused the order: {x['reason']}: {x.get('detail', '')}".rstrip(": ")
    for node, detail in (summary.get("unreachable") or {}).items():
        failures.setdefault(node, f"unreachable: {detail}")
    for node in summary.get("missing") or ():
        failures.setdefault(node, "no answer before the deadline")
    return plans.aggregate(summary.get("targets") or (), plan_of, failures)


def show(doc: dict) -> None:
    for line in plans.render(doc):
        click.echo(line)


def exit_status(doc: dict) -> int:
    return 1 if doc["failed"] else 0


def preview_inject(client: Any, items: list, key_path: Path | None, *, now: bool, as_json: bool) -> int:
    """``inject --preview``: sign, check against the agent's trust root, preview, print; nothing is injected."""
    from grapevine.cli.output import emit_json

    from .bundle import check_before_inject

    if key_path is None:
        raise click.UsageError("--preview needs --key: it signs the candidate (publisher) and the preview order (operator)")
    if now:
        raise click.UsageError("--preview changes nothing; --now and --wait do not go with it")
    check_before_inject(client, items)  # a bundle outside its publisher's grant is refused here (exit 2)
    doc = preview_candidates(client.path, items, key_path)
    if as_json:
        emit_json(doc)
    else:
        show(doc)
    return exit_status(doc)
