"""``grapevine pins``: node keys pinned to node names on a running agent.

A node's key is pinned to its name the first time a frame from it arrives;
a frame in that name signed with another key is refused (``NodeKeyChanged``
in the agent's log and metrics). When a node was legitimately re-keyed (its
data directory rebuilt), remove the old pin on each node that refuses it:
``grapevine pins forget NAME``; the next frame pins the new key.
"""

from __future__ import annotations

import click

from grapevine.cli.client import agent_client, agent_option
from grapevine.cli.output import emit_json, json_option


def _print(doc: dict, as_json: bool) -> None:
    if as_json:
        emit_json(doc)
        return
    for p in doc.get("pins", []):
        click.echo(f"{p['name']:<32} {p['key_id']}  first seen as {p['first_seen_as']}")


@click.group("pins")
def pins() -> None:
    """Node keys pinned to node names (trust on first sight)."""


@pins.command("list")
@agent_option
@json_option
def list_(agent_socket: str | None, as_json: bool) -> None:
    """Names and the node keys pinned to them."""
    _print(agent_client(agent_socket).get("/v1/pins"), as_json)


@pins.command("forget")
@click.argument("name")
@agent_option
@json_option
def forget(name: str, agent_socket: str | None, as_json: bool) -> None:
    """Remove the pin of node NAME (after a legitimate re-key); its next frame pins the new key."""
    doc = agent_client(agent_socket).post("/v1/pins/forget", {"name": name})
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"pin of {name} removed; the next key seen for it will be pinned")
