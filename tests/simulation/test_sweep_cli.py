"""``grapevine simulate sweep``: the --json contract, failed seeds named and replayable, bad usage, progress."""

from __future__ import annotations

import json
import os
import pty
import shlex
import subprocess
import sys
import threading

import pytest

from grapevine.cli.main import main
from grapevine.simulation.metrics import strip_machine_fields
from tests.simulation.conftest import CLI_TIMEOUT_S, REPO

# Fields of `simulate --json` that every result of a sweep carries too (DESIGN.md, stable interfaces).
REQUIRED = {"nodes", "seed", "scenario", "converged_fraction", "convergence_ms", "max_hops", "messages_per_node",
            "bytes_per_node", "payload_copies_per_node", "idle_bytes_per_node_per_s", "peak_rss_mb", "wall_s"}

QUICK = ["--nodes", "60", "-o", "settle-ms=2000", "-o", "idle-ms=2000"]
LOCAL = ["--engine", "local", "--workers", "2"]


def test_json_has_engine_results_with_seed_and_worker_and_a_summary(cli):
    proc = cli("sweep", "--scenario", "inject", "--seeds", "1-3", *QUICK, *LOCAL, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["engine"] == "local" and doc["scenario"] == "inject" and doc["seeds"] == "1-3" and doc["ok"]
    assert [r["seed"] for r in doc["results"]] == [1, 2, 3]
    for r in doc["results"]:
        assert REQUIRED <= r.keys() and r["worker"] and r["failure"] is None
    summary = doc["summary"]
    assert summary["seeds_run"] == 3 and summary["failed_seeds"] == [] and sum(summary["by_worker"].values()) == 3
    assert set(summary["figures"]["convergence_ms.p99"]) == {"min", "median", "p99", "max", "seeds"}
    assert proc.stderr.startswith("sweep: scenario=inject nodes=60 seeds=1-3 (3) engine=local")
    # A seed of the sweep is exactly `simulate --seed S` with the same options.
    one = cli("--nodes", "60", "--seed", "2", "--settle-ms", "2000", "--idle-ms", "2000", "--json")
    assert one.returncode == 0, one.stderr
    replay = json.loads(one.stdout)
    swept = {k: v for k, v in doc["results"][1].items() if k in replay}
    assert strip_machine_fields(swept) == strip_machine_fields(replay)


@pytest.mark.slow  # two CLI runs of four and one partition seeds
def test_failed_seed_is_named_with_the_command_that_replays_it_and_exits_1(cli):
    # With a 1.5 s budget seeds 2 and 4 do not heal the partition in time; 1 and 3 do.
    args = ["--scenario", "partition", "--seeds", "1-4", *QUICK, "-o", "partition-ms=5000", "-o", "budget-ms=1500"]
    proc = cli("sweep", *args, *LOCAL, "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["summary"]["failed_seeds"] == [2, 4] and not doc["ok"]
    assert "error: 2 of 4 seeds failed: 2, 4" in proc.stderr
    lines = proc.stderr.splitlines()
    named = next(i for i, line in enumerate(lines) if line.startswith("seed 2 failed (liveness) on "))
    reproduce = lines[named + 1].strip().removeprefix("reproduce with: ")
    assert reproduce.startswith("grapevine simulate --nodes 60 --seed 2 --scenario partition")
    replay = cli(*shlex.split(reproduce)[2:], "--json")  # the printed command, run as printed
    assert replay.returncode == 1
    assert json.loads(replay.stdout)["liveness_failure"] == doc["results"][1]["liveness_failure"]


def test_table_shows_each_figure_over_the_seeds(cli):
    proc = cli("sweep", "--scenario", "chaos", "--seeds", "1-2", "--nodes", "30", "-o", "chaos-ms=5000", *LOCAL)
    assert proc.returncode == 0, proc.stderr
    for words in ("median", "p99", "heal_ms", "faults.crashes", "safety violations: 0", "liveness failures: 0",
                  "engine local"):
        assert words in proc.stdout


@pytest.mark.slow
def test_plot_draws_the_distribution_of_every_figure(cli, tmp_path):
    out = tmp_path / "sweep.png"
    proc = cli("sweep", "--scenario", "inject", "--seeds", "1-3", *QUICK, *LOCAL, "--plot", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seeds", "5-1"], "--seeds range '5-1' must run"),
        (["--seeds", "a-b"], "--seeds must be seeds and ranges"),
        (["--seeds", ""], "--seeds is empty"),
        (["--seeds", "1-3", "--scenario", "flood"], "--scenario must be one of"),
        (["--seeds", "1", "-o", "fanout=3"], "does not take that option"),
        (["--seeds", "1", "-o", "budget-ms"], "expected KEY=VALUE"),
        (["--seeds", "1", "--workers", "0"], "--workers must be at least 1"),
        (["--seeds", "1", "--engine", "local", "--scheduler", "tcp://127.0.0.1:8786"], "--scheduler needs the dask"),
        (["--seeds", "1", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "has its own workers"),
    ],
)
def test_bad_usage_exits_2_before_any_seed_runs(capsys, args, words):
    if "--scenario" not in args:
        args = [*args, "--scenario", "inject"]
    assert main(["simulate", "sweep", *args]) == 2
    out, err = capsys.readouterr()
    assert words in err
    assert out == "" and "sweep: scenario=" not in err


def test_options_of_simulate_before_sweep_are_refused(capsys):
    assert main(["simulate", "--nodes", "50", "sweep", "--scenario", "inject", "--seeds", "1"]) == 2
    assert "--nodes: give the options of `sweep` after it" in capsys.readouterr().err


def test_without_distributed_the_command_says_it_uses_a_process_pool():
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from grapevine.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, "simulate", "sweep", "--scenario", "inject", "--seeds", "1-2", *QUICK,
         "--workers", "2", "--json"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["engine"] == "local"
    assert "distributed is not installed, so the seeds run on a local process pool" in proc.stderr
    assert "pip install 'grapevine-mesh[cluster]'" in proc.stderr


def run_on_terminal(*args: str) -> tuple[int, str, str]:
    """Run ``grapevine simulate`` with stderr on a pseudo-terminal: (exit status, stdout, terminal text)."""
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the terminal closed with the process
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = dict(os.environ, TERM="xterm", COLUMNS="100")
    proc = subprocess.Popen([sys.executable, "-m", "grapevine.cli.main", "simulate", *args],
                            stdout=subprocess.PIPE, stderr=slave, text=True, env=env, cwd=REPO)
    os.close(slave)
    try:
        out, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_and_none_with_json():
    args = ["sweep", "--scenario", "chaos", "--seeds", "1-6", "--nodes", "30", "-o", "chaos-ms=5000", *LOCAL]
    code, out, terminal = run_on_terminal(*args)
    assert code == 0
    assert "sweep chaos" in terminal and "6/6" in terminal  # the bar, at its end
    code, out, terminal = run_on_terminal(*args, "--json")
    assert code == 0 and json.loads(out)["ok"]
    assert "sweep chaos" not in terminal and "/6" not in terminal
