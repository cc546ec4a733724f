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
import time
from typing import TYPE_CHECKING, Any

from grapevine.gossip.errors import GrapevineError
from grapevine.gossip.item import SignedItem, Version

from .state import version_text

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("grapevine.node")

BUNDLE_PREFIX = "bundle/"
FORWARD_FIRST_S = 0.05  # a converge waits at most this long for queued frames to leave


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Convergence:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.last_report: dict | None = None
        self._lock = asyncio.Lock()
        self._handle: asyncio.TimerHandle | None = None
        self._last_start = float("-inf")  # loop time the last converge began
        self._cache: dict[str, tuple[Version, int, Any]] = {}  # key -> (version, root serial, bundle or None)

    def usable_bundle(self, item: SignedItem, now: int) -> Any | None:
        """The bundle in a stored item if the current root still trusts it (cached per version and root)."""
        from grapevine.policy.bundle import Bundle

        serial = self.agent.admission.root.serial
        cached = self._cache.get(item.key)
        if cached is not None and cached[0] == item.version and cached[1] == serial:
            return cached[2]
        bundle = None
        refusal = self.agent.admission.still_valid(item, now)
        if refusal is not None:
            log.warning("stored %s is not applied: %s under trust root serial %d", item.key, refusal, serial)
        else:
            try:
                bundle = Bundle.decode(item.payload)
            except GrapevineError as exc:
                log.warning("stored %s cannot be used: %s", item.key, exc)
        self._cache[item.key] = (item.version, serial, bundle)
        return bundle

    def targets_me(self, bundle: Any) -> bool:
        from grapevine.policy import selectors

        try:
            return selectors.matches(bundle.target or None, self.agent.facts)
        except GrapevineError as exc:
            log.warning("bundle %s has an unusable target: %s", bundle.name, exc)
            return False

    def targeted_bundles(self) -> list[tuple[Any, Version]]:
        """Stored bundles that target this node and that the current trust root still trusts."""
        now = now_ms()
        if self.agent.admission.root.expired(now):
            log.warning("trust root serial %d has expired: no bundle is applied", self.agent.admission.root.serial)
            return []
        out = []
        for item in self.agent.node.store.items():
            if not item.key.startswith(BUNDLE_PREFIX):
                continue
            bundle = self.usable_bundle(item, now)
            if bundle is not None and self.targets_me(bundle):
                out.append((bundle, item.version))
        return sorted(out, key=lambda bv: bv[0].name)

    def concerns_me(self, item: SignedItem, now: int) -> bool:
        """An accepted bundle version that targets this node, or replaces one applied here."""
        bundle = self.usable_bundle(item, now)
        if bundle is not None and self.targets_me(bundle):
            return True
        return item.key[len(BUNDLE_PREFIX):] in self.agent.state.applied()

    def schedule(self, trigger: str) -> None:
        """Converge soon, at most once per debounce window.

        The first arrival after a quiet window converges at once; arrivals
        within ``converge_debounce_ms`` of the last converge's start join one
        converge at the end of the window, so a burst of bundles costs two
        converges, not one per bundle.
        """
        if self._handle is not None or self.agent.stopping:
            return  # already scheduled: this arrival joins it
        loop = asyncio.get_running_loop()
        since = loop.time() - self._last_start
        delay = max(0.0, self.agent.config.converge_debounce_ms / 1000 - since)

        def fire() -> None:
            self._handle = None
            self.agent.spawn(self._quiet(trigger), "converge")

        self._handle = loop.call_later(delay, fire)

    async def _quiet(self, trigger: str) -> None:
        # the mesh first: frames this node is forwarding leave before the converge takes the CPU
        await self.agent.transport.drain(FORWARD_FIRST_S)
        try:
            await self.converge_now(trigger=trigger)
        except Exception:
            log.exception("converge (%s) failed", trigger)

    async def converge_now(self, bundle_names: list[str] | None = None, dry_run: bool = False, trigger: str = "api") -> dict:
        """Converge this node to the bundles that target it; returns the report JSON."""
        from grapevine.policy import engine

        async with self._lock:
            self._last_start = asyncio.get_running_loop().time()
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
                    engine.converge, bundles, root=self.agent.config.root, facts=self.agent.facts, dry_run=dry_run,
                    node_key=self.agent.node_key, isolate_bundles=True,
                )
                doc = report.to_json()
            except GrapevineError as exc:
                doc = {"changed": 0, "unchanged": 0, "failed": 1, "skipped": 0, "resources": [], "error": str(exc)}
            took = time.monotonic() - t0
            ok = not doc.get("failed") and not doc.get("error")
            doc.update(
                node=self.agent.node_id, at_ms=at, trigger=trigger, dry_run=dry_run,
                versions={n: version_text(v) for n, v in versions.items()},
            )
            doc.setdefault("bundles", sorted(versions))
            doc.setdefault("duration_ms", int(took * 1000))
            if not dry_run:
                self.agent.state.add_report(at_ms=at, trigger=trigger, bundles=sorted(versions), ok=ok, report=doc)
                self.agent.state.set_applied(versions, at, ok)
                self.last_report = doc
                self.agent.metrics.converge_seconds.labels(trigger).observe(took)
                if not ok:
                    self.agent.metrics.converge_failures.inc()
            if doc.get("error"):
                log.warning("converge (%s) could not run: %s", trigger, doc["error"])
            log.info(
                "converge (%s%s): %d bundles, %s changed, %s failed in %d ms",
                trigger, ", dry run" if dry_run else "", len(bundles), doc.get("changed"), doc.get("failed"), int(took * 1000),
            )
            return doc

    def cancel(self) -> None:
        """Drop a scheduled converge (shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def periodic(self) -> None:
        """Converge once after start (if anything targets this node), then every interval plus splay."""
        cfg = self.agent.config
        if cfg.converge_on_start and self.targeted_bundles():
            self.schedule("start")
        while True:
            await asyncio.sleep(cfg.converge_interval_s + self.agent.rng.uniform(0, cfg.converge_splay_s))
            self.schedule("timer")
