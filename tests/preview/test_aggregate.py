"""The fleet's plan from per-node plans (policy/preview.py): pure functions, table-driven."""

from __future__ import annotations

import msgpack
import pytest

from grapevine.policy import preview as plans

DIFF_A = "--- /etc/motd\n+++ /etc/motd\n-v1\n+v2\n"
DIFF_B = "--- /etc/motd\n+++ /etc/motd\n-v0\n+v2\n"


def row(rid="file:/etc/motd", status="changed", change="content", diff=DIFF_A, error="", bundle="site/motd"):
    return {"id": rid, "bundle": bundle, "status": status, "change": change, "diff": diff,
            "diff_sha": plans.diff_sha(diff), "error": error}


def plan(*rows, targeted=("site/motd",), refused=(), error=""):
    return {"targeted": list(targeted), "refused": list(refused), "error": error, "resources": list(rows)}


CASES = [
    # name, plans, failures, expected groups [(resource, change, nodes)], unchanged, failed nodes
    ("same diff on many nodes is one group",
     {"a": plan(row()), "b": plan(row()), "c": plan(row())}, {},
     [("file:/etc/motd", "content", ["a", "b", "c"])], [], []),
    ("different diffs of one resource are separate groups, largest first",
     {"a": plan(row(diff=DIFF_B)), "b": plan(row()), "c": plan(row())}, {},
     [("file:/etc/motd", "content", ["b", "c"]), ("file:/etc/motd", "content", ["a"])], [], []),
    ("different change summaries with no diff are separate groups",
     {"a": plan(row(rid="service:nginx", change="start", diff="")),
      "b": plan(row(rid="service:nginx", change="restart", diff=""))}, {},
     [("service:nginx", "restart", ["b"]), ("service:nginx", "start", ["a"])], [], []),
    ("a node in the desired state is unchanged",
     {"a": plan(row(status="unchanged", change="", diff="")), "b": plan(row())}, {},
     [("file:/etc/motd", "content", ["b"])], ["a"], []),
    ("a failing resource makes the node fail, not change",
     {"a": plan(row(), row(rid="file:/etc/x", status="failed", change="", diff="", error="is a directory")),
      "b": plan(row())}, {},
     [("file:/etc/motd", "content", ["b"])], [], ["a"]),
    ("a refused candidate makes the node fail",
     {"a": plan(refused=[{"bundle": "site/motd", "reason": "Stale", "detail": "not newer"}], targeted=())}, {},
     [], [], ["a"]),
    ("a dry run that could not run makes the node fail",
     {"a": plan(error="bundle 'site/motd': template: undefined")}, {}, [], [], ["a"]),
    ("targets without a plan fail with the reason given",
     {"a": plan(row())}, {"b": "unreachable: connection refused", "c": "refused the order: OutOfScope"},
     [("file:/etc/motd", "content", ["a"])], [], ["b", "c"]),
    ("a skipped resource (waits on a planned change) is part of the plan",
     {"a": plan(row(rid="file:/srv/x", status="skipped", change="cannot be checked before user:web", diff=""))}, {},
     [("file:/srv/x", "cannot be checked before user:web", ["a"])], [], []),
    ("a node that no candidate targets is neither changed nor unchanged",
     {"a": plan(targeted=()), "b": plan(row(status="unchanged", diff="", change=""))}, {}, [], ["b"], []),
    ("two changes on one node count it in two groups, once in changed_nodes",
     {"a": plan(row(), row(rid="file:/etc/issue")), "b": plan(row())}, {},
     [("file:/etc/motd", "content", ["a", "b"]), ("file:/etc/issue", "content", ["a"])], [], []),
]


@pytest.mark.parametrize("name,plans_in,failures,groups,unchanged,failed", CASES, ids=[c[0] for c in CASES])
def test_aggregate(name, plans_in, failures, groups, unchanged, failed):
    doc = plans.aggregate(list(plans_in) + list(failures), plans_in, failures)
    assert [(g["resource"], g["change"], g["nodes"]) for g in doc["groups"]] == groups
    assert all(g["count"] == len(g["nodes"]) for g in doc["groups"])
    assert doc["unchanged"] == unchanged
    assert [f["node"] for f in doc["failed"]] == failed
    assert all(f["error"] for f in doc["failed"])
    assert doc["changed_nodes"] == len({n for g in doc["groups"] for n in g["nodes"]})
    # the stable JSON contract
    assert {"targets", "groups", "unchanged", "failed"} <= set(doc)
    assert all({"resource", "change", "diff", "nodes"} <= set(g) for g in doc["groups"])
    assert all(set(f) == {"node", "error"} for f in doc["failed"])


def test_the_diff_is_shown_once_per_group():
    doc = plans.aggregate(["a", "b"], {"a": plan(row()), "b": plan(row())})
    (g,) = doc["groups"]
    assert g["diff"] == DIFF_A


def test_a_target_with_no_answer_at_all_fails():
    doc = plans.aggregate(["a", "b"], {"a": plan(row())})
    assert doc["failed"] == [{"node": "b", "error": "no answer"}]


def test_failure_reasons_name_resource_and_error():
    why = plans.plan_failure(plan(row(rid="file:/etc/x", status="failed", error="is a directory")))
    assert why == "file:/etc/x: is a directory"
    why = plans.plan_failure(plan(refused=[{"bundle": "web/x", "reason": "OutOfScope", "detail": "grant web/"}]))
    assert why == "web/x: OutOfScope: grant web/"


def test_plan_from_report_keeps_only_the_candidates_resources():
    report = {"resources": [
        {"id": "file:/etc/motd", "bundle": "site/motd", "status": "changed", "changes": ["content"], "diff": DIFF_A},
        {"id": "file:/etc/other", "bundle": "other", "status": "changed", "changes": ["content"], "diff": "x"}]}
    p = plans.plan_from_report(report, ["site/motd"], targeted=["site/motd"])
    assert [r["id"] for r in p["resources"]] == ["file:/etc/motd"]
    assert p["resources"][0]["diff_sha"] == plans.diff_sha(DIFF_A) and p["error"] == ""


def test_fit_plan_drops_diff_text_but_keeps_the_grouping():
    big = "+" + "x" * 200_000 + "\n"
    p = plan(row(diff=big), row(rid="file:/etc/small", diff=DIFF_A))
    packed = plans.fit_plan(p, 64 * 1024)
    assert len(packed) <= 64 * 1024
    got = msgpack.unpackb(packed, raw=False)
    rows = {r["id"]: r for r in got["resources"]}
    assert rows["file:/etc/motd"]["diff"] == plans.OMITTED and rows["file:/etc/motd"]["diff_sha"] == plans.diff_sha(big)
    assert rows["file:/etc/small"]["diff"] == DIFF_A  # the small diff survives
    # two nodes, one whose diff text was dropped: still one group, the text shown from the other
    doc = plans.aggregate(["a", "b"], {"a": got, "b": p})
    (g1, g2) = doc["groups"]
    assert {g1["resource"], g2["resource"]} == {"file:/etc/motd", "file:/etc/small"}
    assert all(g["nodes"] == ["a", "b"] for g in doc["groups"])


def test_fit_plan_keeps_every_change_without_diff_text_when_the_diffs_do_not_fit():
    rows = [row(rid=f"file:/etc/f{i}", diff="+" + "y" * 300 + "\n") for i in range(500)]
    packed = plans.fit_plan(plan(*rows), 128 * 1024)
    assert len(packed) <= 128 * 1024
    got = msgpack.unpackb(packed, raw=False)
    assert len(got["resources"]) == 500 and all(r["diff_sha"] for r in got["resources"])
    assert plans.plan_failure(got) is None


def test_fit_plan_of_thousands_of_resources_keeps_the_failures():
    rows = [row(rid=f"file:/etc/f{i}", diff="+" + "y" * 100 + "\n") for i in range(5000)]
    rows.append(row(rid="file:/etc/bad", status="failed", error="boom", diff=""))
    packed = plans.fit_plan(plan(*rows), 32 * 1024)
    assert len(packed) <= 32 * 1024
    got = msgpack.unpackb(packed, raw=False)
    assert "file:/etc/bad: boom" in plans.plan_failure(got) and "too large" in plans.plan_failure(got)


def test_a_thousand_node_preview_prints_in_a_screenful():
    # 600 share one change, 300 another, 60 drifted each their own way, 30 unchanged, 10 fail two ways
    plans_in = {}
    for i in range(600):
        plans_in[f"web-{i:04d}"] = plan(row())
    for i in range(300):
        plans_in[f"app-{i:04d}"] = plan(row(diff=DIFF_B))
    for i in range(60):
        plans_in[f"odd-{i:04d}"] = plan(row(diff=f"-v{i}\n+v2\n" + "ctx\n" * 30))
    for i in range(30):
        plans_in[f"ok-{i:04d}"] = plan(row(status="unchanged", diff="", change=""))
    failures = {f"bad-{i}": ("unreachable: timeout" if i % 2 else "refused the order: OutOfScope") for i in range(10)}
    doc = plans.aggregate(list(plans_in) + list(failures), plans_in, failures)
    assert len(doc["targets"]) == 1000 and len(doc["groups"]) == 62
    lines = plans.render(doc)
    assert len(lines) <= 50, "\n".join(lines)
    text = "\n".join(lines)
    assert "on 600 node(s): web-0000, web-0001, web-0002 and 597 more" in text
    assert "on 300 node(s)" in text and "and 54 more change(s) on 54 node(s)" in text
    assert "unchanged: 30 node(s)" in text and "would fail: 10 node(s)" in text
    assert "5 node(s) (bad-1, bad-3, bad-5 and 2 more): unreachable: timeout" in text
