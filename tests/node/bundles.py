"""Policy for the daemon tests: a policy file, or a signed bundle item, managing a few files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from grapevine.cli.localfleet import FleetKeys
from grapevine.policy.bundle import Bundle, pack


def write_bundle(path: Path, name: str, target: str | None, files: dict[str, str]) -> Path:
    """A policy file with one bundle managing ``files`` (absolute path -> content)."""
    path.write_text(yaml.safe_dump(_bundle_doc(name, target, files)))
    return path


def pack_bundle(keys: FleetKeys, name: str, target: str | None, files: dict[str, str], now_ms: int | None = None):
    """The same bundle packed and signed with the fleet's author key (``now_ms``: its version's wall clock)."""
    return pack(Bundle.from_document(_bundle_doc(name, target, files), "test"), keys.author_key,
                now_ms or time.time_ns() // 1_000_000)


def _bundle_doc(name: str, target: str | None, files: dict[str, str]) -> dict:
    doc: dict[str, Any] = {"bundle": name, "resources": [{"file": p, "content": c} for p, c in files.items()]}
    if target:
        doc["target"] = target
    return doc
