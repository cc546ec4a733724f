"""Gates and a driver linked in memory, on a virtual clock (the rollout's ``Mesh``).

Records the driver publishes reach every gate after ``record_ms``; an Apply
takes ``apply_ms``, a health check ``health_ms``, a report reaches the driver
after ``report_ms``. Nodes in ``bad`` fail their health check. Nothing sleeps:
``run`` advances the virtual clock event by event.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

from grapevine.gossip.item import Version
from grapevine.policy.rollout import RolloutPlan
from grapevine.policy.rollout_machines import (
    Apply,
    Driver,
    DriverConfig,
    Gate,
    Publish,
    Report,
    Revert,
    RunHealth,
)

OLD = Version(1_000, 0, "k")
NEW = Version(2_000, 0, "k")


class MemFleet:
    def __init__(self, n: int, plan: RolloutPlan, *, bad: set[str] = frozenset(), record_ms: int = 20,
                 apply_ms: int = 50, health_ms: int = 10, report_ms: int = 5, silent: set[str] = frozenset(),
                 config: DriverConfig | None = None) -> None:
        self.names = [f"n{i:03d}@10.0.0.1:{7000 + i}" for i in range(n)]
        self.plan, self.bad, self.silent = plan, set(bad), set(silent)
        self.record_ms, self.apply_ms, self.health_ms, self.report_ms = record_ms, apply_ms, health_ms, report_ms
        self.now = 0
        self._q: list = []
        self._seq = itertools.count()
        self.gates = {name: Gate(name, "web/site", NEW, plan, OLD) for name in self.names}
        self.running = {name: OLD for name in self.names}
        self.ever: set[str] = set()
        self.records: list = []
        self.driver = Driver("web/site", NEW, plan, self.names, "driver@10.0.0.9:7000", 0, config=config)

    def at(self, delay: int, fn: Callable[[], list], who: str | None) -> None:
        heapq.heappush(self._q, (self.now + delay, next(self._seq), fn, who))

    def handle(self, who: str | None, effects: list) -> None:
        for e in effects:
            if isinstance(e, Publish):
                self.records.append(e.record)
                for name, gate in self.gates.items():
                    self.at(self.record_ms, lambda g=gate, r=e.record: g.on_record(r, self.now), name)
            elif isinstance(e, Apply):
                self.running[who] = e.version
                self.ever.add(who)
                self.at(self.apply_ms, lambda g=self.gates[who]: g.on_applied(True, "", self.now), who)
            elif isinstance(e, RunHealth):
                ok = who not in self.bad
                self.at(self.health_ms, lambda g=self.gates[who], ok=ok: g.on_health(ok, "" if ok else "probe failed",
                                                                                      self.now), who)
            elif isinstance(e, Revert):
                self.running[who] = e.to
                self.at(self.apply_ms, lambda g=self.gates[who]: g.on_reverted(True, "", self.now), who)
            elif isinstance(e, Report):
                if who in self.silent:
                    continue
                self.at(self.report_ms, lambda n=who, r=e: self.driver.on_report(n, r.state, self.now, r.detail), None)

    def start(self) -> None:
        self.handle(None, self.driver.start(self.now))

    def run(self, until_ms: int = 3_600_000) -> None:
        """Events in time order; the driver's and gates' deadlines are ticks at their time."""
        spins = 0
        while self.now < until_ms:
            deadlines = [d for d in [self.driver.next_deadline()] + [g.next_deadline() for g in self.gates.values()]
                         if d is not None]
            nxt_tick = min(deadlines) if deadlines else None
            nxt_event = self._q[0][0] if self._q else None
            if nxt_event is None and nxt_tick is None:
                return
            if min(t for t in (nxt_event, nxt_tick) if t is not None) > until_ms:
                self.now = until_ms
                return
            if nxt_event is not None and (nxt_tick is None or nxt_event <= nxt_tick):
                t, _, fn, who = heapq.heappop(self._q)
                self.now = max(self.now, t)
                self.handle(who, fn())
            else:
                spins = spins + 1 if nxt_tick <= self.now else 0
                assert spins < 1000, f"a deadline at {nxt_tick} ms keeps firing without progress"
                self.now = max(self.now, nxt_tick)
                self.handle(None, self.driver.on_tick(self.now))
                for name, g in self.gates.items():
                    self.handle(name, g.on_tick(self.now))
