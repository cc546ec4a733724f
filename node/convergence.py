"""Convergence of one agent: which stored bundles apply here, and when to converge.

A converge runs when a bundle that concerns this node is accepted (at once
after a quiet window, then at most once per ``converge_debounce_ms``), on
demand through the API, and on a timer with splay to correct drift. Bundles
are decoded and checked against the current trust root once per version and
root serial; a bundle whose author the current root no longer trusts stops
being applied. The engine runs in a worker thread, after the frames this node
is forwarding have left, and every report is stored in SQLite.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from grapevine.gossip.errors import GrapevineError
from grapevine.gossip.item import SignedItem, Version


log = logging.getLogger("grapevine.node")

BUNDLE_PREFIX = "bundle/"
FORWARD_FIRST_S = 0.05  # a converge waits at most this long for queued frames to leave


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ConvergeSettings:
    root: Path  # provider paths go through this root
    debounce_ms: int = 200  # at most one converge per window; bundles arriving within it converge together
    interval_s: float = 1800.0  # the periodic converge corrects drift...
    splay_s: float = 300.0  # ...after a random extra delay up to this, so a fleet does not converge in lockstep
    on_start: bool = True  # converge what the store holds once after start


class ConvergeSchedule:
    """When to converge, as a sans-I/O machine (times: seconds on one monotonic clock, passed in).

    ``request`` (a bundle arrived, trust changed, start, timer) answers when
    the converge is to begin: at once after a quiet window, or at the end of
    the debounce window that began with the last converge; a request while
    one is pending joins it, so a burst of bundles costs two converges, not
    one per bundle. ``next_timer`` is the periodic converge: every interval
    plus a splay drawn from the injected random source.
    """

    def __init__(self, settings: ConvergeSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.pending: tuple[float, str] | None = None  # (when, trigger) of the converge to come
        self.last_start = float("-inf")

    def request(self, trigger: str, now: float) -> float | None:
        """A converge is wanted: when it begins, or None when it joins one already pending."""
        if self.pending is not None:
            return None
        at = now + max(0.0, self.settings.debounce_ms / 1000 - (now - self.last_start))
        self.pending = (at, trigger)
        return at

    def due(self, now: float) -> str | None:
        """The trigger of the pending converge if its time has come (it is then no longer pending)."""
        if self.pending is None or now < self.pending[0]:
            return None
        trigger = self.pending[1]
        self.pending = None
        return trigger

    def started(self, now: float) -> None:
        self.last_start = now

    def cancel(self) -> None:
        self.pending = None

    def next_timer(self, now: float) -> float:
        return now + self.settings.interval_s + self.rng.uniform(0, self.settings.splay_s)


class ReportStore(Protocol):
    """What convergence stores (node/state.py)."""

    def applied(self) -> dict[str, tuple[Version, int, bool]]: ...

    def add_report(self, *, at_ms: int, trigger: str, bundles: list[str], ok: bool, report: dict) -> int: ...

    def set_applied(self, versions: dict[str, Version], at_ms: int, ok: bool) -> None: ...


class ConvergeHost(Protocol):
    """The few calls convergence makes on the rest of the daemon."""

    def items(self) -> Iterable[SignedItem]: ...

    def drain(self, timeout_s: float) -> Awaitable[None]: ...

    def spawn(self, coro: Awaitable[Any], name: str) -> Any: ...


class Convergence:
    def __init__(self, *, node_id: str, settings: ConvergeSettings, admission: Any, facts: dict,
                 store: ReportStore, host: ConvergeHost, metrics: Any, rng: random.Random,
                 stopping: Callable[[], bool] = lambda: False, node_key: Any = None) -> None:
        self.node_id = node_id
        self.node_key = node_key  # opens the secrets sealed to this node (policy.secrets)
        self.settings = settings
        self.admission = admission
        self.facts = facts
        self.store = store
        self.host = host
        self.metrics = metrics
        self.stopping = stopping
        self.plan = ConvergeSchedule(settings, rng)
        self.last_report: dict | None = None
        self._lock = asyncio.Lock()
        self._handle: asyncio.TimerHandle | None = None
        self._cache: dict[tuple[str, Version], tuple[Version, int, Any]] = {}  # -> (version, root serial, bundle)
        self.conflicts: list[Any] = []  # later claims refused at the last look (policy.catalog.Conflict)
        # a staged rollout's say (node/rollout.py RolloutService.choose): of a targeted bundle, the version
        # to converge (the stored one, the previous one while its stage is closed) or None (none yet)
        self.gate: Callable[[SignedItem, Any], SignedItem | None] | None = None

    def usable_bundle(self, item: SignedItem, now: int) -> Any | None:
        """The bundle in a stored item if the current root still trusts it (cached per version and root)."""
        from grapevine.policy.bundle import Bundle

        serial = self.admission.root.serial
        cached = self._cache.get((item.key, item.version))  # a rollout holds two versions of a key in use
        if cached is not None and cached[1] == serial:
            return cached[2]
        bundle = None
        refusal = self.admission.still_valid(item, now)
        if refusal is not None:
            log.warning("stored %s is not applied: %s under trust root serial %d", item.key, refusal, serial)
        else:
            try:
                bundle = Bundle.decode(item.payload)
            except GrapevineError as exc:
                log.warning("stored %s cannot be used: %s", item.key, exc)
        same_key = [k for k in self._cache if k[0] == item.key and k[1] != item.version]
        for k in same_key[:-1]:  # two versions of a key at most: the live one and a rollout's previous one
            del self._cache[k]
        self._cache[(item.key, item.version)] = (item.version, serial, bundle)
        return bundle

    def targets_me(self, bundle: Any) -> bool:
        from grapevine.policy import selectors

        try:
            return selectors.matches(bundle.target or None, self.facts)
        except GrapevineError as exc:
            log.warning("bundle %s has an unusable target: %s", bundle.name, exc)
            return False

    def targeted_bundles(self) -> list[tuple[Any, Version]]:
        """Stored bundles that target this node and that the current trust root still trusts."""
        out = self._without_later_claims(self.trusted_here())
        return sorted(out, key=lambda bv: bv[0].name)

    def trusted_here(self, replace: Mapping[str, tuple[SignedItem, Any]] | None = None) -> list[tuple[Any, Version]]:
        """Those bundles before claims are settled; ``replace``: key -> (item, bundle) the caller
        admitted, standing in for the stored version (a preview, node/preview.py)."""
        now = now_ms()
        if self.admission.root.expired(now):
            log.warning("trust root serial %d has expired: no bundle is applied", self.admission.root.serial)
            return []
        out = []
        replace = replace or {}
        items = [i for i in self.host.items() if i.key not in replace] + [item for item, _ in replace.values()]
        for item in items:
            if not item.key.startswith(BUNDLE_PREFIX):
                continue
            bundle = replace[item.key][1] if item.key in replace else self.usable_bundle(item, now)
            if bundle is not None and self.gate is not None and item.key not in replace and self.targets_me(bundle):
                chosen = self.gate(item, bundle)
                if chosen is not item:  # held back by its rollout: the previous version, or nothing
                    item, bundle = (chosen, self.usable_bundle(chosen, now)) if chosen is not None else (item, None)
            if bundle is not None and self.targets_me(bundle):
                if not self.admission.within_ceiling(item, bundle, self.facts):
                    log.warning("%s is not applied: this node is outside its publisher's target ceiling", item.key)
                    continue
                out.append((bundle, item.version))
        return out

    def _without_later_claims(self, targeted: list[tuple[Any, Version]]) -> list[tuple[Any, Version]]:
        """Drop bundles that declare a resource an earlier bundle claims (policy.catalog.resolve_claims)."""
        from grapevine.policy.catalog import resolve_claims

        kept, conflicts = resolve_claims(targeted)
        for c in conflicts:
            if c not in self.conflicts:
                log.warning("%s: %s", c.reason, c.detail())
        self.conflicts = conflicts
        names = {b.name for b in kept}
        return [bv for bv in targeted if bv[0].name in names]

    def concerns_me(self, item: SignedItem, now: int) -> bool:
        """An accepted bundle version that targets this node, or replaces one applied here."""
        bundle = self.usable_bundle(item, now)
        if bundle is not None and self.targets_me(bundle):
            return True
        return item.key[len(BUNDLE_PREFIX):] in self.store.applied()

    def schedule(self, trigger: str) -> None:
        """Converge soon, at most once per debounce window (``ConvergeSchedule`` says when)."""
        if self.stopping():
            return
        loop = asyncio.get_running_loop()
        at = self.plan.request(trigger, loop.time())
        if at is None:
            return  # already scheduled: this arrival joins it
        self._handle = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        trigger = self.plan.due(asyncio.get_running_loop().time())
        if trigger is not None:
            self.host.spawn(self._quiet(trigger), "converge")

    async def _quiet(self, trigger: str) -> None:
        # the mesh first: frames this node is forwarding leave before the converge takes the CPU
        await self.host.drain(FORWARD_FIRST_S)
        try:
            await self.converge_now(trigger=trigger)
        except Exception:
            log.exception("converge (%s) failed", trigger)

    async def converge_now(self, bundle_names: list[str] | None = None, dry_run: bool = False, trigger: str = "api") -> dict:
        """Converge this node to the bundles that target it; returns the report JSON."""
        from grapevine.policy import engine

        async with self._lock:
            self.plan.started(asyncio.get_running_loop().time())
            targeted = self.targeted_bundles()
            if bundle_names:
                wanted = set(bundle_names)
                targeted = [bv for bv in targeted if bv[0].name in wanted]
            bundles = [b for b, _ in targeted]
            versions = {b.name: v for b, v in targeted}
            t0 = time.monotonic()
            at = now_ms()
            try:
                report = await asyncio.to_thread(
                    engine.converge, bundles, root=self.settings.root, facts=self.facts, dry_run=dry_run,
                    node_key=self.node_key, isolate_bundles=True,
                )
                doc = report.to_json()
            except GrapevineError as exc:
                doc = {"changed": 0, "unchanged": 0, "failed": 1, "skipped": 0, "resources": [], "error": str(exc)}
            took = time.monotonic() - t0
            ok = not doc.get("failed") and not doc.get("error")
            doc.update(
                node=self.node_id, at_ms=at, trigger=trigger, dry_run=dry_run,
                versions={n: str(v) for n, v in versions.items()},
            )
            doc.setdefault("bundles", sorted(versions))
            if self.conflicts:
                doc["refused"] = [c.to_json() for c in self.conflicts]
            doc.setdefault("duration_ms", int(took * 1000))
            if not dry_run:
                self.store.add_report(at_ms=at, trigger=trigger, bundles=sorted(versions), ok=ok, report=doc)
                self.store.set_applied(versions, at, ok)
                self.last_report = doc
                self.metrics.converge_seconds.labels(trigger).observe(took)
                if not ok:
                    self.metrics.converge_failures.inc()
            if doc.get("error"):
                log.warning("converge (%s) could not run: %s", trigger, doc["error"])
            log.info(
                "converge (%s%s): %d bundles, %s changed, %s failed in %d ms",
                trigger, ", dry run" if dry_run else "", len(bundles), doc.get("changed"), doc.get("failed"), int(took * 1000),
            )
            return doc

    def cancel(self) -> None:
        """Drop a scheduled converge (shutdown)."""
        self.plan.cancel()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def periodic(self) -> None:
        """Converge once after start (if anything targets this node), then every interval plus splay."""
        loop = asyncio.get_running_loop()
        if self.settings.on_start and self.targeted_bundles():
            self.schedule("start")
        while True:
            await asyncio.sleep(max(0.0, self.plan.next_timer(loop.time()) - loop.time()))  # the shell's timer
            self.schedule("timer")
