"""``grapevine netkey``: make fleet network keys and rotate them on a running agent.

Rotation with no downtime, on every node: ``install NEW`` (accepted from now
on), then ``use KEY_ID`` (sent with from now on), then ``remove OLD``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import click

from grapevine.cli.output import emit_json, json_option


def _client(agent_socket: str | None):
    from grapevine.cli.client import agent_client

    return agent_client(agent_socket)


agent_option = click.option("--agent", "agent_socket", help="Agent socket (default: $GRAPEVINE_AGENT, then the data dir).")


def _print_keys(doc: dict, as_json: bool) -> None:
    if as_json:
        emit_json(doc)
        return
    for k in doc.get("keys", []):
        click.echo(f"{k['key_id']}  {'in use' if k['primary'] else 'accepted'}")


@click.group("netkey")
def netkey() -> None:
    """Fleet network keys (NaCl secret box sealing all peer traffic)."""


@netkey.command("gen")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Key file to write (0600).")
@json_option
def gen(out: Path, as_json: bool) -> None:
    """Generate a new fleet network key."""
    from grapevine.node.netkey import generate_key, key_id, write_key_file

    key = generate_key()
    write_key_file(out, key)
    if as_json:
        emit_json({"key_id": key_id(key), "path": str(out)})
    else:
        click.echo(key_id(key))


@netkey.command("install")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--use", is_flag=True, help="Also seal outgoing frames with it at once.")
@agent_option
@json_option
def install(path: Path, use: bool, agent_socket: str | None, as_json: bool) -> None:
    """Install a key on the running agent (it is accepted from now on)."""
    from grapevine.node.netkey import read_key_file

    key = read_key_file(path)
    doc = _client(agent_socket).post("/v1/netkeys/install", {"key": base64.b64encode(key).decode(), "use": use})
    _print_keys(doc, as_json)


@netkey.command("use")
@click.argument("key_id")
@agent_option
@json_option
def use(key_id: str, agent_socket: str | None, as_json: bool) -> None:
    """Seal outgoing frames with an installed key."""
    _print_keys(_client(agent_socket).post("/v1/netkeys/use", {"key_id": key_id}), as_json)


@netkey.command("remove")
@click.argument("key_id")
@agent_option
@json_option
def remove(key_id: str, agent_socket: str | None, as_json: bool) -> None:
    """Stop accepting a key (not the one in use)."""
    _print_keys(_client(agent_socket).post("/v1/netkeys/remove", {"key_id": key_id}), as_json)


@netkey.command("list")
@agent_option
@json_option
def list_(agent_socket: str | None, as_json: bool) -> None:
    """Keys installed on the running agent."""
    _print_keys(_client(agent_socket).get("/v1/netkeys"), as_json)
