"""Discovery at a run's origin: who answered a query, and when to stop waiting.

A discovery query is one ephemeral broadcast; every node whose facts match
its selector answers straight to the origin. There is no list of who should
answer, so discovery counts as done once answers stop arriving: a quiet
window after the last one, stretched when the answers (or the first of them)
were slow, bounded in time. It does not count as done before
``EXPECTED_WAIT_MS`` while a node it waits for is silent: one that answered
the same selector at this origin last time (``AnswerMemory``), or with no
selector a peer in the origin's views.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

from grapevine.policy.keys import PublicKey

log = logging.getLogger("grapevine.node")

QUIET_MS = 300  # discovery ends this long after the last answer: answers from a tree come in one burst
QUIET_STRETCH = 0.5  # ...or half the time the answers took so far, when a busy fleet answers slowly
QUIET_FIRST = 3.0  # ...or three times the wait for the first remote answer: a loaded fleet relays slowly too
FIRST_ANSWER_MS = 2000  # with no remote answer this long after the broadcast, nobody else matches
DISCOVERY_MAX_MS = 8000  # discovery never takes longer, however answers trickle in
EXPECTED_WAIT_MS = 3000  # discovery waits this long (from the broadcast) for nodes that matched last time
MAX_REMEMBERED_SELECTORS = 64  # selectors whose last answerers an origin remembers
MAX_REMEMBERED_NODES = 100_000  # answerers remembered per selector: a large fleet


@dataclass(slots=True)
class Discovery:
    """Answers to one query, as they arrive at the origin."""

    qid: str
    started: float = field(default_factory=time.monotonic)
    answers: dict[str, tuple[PublicKey, dict]] = field(default_factory=dict)  # in order of arrival
    first: float | None = None  # monotonic time of the first remote answer
    last: float | None = None  # monotonic time of the latest remote answer
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    expected: frozenset[str] = frozenset()  # nodes that answered this selector here last time
    awaited: frozenset[str] = frozenset()  # nodes discovery waits for: the expected ones, and peers when all match

    def add(self, node: str, key: PublicKey, info: dict, *, remote: bool) -> bool:
        """Record an answer; False when another answer for the node carried another key."""
        if node in self.answers:
            if self.answers[node][0] != key:  # someone else answered in this node's name
                log.warning("discovery %s: a second answer for %s carries another node key (%s, kept %s)",
                            self.qid, node, key.key_id, self.answers[node][0].key_id)
                return False
            return True
        self.answers[node] = (key, info)
        if remote:
            self.last = time.monotonic()
            if self.first is None:
                self.first = self.last
        self.arrived.set()
        return True

    def quiet_end(self) -> float:
        """The monotonic time at which discovery counts as done, given the answers so far."""
        if self.last is None:
            end = self.started + FIRST_ANSWER_MS / 1000
        else:
            first = self.first if self.first is not None else self.last
            end = self.last + max(QUIET_MS / 1000, (self.last - self.started) * QUIET_STRETCH,
                                  (first - self.started) * QUIET_FIRST)
        if self.awaited and not self.awaited.issubset(self.answers):
            end = max(end, self.started + EXPECTED_WAIT_MS / 1000)  # someone who should match is still silent
        return min(end, self.started + DISCOVERY_MAX_MS / 1000)

    def last_answer_ms(self) -> int | None:
        """When the latest remote answer came, in ms after the broadcast (None: no remote answer)."""
        return int((self.last - self.started) * 1000) if self.last is not None else None

    def silent(self) -> list[str]:
        """Nodes that answered this selector last time and have not now."""
        return sorted(self.expected.difference(self.answers))

    async def settle(self) -> float:
        """Wait until answers stop arriving; returns how long discovery took (ms)."""
        while True:
            now = time.monotonic()
            end = self.quiet_end()
            if now >= end:
                return (now - self.started) * 1000
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), end - now)
            except asyncio.TimeoutError:
                pass


class AnswerMemory:
    """Per selector, the nodes that answered its latest discovery at this origin (bounded, LRU)."""

    def __init__(self) -> None:
        self._answered: collections.OrderedDict[str, frozenset[str]] = collections.OrderedDict()

    def expected(self, selector: str) -> frozenset[str]:
        return self._answered.get(selector, frozenset())

    def remember(self, selector: str, disc: Discovery) -> None:
        """Keep who answered, so the next discovery of this selector waits for them (a silent one is missed once)."""
        self._answered.pop(selector, None)
        if len(disc.answers) <= MAX_REMEMBERED_NODES:
            self._answered[selector] = frozenset(disc.answers)
        while len(self._answered) > MAX_REMEMBERED_SELECTORS:
            self._answered.popitem(last=False)
