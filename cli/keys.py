"""``grapevine keys``: create Ed25519 author and node keys."""

from __future__ import annotations

import click

from grapevine.gossip.errors import GrapevineError
from grapevine.policy.keys import SigningKey

from .output import emit_json, fail, json_option


@click.group()
def keys() -> None:
    """Manage Ed25519 signing keys."""


@keys.command("gen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Private key file to write (0600); the public key goes to OUT.pub.")
@json_option
def gen(out: str, as_json: bool) -> None:
    """Create a key pair and print its key id."""
    key = SigningKey.generate()
    try:
        pub = key.save(out)
    except GrapevineError as exc:
        raise fail(str(exc), 2) from None
    if as_json:
        emit_json({"key_id": key.key_id, "private": out, "public": str(pub)})
    else:
        click.echo(key.key_id)
