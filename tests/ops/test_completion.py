"""Shell completion: the scripts parse in their shells, and the command answers completion requests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).with_name("grapevine"))


def _grapevine(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GRAPEVINE_", "_GRAPEVINE", "COMP_"))}
    full.update(env or {})
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60, env=full)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_parses_in_its_shell(shell, tmp_path):
    res = _grapevine("completion", shell)
    assert res.returncode == 0, res.stderr
    assert "_GRAPEVINE_COMPLETE" in res.stdout
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is missing: .ci/run installs it")
    script = tmp_path / f"grapevine.{shell}"
    script.write_text(res.stdout)
    check = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    broken = tmp_path / f"broken.{shell}"
    broken.write_text(res.stdout + "\nif then fi (\n")
    assert subprocess.run([shell, "-n", str(broken)], capture_output=True, timeout=30).returncode != 0


def test_click_completion_variable_one_liner_matches_the_command():
    direct = _grapevine(env={"_GRAPEVINE_COMPLETE": "bash_source"})
    assert direct.returncode == 0 and direct.stdout.strip() == _grapevine("completion", "bash").stdout.strip()


def _candidates(words: str) -> list[str]:
    """What bash completion would offer after ``words`` (click's bash protocol: one 'type,value' per line)."""
    res = _grapevine(env={"_GRAPEVINE_COMPLETE": "bash_complete", "COMP_WORDS": words,
                          "COMP_CWORD": str(len(words.split()) - 1)})
    assert res.returncode == 0, res.stderr
    return [line.split(",", 1)[1] for line in res.stdout.splitlines() if "," in line]


def test_bash_completion_offers_sub_commands_and_options():
    assert _candidates("grapevine boot") == ["bootstrap"]
    assert "completion" in _candidates("grapevine comp")
    assert "--ui" in _candidates("grapevine agent --u")


def test_unknown_shell_is_a_usage_error():
    assert _grapevine("completion", "fish").returncode == 2
