"""``grapevine simulate``: JSON shape, exit codes, reproduce lines, plots, determinism."""

from __future__ import annotations

import json

import pytest

from grapevine.simulation.metrics import strip_machine_fields

REQUIRED = {
    "nodes", "seed", "scenario", "protocol", "converged_fraction", "convergence_ms", "max_hops",
    "messages_per_node", "bytes_per_node", "payload_copies_per_node", "idle_bytes_per_node_per_s",
    "peak_rss_mb", "wall_s",
}
QUICK = ["--settle-ms", "2000", "--idle-ms", "4000"]


def test_json_has_every_stable_field_and_the_baseline_side_by_side(cli):
    proc = cli("--nodes", "150", "--seed", "4", "--scenario", "inject", "--protocol", "both", "--json", *QUICK)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert REQUIRED <= doc.keys()
    assert REQUIRED - {"nodes", "seed", "scenario"} <= doc["baseline"].keys()
    assert doc["protocol"] == "plumtree" and doc["baseline"]["protocol"] == "baseline"
    assert set(doc["convergence_ms"]) == {"p50", "p90", "p99", "max"}
    assert doc["converged_fraction"] == 1.0
    # The seed and the fault settings come first, on stderr.
    assert proc.stderr.startswith("simulate: seed=4 nodes=150 scenario=inject protocol=both")


def test_same_seed_gives_the_same_json_in_fresh_processes(cli):
    args = ("--nodes", "400", "--seed", "11", "--scenario", "churn", "--protocol", "both", "--json", *QUICK)
    first = cli(*args, hash_seed="1")
    second = cli(*args, hash_seed="2")  # string hashing differs: results must not
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert strip_machine_fields(a) == strip_machine_fields(b)
    other = json.loads(cli(*args[:3], "12", *args[4:]).stdout)
    assert strip_machine_fields(other) != strip_machine_fields(a)


def test_a_run_that_does_not_converge_exits_1_with_the_reproduce_command(cli):
    args = ("--nodes", "120", "--seed", "5", "--scenario", "partition", "--protocol", "baseline",
            "--budget-ms", "3000", "--partition-ms", "5000", *QUICK)
    proc = cli(*args, "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["liveness_failure"]
    assert ("reproduce with: grapevine simulate --nodes 120 --seed 5 --scenario partition --protocol baseline "
            "--settle-ms 2000 --idle-ms 4000 --partition-ms 5000 --budget-ms 3000") in proc.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--nodes", "1"], "--nodes must be between"),
        (["--loss", "1.5"], "--loss must be a probability"),
        (["--items", "-1"], "--items must be between"),
        (["--scenario", "flood"], "Invalid value for '--scenario'"),
        (["--protocol", "raft"], "Invalid value for '--protocol'"),
        (["--nodes", "many"], "Invalid value for '--nodes'"),
    ],
)
def test_bad_usage_exits_2_and_names_the_problem(cli, args, words):
    proc = cli(*args)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert proc.stdout == ""


def test_plot_draws_a_png_and_the_table_is_readable(cli, tmp_path):
    out = tmp_path / "curve.png"
    proc = cli("--nodes", "100", "--scenario", "partition", "--protocol", "both", "--plot", str(out),
               "--partition-ms", "6000", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "converged fraction" in proc.stdout and "baseline" in proc.stdout and "heal (ms)" in proc.stdout
