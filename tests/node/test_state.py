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


def _tied(key: str = "bundle/a") -> tuple[SignedItem, SignedItem]:
    """Two different items under one version: (loser, winner) by the store's digest rule."""
    a = _item(key, 7, b"first payload")
    b = _item(key, 7, b"second payload")
    return (a, b) if a.digest() < b.digest() else (b, a)


@pytest.mark.parametrize("order", ["loser-first", "winner-first"])
def test_same_version_tie_keeps_the_winner_across_reopen(tmp_path, order):
    from grapevine.gossip.store import is_newer

    loser, winner = _tied()
    assert is_newer(winner, loser) and not is_newer(loser, winner)
    st = State(tmp_path)
    for it in ((loser, winner) if order == "loser-first" else (winner, loser)):
        st.put_items([(it, 1, None)])
    st.close()
    st = State(tmp_path)  # the real file, opened again: what a restarted agent starts from
    [live] = st.load_items()
    assert live.payload == winner.payload
    assert st.get_version("bundle/a", winner.version).payload == winner.payload
    assert [h.current for h in st.history("bundle/a")] == [True]


def test_run_ids_are_pruned_by_their_own_deadline_not_the_new_orders(tmp_path):
    """An order may be issued up to a minute ahead (clock skew) with a day's window, so its
    deadline lies up to a day and a minute ahead: pruning at "its deadline minus a day"
    forgot ids still valid for that minute, and their orders could be replayed."""
    import time

    from grapevine.node.state import SEEN_RUNS_GRACE_MS, SEEN_RUNS_PRUNE_EVERY
    from grapevine.policy.runorder import MAX_SKEW_MS, MAX_WINDOW_MS

    now = time.time_ns() // 1_000_000
    st = State(tmp_path)
    assert st.mark_run_seen("live", now + 30_000)  # its order is valid for another 30 s
    assert st.mark_run_seen("old", now - SEEN_RUNS_GRACE_MS - 60_000)  # long expired
    for i in range(SEEN_RUNS_PRUNE_EVERY):  # enough new ids to trigger a prune
        st.mark_run_seen(f"n{i}", now + MAX_SKEW_MS + MAX_WINDOW_MS)
    assert st.run_seen("live"), "an id was forgotten before its own deadline: its order could be replayed"
    assert not st.run_seen("old")
    assert st.mark_run_seen("live", now + 30_000) is False


def test_pruning_follows_the_clock_it_is_given(tmp_path):
    from grapevine.node.state import SEEN_RUNS_GRACE_MS, SEEN_RUNS_PRUNE_EVERY

    st = State(tmp_path)
    st.mark_run_seen("a", 1_000, now_ms=0)
    for i in range(SEEN_RUNS_PRUNE_EVERY - 2):  # with "a", one insert short of a prune
        st.mark_run_seen(f"n{i}", 10**15, now_ms=1_000 + SEEN_RUNS_GRACE_MS)  # grace not yet over for "a"
    assert st.run_seen("a")
    st.mark_run_seen("last", 10**15, now_ms=1_001 + SEEN_RUNS_GRACE_MS)  # the 256th insert prunes
    assert not st.run_seen("a")


@pytest.mark.parametrize("keep", [0, -1, 1001, True, "5"])
def test_history_retention_is_always_bounded(tmp_path, keep):
    from grapevine.gossip.errors import ConfigError

    with pytest.raises(ConfigError, match="history_keep"):
        State(tmp_path, history_keep=keep)


def test_default_history_is_bounded(tmp_path):
    from grapevine.node.state import HISTORY_KEEP_DEFAULT

    st = State(tmp_path)
    st.put_items([(_item("bundle/a", w), w, None) for w in range(1, HISTORY_KEEP_DEFAULT + 6)])
    hist = st.history("bundle/a")
    assert len(hist) == HISTORY_KEEP_DEFAULT and hist[-1].current
    assert hist[0].version.wall_ms == 6


def test_keeping_one_version_keeps_the_live_one(tmp_path):
    st = State(tmp_path, history_keep=1)
    st.put_items([(_item("bundle/a", 5, b"five"), 1, None)])
    st.put_items([(_item("bundle/a", 3, b"late"), 2, None)])  # older, arriving late
    assert [i.payload for i in st.load_items()] == [b"five"]
    assert [h.version.wall_ms for h in st.history("bundle/a")] == [5]
