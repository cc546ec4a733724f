"""Convergence engine on real files under a temporary root."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grapevine.gossip.errors import PolicyError
from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge
from grapevine.policy.report import Report

FACTS = {"name": "web-01", "hostname": "web-01", "os": "debian", "cpu_count": 4, "role": "web", "env": "staging"}


def bundle(resources, name="site/base", target=None, files=None) -> Bundle:
    doc = {"bundle": name, "resources": resources, "files": files or {}}
    if target is not None:
        doc["target"] = target
    return Bundle.from_document(doc, "test.yaml")


def snapshot(root: Path) -> dict:
    """Everything observable about a tree: type, mode, owner, content, link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode, st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, Path(p).read_bytes(), st.st_mtime_ns)
    return out


SITE = [
    {"directory": "/srv/www", "mode": "0750"},
    {"file": "/srv/www/index.html", "content": "<h1>hello</h1>\n", "mode": "0644", "require": "directory:/srv/www"},
    {"file": "/etc/app.conf", "source": "app.conf.j2", "mode": "0600", "notify": "exec:reload"},
    {"file": "/etc/banner", "content": "node {{ facts.name }}\n", "template": True},
    {"symlink": "/srv/current", "to": "/srv/www"},
    {"file": "/etc/stale", "ensure": "absent"},
    {"exec": "reload", "command": "echo reload >> \"$GRAPEVINE_ROOT/reloads\"", "refresh_only": True},
    {"exec": "init", "command": ["sh", "-c", "touch \"$GRAPEVINE_ROOT/srv/.init\""], "creates": "/srv/.init"},
]
SITE_FILES = {"app.conf.j2": "workers = {{ facts.cpu_count }}\nname = {{ facts.name }}\n"}


def site() -> list[Bundle]:
    return [bundle(SITE, files=SITE_FILES)]


def test_first_converge_builds_everything_and_second_changes_nothing(tmp_path):
    first = converge(site(), root=tmp_path, facts=FACTS)
    assert first.failed == 0 and first.skipped == 0, first.to_json()
    assert set(first.with_status("changed")) == {
        "directory:/srv/www", "file:/srv/www/index.html", "file:/etc/app.conf", "file:/etc/banner",
        "symlink:/srv/current", "exec:reload", "exec:init",
    }
    assert (tmp_path / "etc/app.conf").read_text() == "workers = 4\nname = web-01\n"
    assert (tmp_path / "etc/app.conf").stat().st_mode & 0o7777 == 0o600
    assert (tmp_path / "srv/www").stat().st_mode & 0o7777 == 0o750
    assert (tmp_path / "etc/banner").read_text() == "node web-01\n"
    assert os.readlink(tmp_path / "srv/current") == "/srv/www"
    assert (tmp_path / "reloads").read_text() == "reload\n"
    before = snapshot(tmp_path)
    second = converge(site(), root=tmp_path, facts=FACTS)
    assert second.changed == 0 and second.unchanged == len(SITE), second.to_json()
    assert snapshot(tmp_path) == before
    reasons = {r.id: r.reason for r in second.resources}
    assert reasons["file:/etc/app.conf"] == "content matches"
    assert reasons["exec:init"] == "/srv/.init exists"
    assert reasons["exec:reload"] == "refresh-only and not notified"
    assert all(reasons.values())


def _edit(p):
    with open(p, "a") as fh:
        fh.write("drift\n")


DRIFT = [
    # (what happens, mutation on the root, resources that must be reported as changed)
    ("edited file", lambda r: _edit(r / "srv/www/index.html"), {"file:/srv/www/index.html"}),
    ("changed mode", lambda r: os.chmod(r / "etc/app.conf", 0o644), {"file:/etc/app.conf", "exec:reload"}),
    ("deleted directory", lambda r: shutil.rmtree(r / "srv/www"), {"directory:/srv/www", "file:/srv/www/index.html"}),
    ("deleted file", lambda r: os.unlink(r / "etc/banner"), {"file:/etc/banner"}),
    ("retargeted symlink", lambda r: (os.unlink(r / "srv/current"), os.symlink("/tmp", r / "srv/current")), {"symlink:/srv/current"}),
    ("file replaced by symlink", lambda r: (os.unlink(r / "etc/banner"), os.symlink("/etc/hostname", r / "etc/banner")), {"file:/etc/banner"}),
    ("absent file reappeared", lambda r: (r / "etc/stale").write_text("old\n"), {"file:/etc/stale"}),
    ("directory mode", lambda r: os.chmod(r / "srv/www", 0o777), {"directory:/srv/www"}),
]


@pytest.mark.parametrize("what,mutate,expected", DRIFT, ids=[d[0] for d in DRIFT])
def test_drift_is_planned_by_dry_run_and_repaired_by_next_converge(tmp_path, what, mutate, expected):
    converge(site(), root=tmp_path, facts=FACTS)
    mutate(tmp_path)
    drifted = snapshot(tmp_path)
    plan = converge(site(), root=tmp_path, facts=FACTS, dry_run=True)
    assert plan.dry_run
    assert set(plan.with_status("changed")) == expected, plan.to_json()
    assert snapshot(tmp_path) == drifted, "a dry run changed the tree"
    repair = converge(site(), root=tmp_path, facts=FACTS)
    assert set(repair.with_status("changed")) == expected
    again = converge(site(), root=tmp_path, facts=FACTS)
    assert again.changed == 0, again.to_json()


def test_dry_run_shows_unified_diff_and_changes_nothing(tmp_path):
    converge(site(), root=tmp_path, facts=FACTS)
    (tmp_path / "srv/www/index.html").write_text("<h1>hi</h1>\n")
    before = snapshot(tmp_path)
    plan = converge(site(), root=tmp_path, facts=FACTS, dry_run=True)
    diff = plan.by_id()["file:/srv/www/index.html"].diff
    assert "--- /srv/www/index.html" in diff and "+++ /srv/www/index.html" in diff
    assert "-<h1>hi</h1>" in diff and "+<h1>hello</h1>" in diff
    assert snapshot(tmp_path) == before


def test_dry_run_on_empty_root_writes_nothing(tmp_path):
    plan = converge(site(), root=tmp_path, facts=FACTS, dry_run=True)
    assert plan.changed == len(SITE) - 1  # the absent file is already absent
    assert list(tmp_path.iterdir()) == []


def test_failed_resource_skips_its_dependents_and_the_rest_goes_on(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/data").write_text("a file where a directory should be\n")
    res = [
        {"directory": "/srv/data"},
        {"file": "/srv/data/x.conf", "content": "x\n", "require": "directory:/srv/data"},
        {"exec": "index", "command": "true", "require": "file:/srv/data/x.conf"},
        {"file": "/etc/unrelated", "content": "ok\n"},
        {"service": "never", "require": "exec:index"},
    ]
    report = converge([bundle(res)], root=tmp_path, facts=FACTS)
    status = {r.id: r.status for r in report.resources}
    assert status == {
        "directory:/srv/data": "failed",
        "file:/srv/data/x.conf": "skipped",
        "exec:index": "skipped",
        "file:/etc/unrelated": "changed",
        "service:never": "skipped",
    }
    by_id = report.by_id()
    assert "not a directory" in by_id["directory:/srv/data"].error
    assert "directory:/srv/data (failed)" in by_id["file:/srv/data/x.conf"].reason
    assert "file:/srv/data/x.conf (skipped)" in by_id["exec:index"].reason
    assert (tmp_path / "etc/unrelated").read_text() == "ok\n"


def test_failing_exec_reports_its_exit_code_and_output(tmp_path):
    res = [{"exec": "boom", "command": "echo going down; exit 3"}, {"file": "/after", "content": "", "require": "exec:boom"}]
    report = converge([bundle(res)], root=tmp_path, facts=FACTS)
    boom = report.by_id()["exec:boom"]
    assert boom.status == "failed"
    assert "exited 3" in boom.error and "going down" in boom.error
    assert report.by_id()["file:/after"].status == "skipped"


def test_exec_success_codes_can_be_widened(tmp_path):
    res = [{"exec": "grep", "command": "exit 1", "returns": [0, 1]}]
    assert converge([bundle(res)], root=tmp_path, facts=FACTS).by_id()["exec:grep"].status == "changed"


def test_notify_refreshes_only_when_the_notifier_changed(tmp_path):
    converge(site(), root=tmp_path, facts=FACTS)
    assert (tmp_path / "reloads").read_text() == "reload\n"
    converge(site(), root=tmp_path, facts=FACTS)
    assert (tmp_path / "reloads").read_text() == "reload\n"
    (tmp_path / "etc/app.conf").write_text("workers = 1\n")
    report = converge(site(), root=tmp_path, facts=FACTS)
    assert (tmp_path / "reloads").read_text() == "reload\nreload\n"
    assert "notified by file:/etc/app.conf" in report.by_id()["exec:reload"].changes[0]


def test_notify_across_bundles(tmp_path):
    a = bundle([{"file": "/etc/x", "content": "1\n", "notify": "exec:count"}], name="a")
    b = bundle([{"exec": "count", "command": "echo x >> \"$GRAPEVINE_ROOT/count\"", "refresh_only": True}], name="b")
    converge([b, a], root=tmp_path, facts=FACTS)
    converge([a, b], root=tmp_path, facts=FACTS)
    assert (tmp_path / "count").read_text() == "x\n"


def test_when_selector_leaves_resources_out_and_dependents_proceed(tmp_path):
    res = [
        {"file": "/etc/prod-only", "content": "p\n", "when": "env=prod"},
        {"file": "/etc/everywhere", "content": "e\n", "require": "file:/etc/prod-only"},
        {"file": "/etc/staging-only", "content": "s\n", "when": "env=staging and role in (web, api)"},
    ]
    report = converge([bundle(res)], root=tmp_path, facts=FACTS)
    assert {r.id for r in report.resources} == {"file:/etc/everywhere", "file:/etc/staging-only"}
    assert not (tmp_path / "etc/prod-only").exists()
    assert (tmp_path / "etc/everywhere").exists() and (tmp_path / "etc/staging-only").exists()


def test_bundle_target_selects_nodes(tmp_path):
    web = bundle([{"file": "/etc/web", "content": "w\n"}], name="web", target="role=web")
    db = bundle([{"file": "/etc/db", "content": "d\n"}], name="db", target="role=db")
    report = converge([web, db], root=tmp_path, facts=FACTS)
    assert report.bundles == ("web",)
    assert (tmp_path / "etc/web").exists() and not (tmp_path / "etc/db").exists()


BROKEN_AT_PREPARE = [
    ([{"file": "/etc/a", "content": "ok\n"}, {"file": "/etc/t", "content": "{{ facts.nope }}", "template": True}], {}, "nope"),
    ([{"file": "/etc/a", "content": "ok\n"}, {"file": "/etc/t", "source": "t.j2"}], {"t.j2": "{% if %}"}, "t.j2 line 1"),
    ([{"file": "/etc/a", "content": "ok\n"}, {"file": "/etc/t", "source": "t.j2"}], {"t.j2": "{{ ''.__class__.__mro__ }}"}, "t.j2"),
    ([{"file": "/etc/a", "content": "ok\n"}, {"file": "/etc/t", "content": "{{ 1 // 0 }}", "template": True}], {}, "ZeroDivisionError"),
    ([{"file": "/etc/a", "content": "ok\n", "require": "file:/nope"}], {}, "no such resource"),
]


@pytest.mark.parametrize("res,files,words", BROKEN_AT_PREPARE)
def test_policy_error_anywhere_changes_nothing(tmp_path, res, files, words):
    with pytest.raises(PolicyError) as info:
        converge([bundle(res, files=files)], root=tmp_path, facts=FACTS)
    assert words in str(info.value)
    assert "site/base" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_report_is_serialisable_and_round_trips(tmp_path):
    report = converge(site(), root=tmp_path, facts=FACTS)
    doc = json.loads(json.dumps(report.to_json()))
    assert {"changed", "unchanged", "failed", "skipped", "resources"} <= set(doc)
    for r in doc["resources"]:
        assert {"id", "status", "diff", "error", "duration_ms"} <= set(r)
        assert isinstance(r["duration_ms"], (int, float)) and r["duration_ms"] >= 0
    again = Report.from_json(doc)
    assert again.to_json() == doc


def test_absent_file_is_removed(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/old").write_text("x\n")
    report = converge([bundle([{"file": "/etc/old", "ensure": "absent"}])], root=tmp_path, facts=FACTS)
    assert report.changed == 1 and not (tmp_path / "etc/old").exists()


def test_file_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    converge(site(), root=tmp_path, facts=FACTS)
    (tmp_path / "etc/app.conf").write_text("old\n")
    inode = (tmp_path / "etc/app.conf").stat().st_ino
    converge(site(), root=tmp_path, facts=FACTS)
    assert (tmp_path / "etc/app.conf").stat().st_ino != inode  # replaced by rename, not rewritten in place
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".gv-tmp")]
    assert leftovers == []


def test_mode_only_drift_is_fixed_in_place(tmp_path):
    converge(site(), root=tmp_path, facts=FACTS)
    os.chmod(tmp_path / "etc/app.conf", 0o666)
    inode = (tmp_path / "etc/app.conf").stat().st_ino
    report = converge(site(), root=tmp_path, facts=FACTS)
    assert report.by_id()["file:/etc/app.conf"].changes == ("mode 0666 -> 0600",)
    assert (tmp_path / "etc/app.conf").stat().st_ino == inode
    assert (tmp_path / "etc/app.conf").stat().st_mode & 0o7777 == 0o600


def test_a_symlink_in_the_root_cannot_lead_a_write_outside_it(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "etc")
    res = [
        {"file": "/etc/motd", "content": "escaped?\n"},
        {"directory": "/etc/sub"},
        {"symlink": "/srv/current", "to": str(outside)},
        {"file": "/srv/current/index.html", "content": "x\n", "require": "symlink:/srv/current"},
        {"file": "/srv/inside", "content": "fine\n"},
    ]
    report = converge([bundle(res)], root=root, facts=FACTS)
    status = {r.id: r.status for r in report.resources}
    assert status == {
        "file:/etc/motd": "failed",
        "directory:/etc/sub": "failed",
        "symlink:/srv/current": "changed",
        "file:/srv/current/index.html": "failed",
        "file:/srv/inside": "changed",
    }
    assert "outside the root" in report.by_id()["file:/etc/motd"].error
    assert list(outside.iterdir()) == []


def test_a_second_converge_on_the_same_root_waits_for_the_first_then_gives_up(tmp_path):
    import fcntl

    from grapevine.policy.engine import ConvergeBusy

    res = [{"file": "/etc/x", "content": "x\n"}]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # stands in for a converge applying right now
        with pytest.raises(ConvergeBusy, match="another converge is running"):
            converge([bundle(res)], root=tmp_path, facts=FACTS, lock_wait_s=0.2)
        assert not (tmp_path / "etc").exists()
        fcntl.flock(fd, fcntl.LOCK_SH)  # a dry run may share the root with another dry run
        assert converge([bundle(res)], root=tmp_path, facts=FACTS, dry_run=True, lock_wait_s=0.2).changed == 1
    finally:
        os.close(fd)
    assert converge([bundle(res)], root=tmp_path, facts=FACTS, lock_wait_s=0.2).changed == 1


def test_a_root_that_is_not_a_directory_is_a_config_error(tmp_path):
    from grapevine.gossip.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be used"):
        converge([bundle([{"file": "/x"}])], root=tmp_path / "missing", facts=FACTS)


# ---------------------------------------------------------------- property: converging twice changes nothing


_MODES = st.sampled_from(["0600", "0640", "0644", "0755", "0700"])
_FILE = st.builds(
    lambda d, f, text, mode: {"file": f"/d{d}/f{f}", "content": text, "mode": mode},
    st.integers(0, 2), st.integers(0, 3), st.text(max_size=40), _MODES,
)
_DIR = st.builds(lambda d, mode: {"directory": f"/d{d}", "mode": mode}, st.integers(0, 2), _MODES)
_LINK = st.builds(lambda k, to: {"symlink": f"/l{k}", "to": to}, st.integers(0, 2), st.sampled_from(["/d0", "d1/f0", "/nowhere"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(_FILE, _DIR, _LINK), max_size=10, unique_by=lambda r: next(iter(r.items()))))
def test_any_set_of_filesystem_resources_converges_in_one_run(resources):
    with tempfile.TemporaryDirectory() as tmp:
        first = converge([bundle(resources)], root=tmp, facts=FACTS)
        assert first.failed == 0 and first.skipped == 0, first.to_json()
        second = converge([bundle(resources)], root=tmp, facts=FACTS)
        assert second.changed == 0 and second.unchanged == len(resources), second.to_json()
