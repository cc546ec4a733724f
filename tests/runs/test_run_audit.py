"""The run audit trail in the node's SQLite store: rows as `history --runs` prints them, bounded retention."""

from __future__ import annotations

from grapevine.node.state import State

DAY_MS = 86_400_000
NOW = 1_700_000_000_000


def row(i: int, started_ms: int, refused: str | None = None) -> dict:
    return {"order": f"{i:032x}", "operator": "op1", "command": f"echo {i}", "selector": "role=web",
            "origin": "o@127.0.0.1:1", "started_ms": started_ms, "duration_ms": None if refused else 5,
            "exit_code": None if refused else 0, "refused": refused}


def test_rows_come_back_newest_first_with_the_stable_fields_and_survive_a_reopen(tmp_path):
    st = State(tmp_path)
    st.record_run(row(1, NOW), keep_rows=100, keep_ms=30 * DAY_MS, now_ms=NOW)
    st.record_run(row(2, NOW + 1, refused="Expired"), keep_rows=100, keep_ms=30 * DAY_MS, now_ms=NOW + 1)
    st.close()
    rows = State(tmp_path).run_history(10)
    assert [r["order"] for r in rows] == [f"{2:032x}", f"{1:032x}"]
    assert rows[0] == row(2, NOW + 1, refused="Expired")
    assert set(rows[1]) == {"order", "operator", "command", "selector", "origin", "started_ms", "duration_ms",
                            "exit_code", "refused"}


def test_retention_keeps_at_most_the_configured_rows_and_days(tmp_path):
    st = State(tmp_path)
    every = State.RUN_AUDIT_PRUNE_EVERY
    for i in range(1000):
        st.record_run(row(i, NOW + i), keep_rows=100, keep_ms=30 * DAY_MS, now_ms=NOW + i)
    held = st.run_history(10_000)
    assert 100 <= len(held) <= 100 + every
    assert held[0]["order"] == f"{999:032x}"  # the newest is always kept
    # a month later, one more row: everything older than the window goes
    later = NOW + 31 * DAY_MS
    for i in range(every):
        st.record_run(row(5000 + i, later + i), keep_rows=100, keep_ms=30 * DAY_MS, now_ms=later + i)
    assert all(r["started_ms"] >= later for r in st.run_history(10_000))
