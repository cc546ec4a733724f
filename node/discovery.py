"""Discovery, as a sans-I/O state machine: who answered a query, and when to stop waiting.

A discovery query is one ephemeral broadcast; every node whose facts match
its selector answers straight to the origin. There is no list of who should
answer, so discovery counts as done once answers stop arriving: a quiet
window after the last one, stretched when the answers (or the first of them)
were slow, bounded in time. It does not count as done before
``EXPECTED_WAIT_MS`` while a node it waits for is silent: one that answered
the same selector at this origin last time (``AnswerMemory``), or with no
selector a peer in the origin's views.

Two sides, both pure (time is an argument, nothing here sleeps or sends):

- the origin's ``DiscoveryBook`` holds the open queries. ``on_answer(sender,
  body, now)`` takes the answer with the *authenticated* sender of the frame
  it came in: an answer that claims another node than the one that sent it is
  refused (``SenderMismatch``), counted by the caller, and never stored, so
  it is never relayed to a run or to a fleet-status reply;
- every node's ``answer_query`` decides whether, and to whom, to answer a
  query broadcast: only to the node that broadcast it, only when that node is
  a known member, at most once per query, within an outbound token bucket.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from grapevine.gossip.errors import Reason
from grapevine.policy import selectors
from grapevine.policy.keys import PublicKey

from .ratelimit import TokenBucket

log = logging.getLogger("grapevine.node")

QUIET_MS = 300  # discovery ends this long after the last answer: answers from a tree come in one burst
QUIET_STRETCH = 0.5  # ...or half the time the answers took so far, when a busy fleet answers slowly
QUIET_FIRST = 3.0  # ...or three times the wait for the first remote answer: a loaded fleet relays slowly too
FIRST_ANSWER_MS = 2000  # with no remote answer this long after the broadcast, nobody else matches
DISCOVERY_MAX_MS = 8000  # discovery never takes longer, however answers trickle in
EXPECTED_WAIT_MS = 3000  # discovery waits this long (from the broadcast) for nodes that matched last time
MAX_REMEMBERED_SELECTORS = 64  # selectors whose last answerers an origin remembers
MAX_REMEMBERED_NODES = 100_000  # answerers remembered per selector: a large fleet
MAX_CLOSED_QUERIES = 256  # ended runs whose stray discovery answers are still named in the log
MAX_ANSWERED_QUERIES = 4096  # query ids a node remembers having answered (one destination per query)

QUERY_FIELDS = ("q", "o", "s", "k")  # query id, origin, selector, kind ("run", "status", "runs")


@dataclass(slots=True)
class Discovery:
    """Answers to one query, as they arrive at the origin (times: monotonic seconds)."""

    qid: str
    started: float
    answers: dict[str, tuple[PublicKey, dict]] = field(default_factory=dict)  # in order of arrival
    first: float | None = None  # time of the first remote answer
    last: float | None = None  # time of the latest remote answer
    expected: frozenset[str] = frozenset()  # nodes that answered this selector here last time
    awaited: frozenset[str] = frozenset()  # nodes discovery waits for: the expected ones, and peers when all match

    def add(self, node: str, key: PublicKey, info: dict, *, remote: bool, now: float) -> bool:
        """Record an answer; False when another answer for the node carried another key."""
        if node in self.answers:
            if self.answers[node][0] != key:  # someone else answered in this node's name
                log.warning("discovery %s: a second answer for %s carries another node key (%s, kept %s)",
                            self.qid, node, key.key_id, self.answers[node][0].key_id)
                return False
            return True
        self.answers[node] = (key, info)
        if remote:
            self.last = now
            if self.first is None:
                self.first = now
        return True

    def quiet_end(self) -> float:
        """The time at which discovery counts as done, given the answers so far."""
        if self.last is None:
            end = self.started + FIRST_ANSWER_MS / 1000
        else:
            first = self.first if self.first is not None else self.last
            end = self.last + max(QUIET_MS / 1000, (self.last - self.started) * QUIET_STRETCH,
                                  (first - self.started) * QUIET_FIRST)
        if self.awaited and not self.awaited.issubset(self.answers):
            end = max(end, self.started + EXPECTED_WAIT_MS / 1000)  # someone who should match is still silent
        return min(end, self.started + DISCOVERY_MAX_MS / 1000)

    def quiet(self, now: float) -> bool:
        return now >= self.quiet_end()

    def elapsed_ms(self, now: float) -> int:
        return int((now - self.started) * 1000)

    def last_answer_ms(self) -> int | None:
        """When the latest remote answer came, in ms after the broadcast (None: no remote answer)."""
        return int((self.last - self.started) * 1000) if self.last is not None else None

    def silent(self) -> list[str]:
        """Nodes that answered this selector last time and have not now."""
        return sorted(self.expected.difference(self.answers))


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


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    """What became of one discovery answer at the origin."""

    accepted: bool
    refused: Reason | None = None  # a reason the caller counts (KeyMismatch, SenderMismatch)
    gone: bool = False  # the query is no longer open
    late: str | None = None  # "during_run" (started anyway) or "after_run" (not started)
    run_id: str | None = None  # with late="after_run": the run that had ended
    node: Any = None
    after_ms: int = 0

    def reply(self) -> dict:
        if self.gone:
            return {"ok": False, "gone": True}
        if self.refused == "SenderMismatch":
            return {"ok": False, "refused": self.refused}
        return {"ok": self.accepted}


class DiscoveryBook:
    """The open discoveries at one origin, the recently closed ones, and who answered each selector."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.open: dict[str, Discovery] = {}
        self.closed: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()  # qid -> (run, when)
        self.memory = AnswerMemory()

    def start(self, qid: str, selector: str, *, peers: frozenset[str], now: float) -> Discovery:
        expected = self.memory.expected(selector)
        awaited = expected if selector else expected.union(peers)  # everyone matches: live peers answer too
        disc = self.open[qid] = Discovery(qid=qid, started=now, expected=expected, awaited=awaited - {self.me})
        return disc

    def finish(self, disc: Discovery, selector: str, *, run_id: str | None, now: float) -> None:
        self.open.pop(disc.qid, None)
        self.memory.remember(selector, disc)
        if run_id is not None:
            self.closed[disc.qid] = (run_id, now)
            while len(self.closed) > MAX_CLOSED_QUERIES:
                self.closed.popitem(last=False)

    def drop(self, qid: str) -> None:
        self.open.pop(qid, None)

    def on_answer(self, sender: str, body: Any, now: float) -> AnswerOutcome:
        """One answer, from the node that sent its frame (``sender``, authenticated by the transport).

        The answer's own ``n`` must name that sender: a node answers for
        itself only. The node recorded is the sender, never the claim.
        """
        if not isinstance(body, dict):
            return AnswerOutcome(False)
        qid = body.get("q")
        disc = self.open.get(qid) if isinstance(qid, str) else None
        if disc is None:
            closed = self.closed.get(qid) if isinstance(qid, str) else None
            if closed is not None:
                return AnswerOutcome(False, gone=True, late="after_run", run_id=closed[0], node=body.get("n"),
                                     after_ms=int((now - closed[1]) * 1000))
            return AnswerOutcome(False, gone=True)
        node, raw, info = body.get("n"), body.get("pk"), body.get("i")
        if not isinstance(node, str) or not isinstance(raw, bytes) or not isinstance(info, dict):
            return AnswerOutcome(False)
        if node != sender:
            return AnswerOutcome(False, refused="SenderMismatch", node=node)
        try:
            key = PublicKey.from_bytes(raw)
        except Exception:
            return AnswerOutcome(False)
        remote = sender != self.me
        late = remote and node not in disc.answers and disc.last is not None and now > disc.quiet_end()
        if not disc.add(node, key, info, remote=remote, now=now):
            return AnswerOutcome(False, refused="KeyMismatch", node=node)
        return AnswerOutcome(True, late="during_run" if late else None, node=node)


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """Answer the query: send ``body`` to ``to`` (the origin; this node itself when it is the origin)."""

    to: str
    body: dict
    local: bool


@dataclass(frozen=True, slots=True)
class QueryDeclined:
    """Do not answer; ``reason`` is counted when it is a refusal (not a mere non-match)."""

    reason: Reason | None
    detail: str = ""


def parse_query(body: Any) -> dict | None:
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in QUERY_FIELDS):
        return None
    return body


class QueryResponder:
    """Every node's side of discovery: whether and to whom to answer a query broadcast.

    ``origin`` is the node the broadcast names as its origin. An answer goes
    to that node only (a query naming someone else as the place to answer is
    refused), only if it is a known member of the mesh (``is_member``), at
    most once per query id, and only while the outbound bucket has a token:
    one forged broadcast cannot turn the fleet into a flood aimed at an
    address of the sender's choosing.
    """

    def __init__(self, me: str, *, is_member: Callable[[str], bool], bucket: TokenBucket) -> None:
        self.me = me
        self.is_member = is_member
        self.bucket = bucket
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()

    def decide(self, origin: str, body: Any, *, facts: dict, now: float) -> QueryAnswer | QueryDeclined:
        query = parse_query(body)
        if query is None:
            return QueryDeclined("Malformed", f"malformed query from {origin}")
        try:
            if not selectors.matches(query["s"] or None, facts):
                return QueryDeclined(None)
        except selectors.SelectorSyntaxError as exc:
            return QueryDeclined("Malformed", f"query with a bad selector: {exc.message}")
        if query["o"] != origin:
            return QueryDeclined("WrongOrigin", f"query broadcast by {origin} asks for answers at {query['o']:.80}")
        if origin == self.me:
            return QueryAnswer(to=origin, body={}, local=True)
        if query["q"] in self._answered:
            return QueryDeclined("Replayed", f"query {query['q']:.40} was already answered")
        if not self.is_member(origin):
            return QueryDeclined("UnknownOrigin", f"query origin {origin:.80} is not a known member")
        if not self.bucket.take(now):
            return QueryDeclined("RateLimited", f"answer to {origin:.80} dropped: outbound answers over their rate")
        self._answered[query["q"]] = None
        while len(self._answered) > MAX_ANSWERED_QUERIES:
            self._answered.popitem(last=False)
        return QueryAnswer(to=origin, body={}, local=False)
