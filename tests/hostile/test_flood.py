"""A bounded flood of strangers at one agent's peer port: bounded memory, /health answers, gossip flows.

Two real agents on loopback; ``flood.py`` (a separate process, no fleet key)
opens ``CONNS`` connections to agent 0 for ``SECONDS``: gzip bombs, slow
8 MiB bodies, WebSocket upgrades without a link token, garbage, idle sockets. The
full-size figures (120 connections, 20 s, side by side with the code before
the fix) are in benchmarks/RESULTS-hostile.md.

``GRAPEVINE_TEST_AGENT_PYTHON`` runs the agents with another interpreter (for
example /work/main/.venv/bin/python, the code before the fix) to show what
these assertions catch there.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from benchmarks.bench_flood import applied_everywhere, doc, health_once, rss_mib
from grapevine.cli.localfleet import LocalFleet, wait_for
from tests.hostile.hostile_peer import scrape_metrics

CONNS = 48
SECONDS = 8.0
MAX_GROWTH_MIB = 40.0  # the figure the peer port must hold under a flood (measured: single-digit MiB)
HEALTH_BOUND_S = 2.0  # every probe; a loaded shared box stalls for a few hundred ms at worst
DELIVERY_TIMEOUT_S = 30.0
FLOOD = Path(__file__).resolve().parent / "flood.py"
AGENT_PYTHON = os.environ.get("GRAPEVINE_TEST_AGENT_PYTHON", sys.executable)


RSS_STEADY_MIB = 1.0  # two samples 0.25 s apart within this: the agent has settled after v1


def _steady_rss(pid: int) -> Callable[[], float | None]:
    """A condition: the agent's RSS, once two samples in a row differ by less than RSS_STEADY_MIB."""
    last: list[float] = []

    def steady() -> float | None:
        now = rss_mib(pid) or 0.0
        ok = bool(last) and abs(now - last[-1]) < RSS_STEADY_MIB
        last.append(now)
        return now if ok else None

    return steady


@pytest.fixture(scope="module")
def flooded(tmp_path_factory):
    """Run the flood once; every test below reads what it measured."""
    mesh = LocalFleet(tmp_path_factory.mktemp("flood"), env={"GRAPEVINE_PEER_METRICS": "true"},
                      python=AGENT_PYTHON)
    flood: subprocess.Popen | None = None
    try:
        for i in range(2):
            mesh.add(f"f{i}")
        mesh.start()
        mesh.wait_ready()
        mesh.wait_linked()
        target, other = mesh.agents
        mesh.inject(other, doc(1))
        wait_for(lambda: applied_everywhere(mesh.agents, 1), DELIVERY_TIMEOUT_S, "v1 everywhere")
        pid = target.proc.pid
        wait_for(_steady_rss(pid), 20, "the target's memory to settle after v1", interval=0.25)
        before = statistics.median(rss_mib(pid) or 0.0 for _ in range(3))
        metrics_before = scrape_metrics(target.port)
        rss, health = [], []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                rss.append(rss_mib(pid) or 0.0)
                health.append(health_once(target.port))
                stop.wait(0.25)

        flood = subprocess.Popen([sys.executable, str(FLOOD), "--port", str(target.port), "--conns", str(CONNS),
                                  "--seconds", str(SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # v2 goes in while the flood is hitting the target: its refusals are being counted
        wait_for(lambda: scrape_metrics(target.port) != metrics_before or flood.poll() is not None, SECONDS,
                 "the flood to reach the target")
        mesh.inject(other, doc(2))
        t1 = time.monotonic()
        try:
            wait_for(lambda: applied_everywhere([target], 2), DELIVERY_TIMEOUT_S, "v2 at the target")
            took = time.monotonic() - t1
        except RuntimeError:
            took = None
        during = time.monotonic() - t0 < SECONDS
        out, err = flood.communicate(timeout=SECONDS + 30)
        stop.set()
        watcher.join(10)
        yield {
            "before": before, "rss": rss, "health": health, "took": took, "during": during,
            "flood": json.loads(out) if out.strip() else {"error": err.decode()[-400:]},
            "metrics_before": metrics_before,
            "metrics_after": scrape_metrics(target.port) if target.alive() else {},
            "alive": target.alive(),
        }
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait(10)
        mesh.close()


def test_flood_of_strangers_grows_the_agent_by_a_bounded_amount(flooded):
    assert flooded["alive"]
    assert flooded["flood"].get("attempts", 0) >= CONNS, flooded["flood"]
    growth = max(flooded["rss"]) - flooded["before"]
    assert growth <= MAX_GROWTH_MIB, f"RSS grew {growth:.1f} MiB under the flood (from {flooded['before']:.1f})"


def test_health_answers_every_probe_during_the_flood(flooded):
    health = flooded["health"]
    assert len(health) >= SECONDS * 2, health
    slow = [h for h in health if h is None or h > HEALTH_BOUND_S]
    assert not slow, f"{len(slow)} of {len(health)} /health probes failed or took over {HEALTH_BOUND_S} s"


def test_honest_gossip_reaches_the_flooded_agent_during_the_flood(flooded):
    assert flooded["took"] is not None, "a genuine bundle did not reach the flooded agent"
    assert flooded["during"], "the bundle arrived only after the flood ended"


# idle sockets are closed at the deadline (Expired) or, while the flood fills the slots, evicted first
@pytest.mark.parametrize("reasons", [("CompressedBody",), ("NoLinkToken",), ("NotAFrame",), ("Expired", "Evicted")])
def test_each_hostile_form_is_refused_and_counted_by_reason(flooded, reasons):
    before, after = flooded["metrics_before"], flooded["metrics_after"]
    metric = "grapevine_peer_strangers_closed" if reasons == ("Expired", "Evicted") else "grapevine_bad_frames"
    n = sum(after.get((metric, r), 0) - before.get((metric, r), 0) for r in reasons)
    assert n > 0, f"no {'/'.join(reasons)} refusal counted; refusals seen: " + ", ".join(
        f"{k[1]}={v - before.get(k, 0):.0f}" for k, v in after.items())


def test_idle_strangers_are_closed_by_the_agent(flooded):
    """Idle WebSocket upgrades and garbage are not kept: the agent closes them, the flood reconnects."""
    outcomes = flooded["flood"]["outcomes"]
    for kind in ("ws", "garbage", "idle"):
        closed = outcomes[kind].get("closed by agent", 0) + outcomes[kind].get("reset", 0)
        held = outcomes[kind].get("held to the end", 0)
        assert closed > 2 * held, (kind, outcomes[kind])
