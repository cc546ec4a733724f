"""Invariant observers catch deliberately injected violations and say how to replay them."""

from __future__ import annotations

import pytest

from grapevine.gossip.item import SignedItem, Version
from grapevine.simulation.baseline import BaselineModel, PushAccepted
from grapevine.simulation.engine import Simulator
from grapevine.simulation.observers import SafetyViolation
from grapevine.simulation.runner import run_protocol

PROTOCOLS = ["baseline", "plumtree"]


def _item(key: str, wall: int, payload: bytes = b"x", author: str = "a") -> SignedItem:
    return SignedItem(key=key, version=Version(wall, 0, author), payload=payload)


def _roll_back_a_store(run) -> None:
    """Before the measured phase: crash n5, put an old store on its disk, restart it."""
    sim = run.sim
    host = sim.by_id["n5"]
    sim.crash(host)
    preloaded = [i for i in run.model.store_items(host.store) if i.key.startswith("bundle/preload/")]
    host.store = run.model.new_store(preloaded)  # the warm-up item is gone
    sim.restart(host, ["n1"])


def _double_sign(run) -> None:
    """Two different items under one key and one version, published at two nodes."""
    sim = run.sim
    version = Version(sim.now, 0, "author-x")
    for node, payload in (("n3", b"one"), ("n4", b"two")):
        sim.publish(sim.by_id[node], SignedItem(key="bundle/forged", version=version, payload=payload))


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    "hook, node, words",
    [(_roll_back_a_store, "n5", "store rolled back after restart"), (_double_sign, "n4", "digests disagree")],
)
def test_injected_violation_stops_the_run_with_a_reproduce_command(params, protocol, hook, node, words):
    p = params(nodes=200, protocol=protocol)
    result = run_protocol(p, protocol, prepare=lambda run: run.hooks.__setitem__("measure", hook))
    assert result.failure == "safety"
    violation = result.doc["safety_violation"]
    assert violation["node"] == node
    assert words in violation["message"]
    assert result.report.startswith("safety failure: at " + node)
    assert f"reproduce with: grapevine simulate --nodes 200 --seed 7 --scenario inject --protocol {protocol}" in result.report
    assert result.doc["converged_fraction"] == 0.0  # the measured phase never ran
    assert not result.ok


@pytest.mark.parametrize(
    "accepts, words",
    [
        ([(5, None), (4, 5)], "version went backwards"),
        ([(5, None), (5, 5)], "version went backwards"),
        ([(5, None), (7, None)], "store lost a version"),
        ([(5, None), (7, 3)], "store lost a version"),
        ([(5, 9)], "version went backwards"),
    ],
)
def test_observer_refuses_versions_going_backwards(accepts, words):
    sim = Simulator(BaselineModel(), seed=1)
    host = sim.add_host()
    sim.start(host)
    with pytest.raises(SafetyViolation, match=words):
        for wall, previous in accepts:
            prev = None if previous is None else Version(previous, 0, "a")
            sim.observer.on_accept(sim, host, PushAccepted(_item("k", wall), prev, "n1", 1), sim.now)


def test_observer_accepts_a_clean_history_and_tracks_holders():
    sim = Simulator(BaselineModel(), seed=1)
    hosts = [sim.add_host() for _ in range(3)]
    for h in hosts:
        sim.start(h)
    tracker = sim.observer.track("k", Version(6, 0, "a"), 0)
    for h in hosts:
        sim.observer.on_accept(sim, h, PushAccepted(_item("k", 5), None, None, 0), 10)
    assert tracker.live_holders == 0 and sim.observer.stores_equal()
    sim.observer.on_accept(sim, hosts[0], PushAccepted(_item("k", 6), Version(5, 0, "a"), None, 0), 20)
    assert tracker.live_holders == 1 and not sim.observer.stores_equal()
    sim.crash(hosts[1])
    sim.crash(hosts[2])
    assert sim.observer.stores_equal()  # only live stores count
