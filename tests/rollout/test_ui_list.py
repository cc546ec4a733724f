"""The fleet page lists the rollouts whose records the agent holds (node/ui.py FleetPage)."""

from __future__ import annotations

import asyncio

from grapevine.gossip.item import Version
from grapevine.node.ui import FleetPage, UiLink
from grapevine.policy.rollout import RolloutPlan, RolloutRecord, status_document


def test_fleet_document_carries_the_recent_rollouts():
    plan = RolloutPlan.from_document({"stages": [1, "100%"]})
    record = RolloutRecord(bundle="web/site", version=Version(5, 0, "k"), state="rolled_back", stage=0,
                           thresholds=(9,), driver="a@h:1", reason="1 node(s) failed", counts=((1, 0, 1),), targets=4)
    doc = status_document(plan, record, bundle="web/site", version=record.version)

    async def fleet_query(kind: str, selector: str) -> dict:
        return {"answers": {}, "discovery_ms": 1, "origin": "a@h:1"}

    link = UiLink(fleet_query=fleet_query, status=lambda: {"node": "a@h:1"}, members=lambda: {}, rollouts=lambda: [doc])
    got = asyncio.run(FleetPage(link).document())
    listed = got["fleet"]["rollouts"]
    assert [(r["bundle"], r["state"], r["reason"]) for r in listed] == [("web/site", "rolled_back", "1 node(s) failed")]
    assert listed[0]["stages"][0] == {"fraction": 0.25, "size": 1, "planned": "1", "open": True, "applied": 1,
                                      "healthy": 0, "failed": 1}
