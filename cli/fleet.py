"""Commands that talk to the local agent: inject, status, members, bundles, history, rollback.

The agent is found by ``--agent SOCKET``, else ``$GRAPEVINE_AGENT``, else
``agent.sock`` in the default data directory; every request goes through
``AgentClient`` (cli/client.py), the one client of the local API.

Bundles are packed and signed here, with the operator's key; the agent never
sees an author's private key. ``rollback`` fetches the old content from the
agent's history and re-signs it as a new version, so it wins everywhere.

Each command is a thin click wrapper over a plain function (``inject_items``,
``fetch_status``, ...) so other commands can add flags around them.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import click

from grapevine.cli.client import (  # noqa: F401 - AgentClient and its errors are imported from here too
    CONNECT_TIMEOUT_S,
    ENV_AGENT,
    AgentClient,
    AgentRefused,
    AgentUnavailable,
    agent_client,
    agent_option,
    find_socket,
)
from grapevine.cli.output import emit_json, json_option
from grapevine.gossip.errors import ConfigError, GrapevineError, Reason
from grapevine.gossip.item import Version

CONVERGE_TIMEOUT_S = 3600.0  # a converge may install packages


# -- inject ------------------------------------------------------------------
def load_items(path: Path, key_path: Path | None, now_ms: int | None = None, plan: object = None) -> list:
    """Signed items from a packed .gv file, or a policy file packed and signed with ``key_path``
    (``plan``: a rollout plan from inject's flags, replacing the file's own for every bundle)."""
    from grapevine.gossip.item import SignedItem

    if path.suffix == ".gv":
        if plan is not None:
            raise click.UsageError(f"{path} is signed already: write the rollout plan into the policy file, or inject"
                                   " the policy file with --key and the rollout flags")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise click.UsageError(f"{path}: {exc.strerror}") from None
        return [SignedItem.decode(data)]
    if key_path is None:
        raise click.UsageError(f"{path} is a policy file: give --key to sign it (or inject a packed .gv)")
    from grapevine.policy.bundle import bundles_from_file, pack
    from grapevine.policy.keys import SigningKey

    import dataclasses

    key = SigningKey.load(key_path)
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    bundles = bundles_from_file(str(path))
    if plan is not None:
        bundles = [dataclasses.replace(b, rollout=plan) for b in bundles]
    return [pack(b, key, now) for b in bundles]


def inject_items(client: AgentClient, items: list) -> list[dict]:
    return [client.post("/v1/inject", data=item.encode()) for item in items]


@click.command("inject")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), help="Author key to sign a policy file.")
@click.option("--now", is_flag=True, help="Also converge the targets now (a converge run order signed with --key).")
@click.option("--wait", is_flag=True, help="With --now: wait for every target's converge result and show it.")
@click.option("--preview", is_flag=True,
              help="Dry-run the signed candidate on its targets instead (nothing stored or changed): the fleet's plan.")
@click.option("--stages", default=None, help="Staged rollout: cumulative stage sizes, counts or percentages (1,10%,100%).")
@click.option("--soak", default=None, help="Staged rollout: how long a stage stays healthy before the next opens (30s).")
@click.option("--health", default=None, help="Staged rollout: health command each node runs after applying.")
@click.option("--health-timeout", default=None, help="Staged rollout: the health command's timeout (10s).")
@click.option("--max-failures", default=None, help="Staged rollout: failed nodes tolerated, N or P% (0).")
@click.option("--on-failure", type=click.Choice(["rollback", "halt"]), default=None,
              help="Staged rollout: once failures pass the budget, send every node back (rollback) or only stop.")
@agent_option
@json_option
def inject(path: Path, key_path: Path | None, now: bool, wait: bool, agent_socket: str | None, as_json: bool,
           preview: bool = False, stages: str | None = None, soak: str | None = None, health: str | None = None,
           health_timeout: str | None = None, max_failures: str | None = None, on_failure: str | None = None) -> int:
    """Sign (if needed) and inject bundles through the local agent; a bundle with a rollout plan
    (in the file or from the flags) is then rolled out in stages, driven from here."""
    from grapevine.policy.rollout import plan_from_flags

    plan = plan_from_flags(stages=stages, soak=soak, health=health, health_timeout=health_timeout,
                           max_failures=max_failures, on_failure=on_failure)
    if preview:  # cli/preview.py: one preview run order to the bundles' targets; nothing is injected
        from .preview import preview_inject

        if key_path is None:
            raise click.UsageError("--preview needs --key: it signs the candidate (publisher) and the preview order (operator)")
        if now or wait:
            raise click.UsageError("--preview changes nothing; --now and --wait do not go with it")
        return preview_inject(agent_client(agent_socket), load_items(path, key_path, plan=plan), key_path, now=now or wait,
                              as_json=as_json)
    if now and key_path is None:
        raise click.UsageError("--now needs --key: the converge order is signed with an operator key")
    if wait and not now:
        raise click.UsageError("--wait follows the converge that --now starts; give both")
    client = agent_client(agent_socket)
    items = load_items(path, key_path, plan=plan)
    from .bundle import check_before_inject
    from .rollout import drive_injected, staged

    planned = staged(items)
    if planned and now:
        raise click.UsageError("a staged rollout applies stage by stage: --now does not go with a rollout plan")
    if planned and key_path is None:
        raise click.UsageError("a staged rollout is driven from here and its stage records are signed: give --key")
    check_before_inject(client, items)  # grants and keys first: a policy file goes in whole or not at all
    results = inject_items(client, items)
    if not as_json:
        for r in results:
            click.echo(f"injected {r['key']} version {r['version']} via {r['node']}")
    run = converge_injected(client.path, items, key_path, wait=wait, as_json=as_json) if now else None
    rollouts = [drive_injected(client, key_path, item, echo=not as_json) for item in planned]
    if as_json:
        emit_json({"injected": results, **({"run": run} if run is not None else {}),
                   **({"rollouts": rollouts} if planned else {})})
    elif rollouts:
        from .rollout import show_status

        for doc in rollouts:
            show_status(doc)
    if any(doc.get("state") != "complete" for doc in rollouts):  # halted, rolled back, or aborted by someone else
        return 1
    return 0 if run is None or run.get("ok", True) else 1


# -- status, members, bundles, history ---------------------------------------
def fetch_status(client: AgentClient) -> dict:
    return client.get("/v1/status")


@click.command("status")
@click.option("--fleet", is_flag=True, help="Ask every node (discovery query): versions applied, last converge, drift.")
@click.option("--target", "selector", default="", help="With --fleet: only the nodes matching this selector.")
@agent_option
@json_option
def status(fleet: bool, selector: str, agent_socket: str | None, as_json: bool) -> None:
    """State of the local agent (or, with --fleet, of every node)."""
    if fleet:
        show_fleet_status(agent_client(agent_socket), selector, as_json)
        return
    doc = fetch_status(agent_client(agent_socket))
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{doc['node']}: {doc['status']}")
    click.echo(f"  items {doc['items']} (bundles {doc['bundles']}), peers {doc['active']} active / {doc['passive']} passive")
    click.echo(f"  trust root serial {doc['trust_root_serial']}, network key {doc['network_key'] or 'none (unencrypted)'}")
    lc = doc.get("last_converge")
    if lc:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(lc["at_ms"] / 1000))
        click.echo(f"  last converge {when} UTC ({lc['trigger']}): {lc.get('changed')} changed, {lc.get('failed')} failed")
    else:
        click.echo("  no converge yet")


@click.command("members")
@agent_option
@json_option
def members(agent_socket: str | None, as_json: bool) -> None:
    """Peers the local agent is linked to (active) and knows of (passive)."""
    doc = agent_client(agent_socket).get("/v1/members")
    if as_json:
        emit_json(doc)
        return
    for p in doc["active"]:
        click.echo(f"{p}  active")
    for p in doc["passive"]:
        click.echo(f"{p}  passive")


@click.command("bundles")
@agent_option
@json_option
def bundles(agent_socket: str | None, as_json: bool) -> None:
    """Bundles the local agent holds, and whether they are applied here."""
    doc = agent_client(agent_socket).get("/v1/bundles")
    if as_json:
        emit_json(doc)
        return
    if not doc["bundles"]:
        click.echo("no bundles")
    for b in doc["bundles"]:
        state = "applied" if b["applied"] else ("pending" if b["targeted"] else "not targeted")
        click.echo(f"{b['name']}  {b['version']}  target={b['target'] or '*'}  {state}")


def fetch_history(client: AgentClient, name: str) -> dict:
    from urllib.parse import quote

    return client.get(f"/v1/history?name={quote(name, safe='')}")


@click.command("history")
@click.argument("name", required=False)
@click.option("--runs", "runs", is_flag=True, help="The run orders this node executed or refused (its audit trail).")
@click.option("--fleet", is_flag=True, help="With --runs: gather the recent audit rows of every node.")
@agent_option
@json_option
def history(name: str | None, runs: bool, fleet: bool, agent_socket: str | None, as_json: bool) -> None:
    """Every accepted version of bundle NAME (newest last), or with --runs the run audit trail."""
    if runs:
        show_run_history(agent_client(agent_socket), fleet, as_json)
        return
    if not name:
        raise click.UsageError("history needs a bundle NAME, or --runs")
    if fleet:
        raise click.UsageError("--fleet goes with --runs")
    doc = fetch_history(agent_client(agent_socket), name)
    if as_json:
        emit_json(doc)
        return
    for v in doc["versions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v["wall_ms"] / 1000))
        click.echo(f"#{v['index']}  {v['version']}  {when} UTC  by {v['author']}{'  (current)' if v['current'] else ''}")


# -- rollback ----------------------------------------------------------------
def resolve_version(doc: dict, wanted: str) -> str:
    """VERSION as shown by history: the full text, '#N' / 'N' (index), or a unique prefix."""
    versions = doc["versions"]
    w = wanted.lstrip("#")
    if w.isdigit() and 1 <= int(w) <= len(versions) and "." not in wanted:
        return versions[int(w) - 1]["version"]
    matches = [v["version"] for v in versions if v["version"] == wanted or v["version"].startswith(wanted)]
    if len(matches) != 1:
        raise click.UsageError(
            f"{wanted!r} matches {len(matches)} versions of {doc['key']}; use the full text or #N from `grapevine history`"
        )
    return matches[0]


def rollback_item(client: AgentClient, name: str, to: str, key_path: Path):
    """A new version of bundle NAME carrying the content of version ``to``, signed with ``key_path``."""
    from grapevine.gossip.item import SignedItem
    from grapevine.policy.bundle import Bundle, pack
    from grapevine.policy.keys import SigningKey

    hist = fetch_history(client, name)
    version = resolve_version(hist, to)
    from urllib.parse import quote

    got = client.get(f"/v1/item?key={quote(hist['key'], safe='')}&version={quote(version, safe='')}")
    old = SignedItem.decode(base64.b64decode(got["item"]))
    bundle = Bundle.decode(old.payload)
    newest = max(v["wall_ms"] for v in hist["versions"])
    now = max(time.time_ns() // 1_000_000, newest + 1)  # must win over every stored version
    return pack(bundle, SigningKey.load(key_path), now), version


@click.command("rollback")
@click.argument("name")
@click.option("--to", "to", required=True, help="Version to go back to (from `grapevine history`).")
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Author key.")
@agent_option
@json_option
def rollback(name: str, to: str, key_path: Path, agent_socket: str | None, as_json: bool) -> None:
    """Re-inject an old version's content as a new version."""
    client = agent_client(agent_socket)
    item, old = rollback_item(client, name, to, key_path)
    result = inject_items(client, [item])[0]
    if as_json:
        emit_json({"rolled_back_to": old, **result})
        return
    click.echo(f"{result['key']} now carries the content of {old}, as version {result['version']}")


# -- converge via the agent (used by `grapevine converge` without --local) ----
def converge_via_agent(agent_socket: str | None = None, *, bundles: list[str] | None = None,
                       dry_run: bool = False, target: str | None = None) -> dict:
    """Converge the local agent's node now; returns the report JSON.

    With ``target``, the local node converges only if it matches the selector
    (otherwise the report says ``skipped_reason``); fleet-wide immediate
    converges go through ``grapevine run --converge``.
    """
    client = agent_client(agent_socket, timeout=CONVERGE_TIMEOUT_S)
    return client.post("/v1/converge", {"bundles": bundles, "dry_run": dry_run, "target": target or None})


# -- push-style additions: inject --now --wait, status --fleet ------------------
# (maintained with node/runs.py; they reuse the run machinery of cli/run.py)


def converge_injected(sock: str, items: list, key_path: Path, *, wait: bool, as_json: bool) -> dict:
    """Send a converge run order for the injected bundles to the nodes they target.

    Each bundle is named as ``name@wall.counter``, so a node converges only
    once it holds that version or a newer one (gossip may still be carrying
    it there). Without ``wait`` the order is handed over and the command
    returns once the targets are known; the nodes still converge and report.
    """
    from grapevine.policy.bundle import Bundle
    from grapevine.policy.keys import SigningKey
    from grapevine.policy.runorder import RunAction

    from .run import DEFAULT_TIMEOUT_S, build_order, follow_run, stream_timeout

    bundles = [i for i in items if i.key.startswith("bundle/")]
    if not bundles:
        raise click.UsageError("--now: nothing to converge (no bundle among the injected items)")
    targets = {Bundle.decode(i.payload).target or "" for i in bundles}
    selector = targets.pop() if len(targets) == 1 else ""  # several targets: ask everyone, each checks its bundles
    specs = [f"{i.key[len('bundle/'):]}@{i.version.stamp}" for i in bundles]
    signed = build_order(sock=sock, key=SigningKey.load(key_path), selector=selector,
                         action=RunAction.converge(specs), timeout_s=DEFAULT_TIMEOUT_S, batched=False)
    if wait:
        return follow_run(sock, signed, batch=None, max_failures=None, as_json=as_json, title="converge")
    body = {"order": signed.encode().hex(), "batch": None, "max_failures": None}
    started: dict = {"run_id": signed.order.run_id, "targets": [], "ok": True, "waited": False}
    for ev in AgentClient(sock).stream("POST", "/v1/run", body, timeout=stream_timeout(signed)):
        if ev.get("event") == "targets":
            started["targets"] = ev["targets"]
        if ev.get("event") in ("batch", "done"):
            break
    if not as_json:
        click.echo(f"converge order {signed.order.run_id} sent to {len(started['targets'])} node(s)")
    return started


def fleet_status(client: AgentClient, selector: str = "") -> dict:
    """Every matching node's bundles, last converge and staleness, and what is not converged."""
    from grapevine.node.fleetview import summarize

    return summarize(client.post("/v1/fleet/query", {"kind": "status", "selector": selector}))


def show_fleet_status(client: AgentClient, selector: str, as_json: bool) -> None:
    doc = fleet_status(client, selector)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{doc['nodes']} node(s) answered in {doc['discovery_ms']} ms: {doc['converged']} converged, "
               f"{len(doc['not_converged'])} not converged")
    for name, b in doc["bundles"].items():
        click.echo(f"  {name}  {b['version']}  applied on {b['applied']}/{b['targeted']} targeted node(s)")
    for d in doc["not_converged"]:
        click.echo(f"{d['node']}:")
        for p in d["problems"]:
            click.echo(f"  - {p}")


# -- history --runs: the run audit trail, here or fleet-wide -------------------
def run_history(client: AgentClient, fleet: bool) -> dict:
    """``{"runs": [...]}``, newest first; with ``fleet`` every node's recent rows, each with its ``node``."""
    if not fleet:
        doc = client.get("/v1/runs/history")
        return {"runs": [dict(r, node=doc.get("node")) for r in doc["runs"]]}
    answer = client.post("/v1/fleet/query", {"kind": "runs", "selector": ""})
    rows = [dict(r, node=node) for node, info in answer["answers"].items() for r in (info.get("runs") or [])]
    rows.sort(key=lambda r: r.get("started_ms") or 0, reverse=True)
    return {"runs": rows, "nodes": len(answer["answers"]), "discovery_ms": answer.get("discovery_ms")}


def show_run_history(client: AgentClient, fleet: bool, as_json: bool) -> None:
    doc = run_history(client, fleet)
    if as_json:
        emit_json(doc)
        return
    for r in doc["runs"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((r.get("started_ms") or 0) / 1000))
        outcome = f"refused {r['refused']}" if r.get("refused") else f"exit {r.get('exit_code')} in {r.get('duration_ms')} ms"
        click.echo(f"{when} UTC  {r['node']}  {r['order'][:12]}  {outcome}  by {r['operator']} from {r['origin']}"
                   f"  [{r['selector'] or '*'}]  {r['command']}")
