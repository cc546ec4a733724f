"""The comparison baseline: plain push gossip, as memberlist and Serf do it.

Model (from memberlist's documented behaviour; our own code):

- full membership: every node knows every other node. The fleet shares one
  member list (a node knows it as soon as it joins; a crashed node is
  dropped once failure detection would have declared it dead: a probe
  interval plus ``suspicion_mult * log10(n)`` probe intervals);
- every ``round_ms`` (200 ms, memberlist's LAN GossipInterval) a node that
  has something new sends it to ``fanout`` random members (3, GossipNodes).
  Each item goes out at most ``retransmit_mult * ceil(log10(n + 1))`` times
  (RetransmitMult 4), counted per packet as memberlist counts transmits.
  Gossip is datagrams: a send that does not arrive is not noticed;
- every probe interval (1 s) a node pings a random member (ping + ack);
- every push/pull interval (30 s, scaled up with the fleet size like
  memberlist's pushPullScale) and when it joins, a node swaps its full
  state with a random member: the member list and every item it holds.
  That is how Serf repairs events a node missed, and why its idle cost
  grows with fleet size and with the number of items.

Round timers run at a random phase per node, as real tickers do. With
``aligned_rounds`` all nodes tick at the same instants, which is the
synchronous-rounds model of the analysis (Pittel: random push reaches all n
nodes in about log2 n + ln n rounds); the fidelity test uses that.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import SignedItem, Version

from .engine import ACCEPTED, SEND, Model
from .network import NetConfig

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Host, Simulator

PACKET_OVERHEAD_BYTES = 24  # IP/UDP-ish header plus message type and length
PROBE_BYTES = 40  # a memberlist ping or ack: sequence number, node name, address
MEMBER_STATE_BYTES = 48  # one member in a push/pull: name, address, port, incarnation, state
PUSH_PULL_SCALE_THRESHOLD = 32  # memberlist scales push/pull only above 32 nodes


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineConfig:
    fanout: int = 3  # memberlist GossipNodes: members a round sends to
    round_ms: int = 200  # memberlist GossipInterval (LAN)
    retransmit_mult: int | None = 4  # memberlist RetransmitMult; None: forward forever
    aligned_rounds: bool = False  # all round timers tick together (synchronous model)
    probe_ms: int = 1000  # memberlist ProbeInterval; 0 disables probes
    push_pull_ms: int = 30_000  # memberlist PushPullInterval (LAN); 0 disables it
    suspicion_mult: int = 4  # memberlist SuspicionMult: how long before a silent node is dead

    def __post_init__(self) -> None:
        if self.fanout < 1 or self.round_ms < 1:
            raise ConfigError("baseline fanout and round_ms must be >= 1")
        if self.retransmit_mult is not None and self.retransmit_mult < 1:
            raise ConfigError("baseline retransmit_mult must be >= 1 or None (unlimited)")
        if self.probe_ms < 0 or self.push_pull_ms < 0:
            raise ConfigError("baseline probe_ms and push_pull_ms must be >= 0")


def retransmit_limit(mult: int | None, n: int) -> int | None:
    """How many times one item is sent: mult * ceil(log10(n + 1))."""
    if mult is None:
        return None
    return mult * math.ceil(math.log10(n + 1))


def push_pull_interval(base_ms: int, n: int) -> int:
    """Push/pull interval grown with the fleet (one more step per doubling past 32)."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return base_ms
    return base_ms * (math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1)


# -- messages and effects ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Rumor:
    """A gossip packet: the items the sender is still retransmitting."""

    items: tuple[SignedItem, ...]
    hops: tuple[int, ...]  # the sender's hop count for each item
    carries_payload: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class PushPull:
    """A full state exchange: member list plus every item held."""

    items: tuple[SignedItem, ...]
    members: int
    reply: bool
    carries_payload: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    ack: bool
    carries_payload: ClassVar[bool] = False


PING = Probe(ack=False)
ACK = Probe(ack=True)


@dataclass(frozen=True, slots=True)
class PushSend:
    peer: str
    msg: Any


@dataclass(frozen=True, slots=True)
class PushAccepted:
    item: SignedItem
    previous: Version | None
    source: str | None
    hops: int


class Membership:
    """The fleet-wide member list every baseline node shares (full membership)."""

    __slots__ = ("ids", "_pos")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, node_id: str) -> None:
        if node_id not in self._pos:
            self._pos[node_id] = len(self.ids)
            self.ids.append(node_id)

    def remove(self, node_id: str) -> None:
        i = self._pos.pop(node_id, None)
        if i is None:
            return
        last = self.ids.pop()
        if last != node_id:
            self.ids[i] = last
            self._pos[last] = i

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._pos


class PushNode:
    """One baseline node: a store, a retransmit queue and three timers."""

    __slots__ = ("node_id", "cfg", "rng", "members", "store", "queue", "phase",
                 "next_round", "next_probe", "next_push_pull")

    def __init__(self, node_id: str, cfg: BaselineConfig, rng: random.Random,
                 members: Membership, store: dict[str, SignedItem]) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.rng = rng
        self.members = members
        self.store = store
        self.queue: dict[str, list] = {}  # key -> [item, transmits, hops]
        self.phase = 0 if cfg.aligned_rounds else rng.randrange(cfg.round_ms)
        self.next_round = 1 << 62
        self.next_probe = 1 << 62
        self.next_push_pull = 1 << 62

    def start(self, now: int) -> None:
        cfg = self.cfg
        if cfg.probe_ms:
            self.next_probe = now + 1 + self.rng.randrange(cfg.probe_ms)
        if cfg.push_pull_ms:
            self.next_push_pull = now + 1 + self.rng.randrange(push_pull_interval(cfg.push_pull_ms, len(self.members)))

    def _random_others(self, k: int) -> list[str]:
        ids = self.members.ids
        n = len(ids)
        k = min(k, n - 1 if self.node_id in self.members else n)
        picked: list[str] = []
        rand = self.rng.randrange
        while len(picked) < k:
            peer = ids[rand(n)]
            if peer != self.node_id and peer not in picked:
                picked.append(peer)
        return picked

    def _admit(self, item: SignedItem, source: str | None, hops: int, out: list) -> bool:
        held = self.store.get(item.key)
        if held is not None and item.version <= held.version:
            return False
        self.store[item.key] = item
        out.append(PushAccepted(item, None if held is None else held.version, source, hops))
        return True

    def _enqueue(self, item: SignedItem, hops: int, now: int) -> None:
        if not self.queue:
            r = self.cfg.round_ms
            self.next_round = self.phase + ((now - self.phase) // r + 1) * r
        self.queue[item.key] = [item, 0, hops]

    # -- the same driving interface as the gossip core -----------------------

    def join(self, contacts: Sequence[str], now: int) -> list:
        """Swap full state with the first contact (memberlist's join push/pull)."""
        return [PushSend(contacts[0], self._state(reply=False))] if contacts else []

    def _state(self, *, reply: bool) -> PushPull:
        return PushPull(items=tuple(self.store.values()), members=len(self.members), reply=reply)

    def publish(self, item: SignedItem, now: int) -> list:
        out: list = []
        if self._admit(item, None, 0, out):
            self._enqueue(item, 0, now)
        return out

    def on_message(self, peer: str, msg: Any, now: int) -> list:
        out: list = []
        cls = type(msg)
        if cls is Rumor:
            for item, hops in zip(msg.items, msg.hops):
                if self._admit(item, peer, hops + 1, out):
                    self._enqueue(item, hops + 1, now)
        elif cls is Probe:
            if not msg.ack:
                out.append(PushSend(peer, ACK))
        elif cls is PushPull:
            for item in msg.items:
                self._admit(item, peer, 0, out)
            if not msg.reply:
                out.append(PushSend(peer, self._state(reply=True)))
        return out

    def on_send_failed(self, peer: str, now: int) -> list:
        return []  # datagrams: nobody learns of a lost packet

    def on_tick(self, now: int) -> list:
        out: list = []
        cfg = self.cfg
        if self.queue and now >= self.next_round:
            self._gossip(out)
            r = cfg.round_ms
            self.next_round = self.phase + ((now - self.phase) // r + 1) * r if self.queue else 1 << 62
        if now >= self.next_probe:
            peers = self._random_others(1)
            if peers:
                out.append(PushSend(peers[0], PING))
            self.next_probe += cfg.probe_ms
        if now >= self.next_push_pull:
            peers = self._random_others(1)
            if peers:
                out.append(PushSend(peers[0], self._state(reply=False)))
            self.next_push_pull = now + push_pull_interval(cfg.push_pull_ms, len(self.members))
        return out

    def _gossip(self, out: list) -> None:
        limit = retransmit_limit(self.cfg.retransmit_mult, len(self.members))
        queue = self.queue
        for peer in self._random_others(self.cfg.fanout):
            if not queue:
                break
            entries = list(queue.values())
            out.append(PushSend(peer, Rumor(items=tuple(e[0] for e in entries), hops=tuple(e[2] for e in entries))))
            for e in entries:
                e[1] += 1
                if limit is not None and e[1] >= limit:
                    del queue[e[0].key]

    def next_deadline(self) -> int:
        d = self.next_round if self.queue else 1 << 62
        return min(d, self.next_probe, self.next_push_pull)


class BaselineModel(Model):
    """Plugs push gossip into the engine."""

    name = "baseline"
    effect_kinds = {PushSend: SEND, PushAccepted: ACCEPTED}

    def __init__(self, config: BaselineConfig | None = None) -> None:
        self.config = config or BaselineConfig()
        self.members = Membership()
        self._item_sizes: dict[tuple[str, Version], int] = {}

    def make_node(self, node_id: str, *, rng: random.Random, store: Any) -> PushNode:
        return PushNode(node_id, self.config, rng, self.members, store)

    def new_store(self, items: Iterable[SignedItem] = ()) -> dict[str, SignedItem]:
        return {item.key: item for item in items}

    def _item_size(self, item: SignedItem) -> int:
        k = (item.key, item.version)
        size = self._item_sizes.get(k)
        if size is None:
            size = self._item_sizes[k] = len(item.encode()) + 4
        return size

    def size_of(self, msg: Any) -> int:
        cls = type(msg)
        if cls is Probe:
            return PROBE_BYTES
        size = PACKET_OVERHEAD_BYTES + sum(self._item_size(i) for i in msg.items)
        if cls is PushPull:
            size += msg.members * MEMBER_STATE_BYTES
        return size

    def carries_payload(self, msg: Any) -> bool:
        return type(msg).carries_payload

    def store_get(self, store: dict[str, SignedItem], key: str) -> SignedItem | None:
        return store.get(key)

    def store_items(self, store: dict[str, SignedItem]) -> list[SignedItem]:
        return list(store.values())

    def store_digest(self, store: dict[str, SignedItem]) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for key in sorted(store):
            h.update(key.encode())
            h.update(store[key].digest())
        return h.digest()

    def on_host_up(self, sim: Simulator, host: Host) -> None:
        self.members.add(host.node_id)
        host.core.start(sim.now)

    def on_host_down(self, sim: Simulator, host: Host) -> None:
        probe = self.config.probe_ms or 1000
        n = max(len(self.members), 10)
        detect = probe + int(self.config.suspicion_mult * math.log10(n) * probe)
        inc = host.incarnation
        sim.call_at(sim.now + detect, self._declare_dead, host, inc)

    def _declare_dead(self, host: Host, incarnation: int) -> None:
        if not host.alive and host.incarnation == incarnation:
            self.members.remove(host.node_id)


def push_rounds(n: int, seed: int, *, fanout: int = 1, net: NetConfig | None = None) -> int:
    """Rounds until all ``n`` nodes hold one item under synchronous random push.

    Drives the baseline through the engine and the network model with
    aligned rounds, unlimited forwarding and no probes or push/pull, which is
    the setting of Pittel's analysis (about log2 n + ln n rounds at fanout 1).
    """
    from .engine import Simulator

    cfg = BaselineConfig(fanout=fanout, retransmit_mult=None, aligned_rounds=True, probe_ms=0, push_pull_ms=0)
    model = BaselineModel(cfg)
    sim = Simulator(model, seed=seed, net=net)
    for _ in range(n):
        sim.start(sim.add_host())
    item = SignedItem(key="bundle/fidelity", version=Version(0, 0, "sim"), payload=b"x" * 64)
    tracker = sim.observer.track(item.key, item.version, 0)
    sim.publish(sim.hosts[0], item)
    # Bounded: even fanout 1 needs well under 20 * log2(n) rounds.
    budget = cfg.round_ms * 20 * max(1, math.ceil(math.log2(n + 1)))
    sim.run(budget, stop=lambda: tracker.live_holders >= n)
    if tracker.live_holders < n:
        raise RuntimeError(f"push gossip did not reach all {n} nodes within {budget} ms")
    last = max(tracker.times.values())
    return last // cfg.round_ms  # pushed at round r, it arrives a few ms after r * round_ms
