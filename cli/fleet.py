"""Commands that talk to the local agent: inject, status, members, bundles, history, rollback.

The agent is found by ``--agent SOCKET``, else ``$GRAPEVINE_AGENT``, else
``agent.sock`` in the default data directory. ``agent_client(socket)`` does
HTTP over that Unix socket with the standard library only, so these commands
start fast and need no event loop.

Bundles are packed and signed here, with the operator's key; the agent never
sees an author's private key. ``rollback`` fetches the old content from the
agent's history and re-signs it as a new version, so it wins everywhere.

Each command is a thin click wrapper over a plain function (``inject_items``,
``fetch_status``, ...) so other commands can add flags around them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import click

from grapevine.cli.output import emit_json, json_option
from grapevine.gossip.errors import ConfigError, GrapevineError, Reason
from grapevine.gossip.item import Version

CONNECT_TIMEOUT_S = 10.0  # the local agent answers at once or is not there
CONVERGE_TIMEOUT_S = 3600.0  # a converge may install packages
ENV_AGENT = "GRAPEVINE_AGENT"


class AgentUnavailable(click.ClickException):
    exit_code = 1


class AgentRefused(GrapevineError):
    """The agent answered with an error (bad input: exit status 2)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}" if detail else error, reason=Reason.from_text(error))
        self.status = status
        self.error = error
        self.detail = detail


def find_socket(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get(ENV_AGENT):
        return os.environ[ENV_AGENT]
    from grapevine.node.config import default_data_dir

    return str(default_data_dir() / "agent.sock")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class AgentClient:
    """JSON (and NDJSON streams) over the agent's Unix socket."""

    def __init__(self, path: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def _send(self, method: str, path: str, body: bytes | None, content_type: str, timeout: float | None):
        conn = _UnixConnection(self.path, timeout or self.timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise AgentUnavailable(
                f"cannot reach the agent at {self.path}: {exc} (is `grapevine agent` running? use --agent or ${ENV_AGENT})"
            ) from None

    def request(self, method: str, path: str, doc: Any = None, *, data: bytes | None = None,
                timeout: float | None = None) -> Any:
        body, ctype = (data, "application/octet-stream") if data is not None else (
            (json.dumps(doc).encode(), "application/json") if doc is not None else (None, "application/json"))
        conn, resp = self._send(method, path, body, ctype, timeout)
        try:
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnavailable(f"the agent at {self.path} closed the connection: {exc}") from None
        finally:
            conn.close()
        try:
            out = json.loads(raw) if raw else {}
        except ValueError:
            raise AgentUnavailable(f"the agent answered {path} with something that is not JSON") from None
        if resp.status >= 400:
            if isinstance(out, dict):
                raise AgentRefused(resp.status, str(out.get("error", resp.status)), str(out.get("detail", "")))
            raise AgentRefused(resp.status, str(resp.status), "")
        return out

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, doc: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, doc, **kw)

    def stream(self, method: str, path: str, doc: Any = None, timeout: float | None = None) -> Iterator[dict]:
        """One JSON document per line until the agent ends the response."""
        body = json.dumps(doc).encode() if doc is not None else None
        conn, resp = self._send(method, path, body, "application/json", timeout)
        try:
            if resp.status >= 400:
                raw = resp.read()
                try:
                    err = json.loads(raw)
                except ValueError:
                    err = {}
                raise AgentRefused(resp.status, str(err.get("error", resp.status)), str(err.get("detail", "")))
            while True:
                line = resp.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def agent_client(socket_path: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> AgentClient:
    return AgentClient(find_socket(socket_path), timeout)


agent_option = click.option("--agent", "agent_socket", default=None,
                            help="Agent API socket (default: $GRAPEVINE_AGENT, then agent.sock in the data dir).")


# -- inject ------------------------------------------------------------------
def load_items(path: Path, key_path: Path | None, now_ms: int | None = None) -> list:
    """Signed items from a packed .gv file, or a policy file packed and signed with ``key_path``."""
    from grapevine.gossip.item import SignedItem

    if path.suffix == ".gv":
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise click.UsageError(f"{path}: {exc.strerror}") from None
        return [SignedItem.decode(data)]
    if key_path is None:
        raise click.UsageError(f"{path} is a policy file: give --key to sign it (or inject a packed .gv)")
    from grapevine.policy.bundle import bundles_from_file, pack
    from grapevine.policy.keys import SigningKey

    key = SigningKey.load(key_path)
    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    return [pack(b, key, now) for b in bundles_from_file(str(path))]


def inject_items(client: AgentClient, items: list) -> list[dict]:
    return [client.post("/v1/inject", data=item.encode()) for item in items]


@click.command("inject")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", type=click.Path(dir_okay=False, path_type=Path), help="Author key to sign a policy file.")
@click.option("--now", is_flag=True, help="Also converge the targets now (a converge run order signed with --key).")
@click.option("--wait", is_flag=True, help="With --now: wait for every target's converge result and show it.")
@agent_option
@json_option
def inject(path: Path, key_path: Path | None, now: bool, wait: bool, agent_socket: str | None, as_json: bool) -> int:
    """Sign (if needed) and inject bundles through the local agent."""
    if now and key_path is None:
        raise click.UsageError("--now needs --key: the converge order is signed with an operator key")
    if wait and not now:
        raise click.UsageError("--wait follows the converge that --now starts; give both")
    client = agent_client(agent_socket)
    items = load_items(path, key_path)
    from .bundle import check_before_inject

    check_before_inject(client, items)  # grants and keys first: a policy file goes in whole or not at all
    results = inject_items(client, items)
    if not as_json:
        for r in results:
            click.echo(f"injected {r['key']} version {r['version']} via {r['node']}")
    run = converge_injected(client.path, items, key_path, wait=wait, as_json=as_json) if now else None
    if as_json:
        emit_json({"injected": results, **({"run": run} if run is not None else {})})
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
FLEET_STALE_CONVERGE_S = 3600.0  # a node whose last converge is older than this is flagged stale


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

    from .run import DEFAULT_TIMEOUT_S, agent_stream, build_order, follow_run

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
    for ev in agent_stream(sock, "/v1/run", body):
        if ev.get("event") == "targets":
            started["targets"] = ev["targets"]
        if ev.get("event") in ("batch", "done"):
            break
    if not as_json:
        click.echo(f"converge order {signed.order.run_id} sent to {len(started['targets'])} node(s)")
    return started


def fleet_status(client: AgentClient, selector: str = "") -> dict:
    """Every matching node's bundles, last converge and staleness, and what is not converged."""
    answer = client.post("/v1/fleet/query", {"kind": "status", "selector": selector})
    nodes: dict = answer["answers"]
    newest: dict[str, str] = {}
    for info in nodes.values():
        for b in info.get("bundles", []):
            if b["name"] not in newest or _stamp_key(b["version"]) > _stamp_key(newest[b["name"]]):
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
        elif last and last.get("at_ms") and now - last["at_ms"] > FLEET_STALE_CONVERGE_S * 1000:
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


def _stamp_key(text: str) -> tuple:
    try:
        return Version.parse(text)
    except ConfigError:  # a node answering something else sorts first, never crashes the table
        return (0, 0, text or "")


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
