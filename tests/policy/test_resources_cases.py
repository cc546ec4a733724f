"""Data-driven resource checks: one JSON file per case in resource_cases/.

Each case gives the state on disk before (``setup``), the facts, the attached
files and one resource; the expected outcome of a dry run is its status and
either the planned changes and diff or the reason it is converged (or the
error). ``{root}`` in an expected string stands for the temporary root. A
dry run must leave the tree exactly as the setup made it.

Setup steps: ``{"write": PATH, "content": TEXT, "mode": "0644"}``,
``{"mkdir": PATH, "mode": "0755"}``, ``{"symlink": PATH, "to": TARGET}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge

CASES_DIR = Path(__file__).with_name("resource_cases")
CASES = sorted(CASES_DIR.glob("*.json"))
DEFAULT_FACTS = {"name": "node-1", "hostname": "node-1", "os": "debian", "cpu_count": 2}


def _setup(root: Path, steps: list[dict]) -> None:
    for step in steps:
        if "write" in step:
            p = root / step["write"].lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(step["content"])
            os.chmod(p, int(step.get("mode", "0644"), 8))
        elif "mkdir" in step:
            p = root / step["mkdir"].lstrip("/")
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, int(step.get("mode", "0755"), 8))
        elif "symlink" in step:
            p = root / step["symlink"].lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(step["to"], p)
        else:
            raise AssertionError(f"unknown setup step {step}")


def _tree(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = os.readlink(p) if os.path.islink(p) else (Path(p).read_bytes() if os.path.isfile(p) else None)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns, body)
    return out


def test_there_are_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_resource_case(tmp_path, case_file):
    case = json.loads(case_file.read_text())
    _setup(tmp_path, case.get("setup", []))
    before = _tree(tmp_path)
    bundle = Bundle.from_document(
        {"bundle": "cases/one", "resources": [case["resource"]], "files": case.get("files", {})}, str(case_file)
    )
    report = converge([bundle], root=tmp_path, facts={**DEFAULT_FACTS, **case.get("facts", {})}, dry_run=True)
    (result,) = report.resources
    expect = {k: (v.replace("{root}", str(tmp_path)) if isinstance(v, str) else v) for k, v in case["expect"].items()}
    assert result.status == expect["status"], result
    if "changes" in expect:
        assert list(result.changes) == expect["changes"]
    if "diff" in expect:
        assert result.diff == expect["diff"]
    if "reason" in expect:
        assert result.reason == expect["reason"]
    if "error" in expect:
        assert expect["error"] in result.error
    assert _tree(tmp_path) == before, "a dry run changed the tree"
