"""A rooted converge never reads or writes outside its root through a symlink planted under it.

Real files under a temporary root, with a "host" directory beside it standing
for the rest of the machine; every case checks that the host content never
appears in a report and that the host files are untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from grapevine.policy.bundle import Bundle
from grapevine.policy.engine import converge

FACTS = {"name": "web-01", "hostname": "web-01", "os": "debian"}
HOST_SECRET = "root:HOST-ONLY-CONTENT:0:0\n"


def bundle(resources) -> Bundle:
    return Bundle.from_document({"bundle": "site/base", "resources": resources}, "test.yaml")


@pytest.fixture
def layout(tmp_path):
    root, host = tmp_path / "root", tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "passwd").write_text(HOST_SECRET)
    (host / "etc" / "passwd").chmod(0o644)
    root.mkdir()
    return root, host


def host_state(host: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(host):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p)] = (st.st_mode, p.read_bytes() if p.is_file() else None)
    return out


def run(root: Path, resources, dry_run: bool):
    report = converge([bundle(resources)], root=root, facts=FACTS, dry_run=dry_run)
    text = json.dumps(report.to_json())
    assert "HOST-ONLY-CONTENT" not in text, "content outside the root reached the report"
    return report


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize(
    "resource",
    [
        {"file": "/etc/passwd", "content": "mine\n"},
        {"file": "/etc/passwd", "content": "mine\n", "mode": "0600"},
        {"file": "/etc/passwd", "mode": "0600"},
        {"file": "/etc/passwd", "ensure": "absent"},
        {"file": "/etc/new.conf", "content": "x\n"},
        {"directory": "/etc/sub", "mode": "0700"},
        {"directory": "/etc", "mode": "0700"},
        {"symlink": "/etc/link", "to": "/tmp"},
    ],
    ids=["content", "content+mode", "mode", "absent", "new-file", "new-dir", "dir-mode", "symlink"],
)
def test_a_planted_parent_link_out_of_the_root_is_refused(layout, resource, dry_run):
    root, host = layout
    os.symlink(host / "etc", root / "etc")  # root/etc -> the host's /etc
    before = host_state(host)
    report = run(root, [resource], dry_run)
    [r] = report.resources
    if resource.get("directory") == "/etc":
        # the link itself is the resource's own path: not followed, refused as not a directory
        assert r.status == "failed" and "not a directory" in r.error
    else:
        assert r.status == "failed", r
        assert "/etc is a symlink to" in r.error and "outside the root" in r.error
    assert host_state(host) == before
    assert os.readlink(root / "etc") == str(host / "etc")


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_planted_link_at_the_files_own_path_is_replaced_not_followed(layout, dry_run):
    root, host = layout
    (root / "etc").mkdir()
    os.symlink(host / "etc" / "passwd", root / "etc" / "passwd")
    before = host_state(host)
    report = run(root, [{"file": "/etc/passwd", "content": "mine\n"}], dry_run)
    assert report.resources[0].status == "changed"
    assert "replace symlink with file" in report.resources[0].changes
    assert host_state(host) == before
    if not dry_run:
        assert not (root / "etc" / "passwd").is_symlink()
        assert (root / "etc" / "passwd").read_text() == "mine\n"


def test_a_relative_link_climbing_out_of_the_root_is_refused(layout):
    root, host = layout
    os.symlink("../host/etc", root / "etc")
    before = host_state(host)
    report = run(root, [{"file": "/etc/passwd", "content": "mine\n"}], False)
    assert report.resources[0].status == "failed"
    assert "climbs above the root" in report.resources[0].error
    assert host_state(host) == before


def test_links_that_stay_inside_the_root_are_followed(layout):
    root, _ = layout
    (root / "srv" / "www").mkdir(parents=True)
    os.symlink(root / "srv" / "www", root / "srv" / "abs")  # absolute, but under the root
    os.symlink("www", root / "srv" / "rel")
    report = run(root, [
        {"file": "/srv/abs/a.html", "content": "a\n"},
        {"file": "/srv/rel/b.html", "content": "b\n"},
    ], False)
    assert report.ok, report.to_json()
    assert (root / "srv" / "www" / "a.html").read_text() == "a\n"
    assert (root / "srv" / "www" / "b.html").read_text() == "b\n"


def test_a_link_created_by_the_policy_is_checked_for_later_paths(layout):
    """A symlink resource pointing out of the root (absolute targets are host paths here):
    files below it are refused, not written on the host."""
    root, host = layout
    before = host_state(host)
    report = run(root, [
        {"symlink": "/etc", "to": str(host / "etc")},
        {"file": "/etc/passwd", "content": "mine\n", "require": "symlink:/etc"},
    ], False)
    by = report.by_id()
    assert by["symlink:/etc"].status == "changed"
    assert by["file:/etc/passwd"].status == "failed" and "outside the root" in by["file:/etc/passwd"].error
    assert host_state(host) == before


def test_a_link_loop_under_the_root_ends_with_an_error(layout):
    root, _ = layout
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    report = run(root, [{"file": "/a/x", "content": "x\n"}], True)
    assert report.resources[0].status == "failed" and "symlinks on the way" in report.resources[0].error
