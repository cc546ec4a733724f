"""The demo's staged rollouts: a bad change caught by its first stage and reverted, a good one in stages.

Both go through the same driver ``grapevine inject --stages ...`` runs
(cli/rollout.py), attached to the demo's first agent, with a short soak so
the demo stays short.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from grapevine.policy.bundle import Bundle, pack
from grapevine.policy.rollout import RolloutPlan

from .localfleet import LocalAgent, LocalFleet, wait_for
from .rollout import Driving

SETTLE_TIMEOUT_S = 20.0  # every node back on (or on) the expected content after a rollout ended


def staged(doc: dict, health: str) -> Bundle:
    plan = RolloutPlan.from_document({"stages": [1, "50%", "100%"], "soak": "1s",
                                      "health": {"command": health, "timeout": "5s"}, "on_failure": "rollback"})
    return Bundle.from_document({**doc, "rollout": plan.to_document()}, "demo")


def _content(agent: LocalAgent, path: str) -> str | None:
    try:
        return (agent.root / path.lstrip("/")).read_text()
    except OSError:
        return None


def roll(fleet: LocalFleet, bundle: Bundle, say: Callable[[str], None]) -> tuple[dict, Any, float]:
    """Inject ``bundle`` through the first agent and drive its rollout to the end; (status, item, seconds)."""
    first = fleet.agents[0]
    item = pack(bundle, fleet.keys.author_key, time.time_ns() // 1_000_000)
    t0 = time.monotonic()
    client = first.client(timeout=30)
    client.post("/v1/inject", data=item.encode())
    d = Driving(client, fleet.keys.author_key, bundle, item.version, echo=False)
    d.start()
    say(f"  {len(d.drv.nodes) if d.drv else 0} targets; stages {[str(s) for s in bundle.rollout.stages]}, soak 1 s")
    doc = d.run()
    return doc, item, time.monotonic() - t0


def rollout_demo(fleet: LocalFleet, make_doc: Callable[[int], dict], path: str, say: Callable[[str], None],
                 step: Callable[[str], None]) -> dict:
    """Version 3 fails its health check on the first stage and is reverted; version 4 rolls out in stages."""
    out: dict[str, Any] = {}

    def all_on(version: int) -> bool:
        return all(f"version {version})" in (_content(a, path) or "") for a in fleet.agents)

    step("staged rollout of a bad change (version 3: its health check fails)")
    doc, _item, secs = roll(fleet, staged(make_doc(3), "sh -c 'echo service down >&2; exit 1'"), say)
    back = _settle(lambda: all_on(2))
    ever = sum(s["applied"] for s in doc["stages"])
    say(f"  {doc['state']} after {secs:.1f} s: {ever} of {len(fleet.agents)} node(s) ever ran it; {doc['reason']}")
    say(f"  every node is on version 2 again: {back}")
    out["rollout_bad"] = {"state": doc["state"], "ever_applied": ever, "reverted": back,
                          "reason": doc["reason"], "stages": doc["stages"], "ms": int(secs * 1000)}

    step("staged rollout of a good change (version 4: healthy)")
    doc, _item, secs = roll(fleet, staged(make_doc(4), "true"), say)
    on_new = doc["state"] == "complete" and _settle(lambda: all_on(4))
    healthy = sum(s["healthy"] for s in doc["stages"])
    say(f"  {doc['state']} after {secs:.1f} s, stage by stage: {healthy}/{len(fleet.agents)} nodes passed the"
        f" health check; every node on version 4: {on_new}")
    out["rollout_good"] = {"state": doc["state"], "applied": healthy, "all_on_new": on_new,
                           "stages": doc["stages"], "ms": int(secs * 1000)}
    return out


def _settle(cond: Callable[[], bool]) -> bool:
    try:
        wait_for(lambda: cond() or None, SETTLE_TIMEOUT_S, "the fleet to settle")
    except AssertionError:
        return False
    return True
