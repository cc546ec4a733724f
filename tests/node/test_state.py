"""SQLite state: items with history, run ids, reports, peers, keys; survives reopening."""

from __future__ import annotations

import os

import pytest

from grapevine.gossip.item import SignedItem, Version
from grapevine.node.state import State


def _item(key: str, wall: int, payload: bytes = b"p") -> SignedItem:
    return SignedItem(key=key, version=Version(wall, 0, "author0000000000"), payload=payload)


def test_every_accepted_version_is_kept_and_the_newest_is_live(tmp_path):
    st = State(tmp_path)
    st.put_items([(_item("bundle/a", 1, b"one"), 10, None)])
    st.put_items([(_item("bundle/a", 3, b"three"), 11, "peer@127.0.0.1:1"), (_item("bundle/b", 2), 11, None)])
    st.put_items([(_item("bundle/a", 2, b"two"), 12, None)])  # an older version arriving late never becomes live
    st.close()
    st = State(tmp_path)
    live = {i.key: i for i in st.load_items()}
    assert live["bundle/a"].payload == b"three"
    hist = st.history("bundle/a")
    assert [h.version.wall_ms for h in hist] == [1, 2, 3]
    assert [h.current for h in hist] == [False, False, True]
    assert st.get_version("bundle/a", Version(1, 0, "author0000000000")).payload == b"one"


def test_history_can_be_bounded_per_key(tmp_path):
    st = State(tmp_path, history_keep=2)
    for w in range(1, 6):
        st.put_items([(_item("bundle/a", w), w, None)])
    assert [h.version.wall_ms for h in st.history("bundle/a")] == [4, 5]


def test_run_ids_are_seen_once_across_reopen(tmp_path):
    st = State(tmp_path)
    assert st.mark_run_seen("r1", 1000) is True
    assert st.mark_run_seen("r1", 1000) is False
    st.close()
    assert State(tmp_path).mark_run_seen("r1", 1000) is False


def test_reports_peers_and_keys_persist(tmp_path):
    st = State(tmp_path, reports_keep=2)
    for i in range(3):
        st.add_report(at_ms=i, trigger="t", bundles=["a"], ok=True, report={"changed": i})
    st.touch_peers(["x@127.0.0.1:1", "y@127.0.0.1:2"], 5)
    st.save_netkeys({"aabbccdd": b"k" * 32}, "aabbccdd", removed=["11223344"])
    st.set_applied({"a": Version(1, 0, "x")}, 7, True)
    st.close()
    st = State(tmp_path)
    assert [r.report["changed"] for r in st.reports()] == [2, 1]
    assert sorted(st.known_peers()) == ["x@127.0.0.1:1", "y@127.0.0.1:2"]
    assert st.netkeys() == ([b"k" * 32], "aabbccdd", {"11223344"})
    assert st.applied()["a"] == (Version(1, 0, "x"), 7, True)


def test_database_is_private_to_the_owner(tmp_path):
    State(tmp_path).close()
    assert os.stat(tmp_path / "state.db").st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("mode", "replicated", "synchronous"), [
    ("always", False, 2), ("always", True, 2),   # 2 = FULL: the commit waits for the disk
    ("local", False, 2), ("local", True, 1),     # 1 = NORMAL: survives the process, not the machine
    ("never", False, 1), ("never", True, 1),
])
def test_commits_wait_for_the_disk_as_the_fsync_setting_says(tmp_path, mode, replicated, synchronous):
    st = State(tmp_path, fsync=mode)
    st.put_items([(_item("bundle/a", 1), 1, "p@127.0.0.1:1" if replicated else None)], replicated=replicated)
    assert st.db.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    st.mark_run_seen("r", 5)  # node-local state follows the mode itself
    assert st.db.execute("PRAGMA synchronous").fetchone()[0] == (1 if mode == "never" else 2)
