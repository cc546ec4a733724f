"""The simulated network and the event engine: faults, cuts, crashes, wake-ups, seeds."""

from __future__ import annotations

import pytest

from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import SignedItem, Version
from grapevine.simulation.baseline import PING, BaselineConfig, BaselineModel, Probe
from grapevine.simulation.engine import Simulator, derive_seed
from grapevine.simulation.network import NetConfig

QUIET = BaselineConfig(probe_ms=0, push_pull_ms=0)  # nodes that only answer


def _fleet(n: int, *, net: NetConfig | None = None, config: BaselineConfig = QUIET, seed: int = 3):
    sim = Simulator(BaselineModel(config), seed=seed, net=net)
    hosts = [sim.add_host() for _ in range(n)]
    for h in hosts:
        sim.start(h)
    arrivals: list[tuple[int, str, str, object]] = []
    sim.observer.delivery_watchers.append(lambda t, src, dst, msg: arrivals.append((t, src, dst.node_id, msg)))
    return sim, hosts, arrivals


def test_derived_seeds_are_stable_and_independent_per_label():
    assert derive_seed(42, "network") == derive_seed(42, "network")
    assert len({derive_seed(42, label) for label in ("network", "churn", "workload", "node/n1/1")}) == 4
    assert derive_seed(42, "network") != derive_seed(43, "network")


@pytest.mark.parametrize("loss", [0.05, 0.3])
def test_loss_drops_about_the_configured_share(loss):
    sim, (a, b), arrivals = _fleet(2, net=NetConfig(loss=loss))
    for _ in range(20_000):
        sim.network.send(a, b.node_id, PING, sim.now)
    sim.run(1_000)
    delivered = sum(1 for x in arrivals if x[2] == "n1")
    assert abs(delivered / 20_000 - (1 - loss)) < 0.015
    traffic = sim.network.traffic  # pings, and the acks of those that arrived
    assert traffic.messages == 20_000 + delivered
    assert traffic.lost == traffic.messages - len(arrivals)


def test_links_are_fifo_unless_a_message_is_picked_for_reordering():
    for reorder, in_order in ((0.0, True), (0.3, False)):
        sim, (a, b), arrivals = _fleet(2, net=NetConfig(reorder=reorder))
        sent = [Probe(ack=True) for _ in range(500)]  # distinct objects nobody answers
        for i, msg in enumerate(sent):
            sim.run(i // 10)  # ten sends per millisecond
            sim.network.send(a, b.node_id, msg, sim.now)
        sim.run(2_000)
        order = {id(m): i for i, m in enumerate(sent)}
        got = [order[id(m)] for _, _, dst, m in arrivals if dst == "n1"]
        assert sorted(got) == list(range(500))  # nothing lost or doubled
        assert (got == sorted(got)) is in_order


def test_duplication_delivers_some_messages_twice():
    sim, (a, b), arrivals = _fleet(2, net=NetConfig(duplicate=0.2))
    for _ in range(5_000):
        sim.network.send(a, b.node_id, PING, sim.now)
    sim.run(1_000)
    pings = sum(1 for x in arrivals if x[2] == "n1")
    assert 5_800 < pings < 6_200


def test_latency_is_a_few_milliseconds_with_a_tail():
    sim, hosts, arrivals = _fleet(2_000, net=NetConfig(latency_median_ms=3.0))
    for other in hosts[1:]:  # one message per link: FIFO order plays no part
        sim.network.send(hosts[0], other.node_id, PING, 0)
    sim.run(1_000)
    times = sorted(t for t, _, dst, _ in arrivals if dst != "n0")
    assert 2 <= times[len(times) // 2] <= 4
    assert times[0] >= 1 and times[-1] > 2 * times[len(times) // 2]


def test_send_across_a_cut_fails_at_the_sender_after_the_timeout():
    sim, hosts, arrivals = _fleet(4, net=NetConfig(cut_timeout_ms=1_500))
    failures: list[tuple[int, str, str]] = []
    sim.observer.failure_watchers.append(lambda t, host, peer: failures.append((t, host.node_id, peer)))
    sim.network.partition({0: 0, 1: 0, 2: 1, 3: 1})
    sim.network.send(hosts[0], "n2", PING, 0)
    sim.network.send(hosts[0], "n1", PING, 0)
    sim.run(5_000)
    assert failures == [(1_500, "n0", "n2")]
    assert [dst for _, _, dst, m in arrivals if m is PING] == ["n1"]
    sim.network.heal()
    sim.network.send(hosts[0], "n2", PING, sim.now)
    sim.run(sim.now + 100)
    assert [dst for _, _, dst, m in arrivals if m is PING] == ["n1", "n2"]


def test_message_to_a_crashed_process_is_refused_and_a_restart_keeps_the_store():
    sim, hosts, arrivals = _fleet(3)
    item = SignedItem(key="bundle/x", version=Version(1, 0, "a"), payload=b"p")
    sim.publish(hosts[2], item)
    sim.crash(hosts[2])
    sim.network.send(hosts[0], "n2", PING, sim.now)
    sim.run(100)
    assert not any(dst == "n2" for _, _, dst, _ in arrivals)
    assert sim.network.traffic.failed == 1
    sim.restart(hosts[2])
    assert hosts[2].incarnation == 2 and hosts[2].core.store.get("bundle/x") == item


def test_idle_nodes_are_woken_only_when_their_timers_are_due():
    # Probes every second and nothing else: each node wakes once a second,
    # sends one ping and answers about one; 10 s of 50 nodes is ~1,500 events,
    # not the 500,000 a 1 ms tick would cost.
    sim, hosts, arrivals = _fleet(50, config=BaselineConfig(probe_ms=1_000, push_pull_ms=0))
    sim.run(10_000)
    pings = sum(1 for _, _, _, m in arrivals if isinstance(m, Probe) and not m.ack)
    assert 450 <= pings <= 500
    assert sim.events <= 3 * 500 + 50


@pytest.mark.parametrize("field, value", [("loss", 1.0), ("duplicate", -0.1), ("latency_median_ms", 0), ("refused_ms", 0)])
def test_bad_network_settings_are_refused(field, value):
    with pytest.raises(ConfigError):
        NetConfig(**{field: value})
