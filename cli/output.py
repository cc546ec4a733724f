"""Shared output helpers: one JSON document on stdout with ``--json``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def emit_json(doc: Any) -> None:
    """Print exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(doc, default=_default, sort_keys=True) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> "click.exceptions.Exit":
    """Report a failure of the work itself (exit 1 by default) on stderr."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
