"""Release artefacts: the sdist and the wheel build from the repository and work when installed alone.

The wheel is built from the sdist (as `python -m build` does by default), so
a file missing from the sdist is missing from the wheel too. It is installed
into a new virtual environment in a temporary directory, its dependencies
come from the package registry, and every command runs from a directory
outside the repository with no PYTHONPATH, so nothing of the working tree
can stand in for the installed package.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["grapevine-agent.service", "agent.example.toml", "static/index.html", "static/ui.js", "static/ui.css"]
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}


def _copy_tree(dst: Path) -> Path:
    """The repository's files (no virtualenv, no build output) in ``dst``, so the build writes nothing here."""
    def ignore(d: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}

    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


def _run(argv: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, f"{' '.join(map(str, argv))} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pkg")
    src = _copy_tree(base / "src")
    out = base / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], cwd=base)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"base": base, "wheel": wheels[0], "sdist": sdists[0]}


def test_sdist_and_wheel_carry_the_unit_file_example_config_and_page(built):
    with tarfile.open(built["sdist"]) as tf:
        names = tf.getnames()
    for f in SHIPPED:
        assert any(n.endswith(f"/node/{f}") for n in names), f"{f} missing from the sdist"
    with zipfile.ZipFile(built["wheel"]) as zf:
        wnames = zf.namelist()
    for f in SHIPPED:
        assert f"grapevine/node/{f}" in wnames, f"{f} missing from the wheel"
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in wnames)


def test_wheel_installs_into_a_fresh_venv_and_the_command_works(built):
    base = built["base"]
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("GRAPEVINE_")}
    _run([str(venv / "bin" / "pip"), "install", "-q", str(built["wheel"])], cwd=base, timeout=900, env=env)
    work = base / "work"
    work.mkdir()
    exe = str(venv / "bin" / "grapevine")

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version in _run([exe, "--version"], cwd=work, env=env).stdout

    out = _run([exe, "keys", "gen", "--out", str(work / "alice.key")], cwd=work, env=env)
    assert out.stdout.strip(), "keys gen prints the key id"
    assert stat.S_IMODE((work / "alice.key").stat().st_mode) == 0o600
    assert (work / "alice.key.pub").is_file()

    where = _run([str(venv / "bin" / "python"), "-c",
                  "import grapevine.node, grapevine.cli.main; print(grapevine.node.__path__[0]); "
                  "print(grapevine.cli.main.__file__)"], cwd=work, env=env).stdout.split()
    pkg = Path(where[0])
    assert venv in pkg.parents and venv in Path(where[1]).parents, where  # the wheel, not the working tree
    for f in SHIPPED:
        assert (pkg / f).is_file(), f"{f} not installed"
    assert "Type=notify" in (pkg / "grapevine-agent.service").read_text()

    script = _run([exe, "completion", "bash"], cwd=work, env=env).stdout
    assert "_GRAPEVINE_COMPLETE" in script
    _run(["bash", "-n", "-c", script], cwd=work)
