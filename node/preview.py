"""A preview run order at its target: dry-run candidate bundles here, store and change nothing.

The order (policy/runorder.py, kind ``preview``) carries the candidate bundle
items signed by their publisher. This node treats each one as if it had
arrived by gossip, with the same admission rules against its current trust
root and store (newer than the version held, signature, publisher prefix and
grant: paths, types, target ceiling), but never puts it in the store. It then
dry-runs a converge in which the admitted candidates stand in for the stored
bundles of the same names, while every other bundle that targets this node
stays as it is (so ``require`` and ``notify`` across bundles resolve), with
the node key (secrets sealed to this node open; the engine hides what they
render). The answer is a plan (policy/preview.py), nothing else: no item
admitted, no report stored, no version recorded as applied, no file touched
(a dry run only reads).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

from grapevine.gossip.errors import GrapevineError
from grapevine.gossip.item import SignedItem
from grapevine.policy import preview as plans
from grapevine.policy.catalog import resolve_claims
from grapevine.policy.refusal import OUT_OF_SCOPE, Refusal

log = logging.getLogger("grapevine.node")


class Candidates(Protocol):
    """What a preview needs of convergence (node/convergence.py)."""

    def targets_me(self, bundle: Any) -> bool: ...

    def trusted_here(self, replace: Any = None) -> list[tuple[Any, Any]]: ...


class Previewer:
    """Plans candidate bundles on this node (``preview``); the shell calls it from a run order."""

    def __init__(self, *, admission: Any, convergence: Candidates, stored: Callable[[str], SignedItem | None],
                 facts: dict, root: Path, node_key: Any, wall: Callable[[], int]) -> None:
        self.admission = admission
        self.convergence = convergence
        self.stored = stored
        self.facts = facts
        self.root = Path(root)
        self.node_key = node_key
        self.wall = wall

    def select(self, items: list[SignedItem]) -> tuple[list[Any], list[str], list[dict]]:
        """(bundles to dry-run, candidate names that target this node, refusals), without I/O."""
        now = self.wall()
        refused: list[dict] = []
        replace: dict[str, tuple[SignedItem, Any]] = {}
        for item in items:
            name = item.key[len("bundle/"):]
            try:
                # the checks an item arriving by gossip gets; check() counts nothing and stores nothing
                bundle = self.admission.check(item, self.stored(item.key), now)
            except Refusal as exc:
                refused.append({"bundle": name, "reason": exc.reason, "detail": exc.detail})
                continue
            if not self.convergence.targets_me(bundle):
                continue
            if not self.admission.within_ceiling(item, bundle, self.facts):
                refused.append({"bundle": name, "reason": OUT_OF_SCOPE,
                                "detail": "this node is outside the publisher's target ceiling"})
                continue
            replace[item.key] = (item, bundle)
        pairs = self.convergence.trusted_here(replace)
        kept, conflicts = resolve_claims(pairs)
        candidates = {item.key[len("bundle/"):] for item, _ in replace.values()}
        for c in conflicts:
            if c.refused in candidates:
                refused.append({"bundle": c.refused, "reason": c.reason, "detail": c.detail()})
        targeted = sorted(candidates - {x["bundle"] for x in refused})
        return sorted(kept, key=lambda b: b.name), targeted, refused

    async def preview(self, items: list[SignedItem], timeout_s: float) -> dict:
        """The plan for ``items`` on this node (policy/preview.py); raises nothing for bad candidates."""
        names = [i.key[len("bundle/"):] for i in items]
        bundles, targeted, refused = self.select(items)
        if not targeted:
            return plans.plan_from_report({}, names, refused=refused, targeted=targeted)
        try:
            report = await asyncio.wait_for(asyncio.to_thread(self._dry_run, bundles), timeout_s)
        except asyncio.TimeoutError:
            report = {"error": f"the dry run did not finish within {timeout_s:g} s"}
        except GrapevineError as exc:  # a policy error stops the whole dry run: that is the node's answer
            report = {"error": str(exc)}
        return plans.plan_from_report(report, targeted, refused=refused, targeted=targeted)

    def _dry_run(self, bundles: list[Any]) -> dict:
        from grapevine.policy import engine

        # as the daemon's own converges run: the node key opens the secrets sealed to this node, and
        # a bundle that cannot be prepared here fails alone
        return engine.converge(bundles, root=self.root, facts=self.facts, dry_run=True, node_key=self.node_key,
                               isolate_bundles=True).to_json()
