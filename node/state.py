"""The agent's durable state: one SQLite database (WAL) in the data directory.

What it holds: the last ``history_keep`` accepted versions of every item (the
newest one per key is the live store the gossip core starts from; of two
items under one version, the one the gossip store keeps), run-order ids seen
(so an order executes at most once, across restarts too), converge reports,
which bundle version was last applied, known peers (rejoin after a restart),
and the fleet network key ring.

Every write is one committed transaction, so when a method returns the data
survives a kill -9 of the agent. Whether it also waits for the disk (survives
a power cut) is the ``fsync`` setting: "always"; "local" (the default) for
items injected here, keys and run ids, but not items that arrived from peers
(other nodes hold them too and anti-entropy brings them back after a machine
crash, so the broadcast path does not wait for a disk flush on every hop), nor
reports and known peers, which are only bookkeeping; "never". The daemon calls
``put_items`` before it acknowledges or forwards what it accepted. The file
is created with mode 0600 because it holds the network keys.

All methods run on the event-loop thread; none of them is slow enough to
matter (small rows, indexed lookups).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from grapevine.gossip.errors import ConfigError
from grapevine.gossip.item import SignedItem, Version

from .config import HISTORY_KEEP_DEFAULT, HISTORY_KEEP_MAX, check_history_keep  # noqa: F401  (re-exported)

DB_NAME = "state.db"
FSYNC_MODES = ("always", "local", "never")
SCHEMA_VERSION = 1
PEERS_KEEP = 512  # known peers kept for rejoining; far more than a passive view needs
SEEN_RUNS_PRUNE_EVERY = 256  # prune expired run ids every so many inserts (cheap, bounded table)
# A seen run id is forgotten only this long after its own deadline: an order
# past its deadline is refused anyway, and the margin covers this node's clock
# being stepped back (an hour covers any NTP correction worth the name).
SEEN_RUNS_GRACE_MS = 3600 * 1000
# Accepted versions kept per key (``history_keep``): every value is a bound,
# there is no "keep everything", since a peer that keeps publishing could
# otherwise grow the database without limit. 1 keeps only the live version
# (no rollback to an earlier one from this node's store); the default keeps
# enough for `history` and a rollback several versions back; the maximum
# bounds one key at about 1,000 bundles of at most 1 MiB each.

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT NOT NULL, wall INTEGER NOT NULL, counter INTEGER NOT NULL, author TEXT NOT NULL,
    data BLOB NOT NULL, accepted_ms INTEGER NOT NULL, source TEXT,
    PRIMARY KEY (key, wall, counter, author)
);
CREATE TABLE IF NOT EXISTS heads (
    key TEXT PRIMARY KEY, wall INTEGER NOT NULL, counter INTEGER NOT NULL, author TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_runs (run_id TEXT PRIMARY KEY, deadline_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, trigger TEXT NOT NULL,
    bundles TEXT NOT NULL, ok INTEGER NOT NULL, report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    bundle TEXT PRIMARY KEY, wall INTEGER NOT NULL, counter INTEGER NOT NULL, author TEXT NOT NULL,
    at_ms INTEGER NOT NULL, ok INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (node_id TEXT PRIMARY KEY, last_seen_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS netkeys (
    key_id TEXT PRIMARY KEY, key BLOB, is_primary INTEGER NOT NULL DEFAULT 0, removed INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    version: Version
    accepted_ms: int
    source: str | None
    size: int
    current: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredReport:
    id: int
    at_ms: int
    trigger: str
    bundles: list[str]
    ok: bool
    report: dict


class State:
    def __init__(
        self, data_dir: Path, *, history_keep: int = HISTORY_KEEP_DEFAULT, reports_keep: int = 200, fsync: str = "local"
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError(f"fsync: {fsync!r} must be one of {', '.join(FSYNC_MODES)}")
        check_history_keep(history_keep)
        self.fsync = fsync
        self.path = Path(data_dir) / DB_NAME
        self.history_keep = history_keep
        self.reports_keep = reports_keep
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"data_dir: cannot open state database {self.path}: {exc}") from None
        self.db.execute("PRAGMA journal_mode=WAL")
        self._synced: bool | None = None  # the connection's current synchronous setting
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise ConfigError(f"state database {self.path} has schema {row[0]}, this agent knows {SCHEMA_VERSION}")
        self._run_inserts = 0

    def close(self) -> None:
        self.db.close()

    # -- items ----------------------------------------------------------
    def put_items(self, accepted: Iterable[tuple[SignedItem, int, str | None]], *, replicated: bool = False) -> int:
        """Record accepted items (item, accepted_ms, source) in one transaction; returns how many.

        ``replicated``: every item came from a peer, so other copies exist; with
        fsync "local" such a commit does not wait for the disk.
        """
        rows = list(accepted)
        if not rows:
            return 0
        with self._tx(sync=self.fsync == "always" or (self.fsync == "local" and not replicated)):
            for item, at_ms, source in rows:
                self._put_one(item, at_ms, source)
        return len(rows)

    def _put_one(self, item: SignedItem, at_ms: int, source: str | None) -> None:
        """Store one accepted item; the head moves only to a winner, as in the in-memory store.

        Rows are keyed by version, so two different items under one version
        (a rare tie) share a row: the one with the greater digest, the same
        rule as ``gossip.store.is_newer``, takes it, and a loser arriving
        after the winner changes nothing. Without this the first one stored
        came back live after a restart even when it had lost the tie.
        """
        v = item.version
        data = item.encode()
        row = self.db.execute(
            "SELECT data FROM items WHERE key=? AND wall=? AND counter=? AND author=?",
            (item.key, v.wall_ms, v.counter, v.author),
        ).fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO items (key, wall, counter, author, data, accepted_ms, source) VALUES (?,?,?,?,?,?,?)",
                (item.key, v.wall_ms, v.counter, v.author, data, at_ms, source),
            )
        elif bytes(row[0]) != data:
            if not item.digest() > SignedItem.decode(bytes(row[0])).digest():
                return  # the stored item under this version wins the tie
            self.db.execute(
                "UPDATE items SET data=?, accepted_ms=?, source=? WHERE key=? AND wall=? AND counter=? AND author=?",
                (data, at_ms, source, item.key, v.wall_ms, v.counter, v.author),
            )
        head = self.db.execute("SELECT wall, counter, author FROM heads WHERE key=?", (item.key,)).fetchone()
        if head is None or Version(*head) < v:
            self.db.execute(
                "INSERT OR REPLACE INTO heads (key, wall, counter, author) VALUES (?,?,?,?)",
                (item.key, v.wall_ms, v.counter, v.author),
            )
        self.db.execute(
            "DELETE FROM items WHERE key=? AND rowid NOT IN (SELECT rowid FROM items WHERE key=?"
            " ORDER BY wall DESC, counter DESC, author DESC LIMIT ?)",
            (item.key, item.key, self.history_keep),
        )

    def load_items(self) -> list[SignedItem]:
        """The newest accepted version of every key."""
        rows = self.db.execute(
            "SELECT i.data FROM heads h JOIN items i ON i.key=h.key AND i.wall=h.wall"
            " AND i.counter=h.counter AND i.author=h.author ORDER BY h.key"
        ).fetchall()
        return [SignedItem.decode(r[0]) for r in rows]

    def item_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM heads").fetchone()[0]

    def history(self, key: str) -> list[HistoryEntry]:
        head = self.db.execute("SELECT wall, counter, author FROM heads WHERE key=?", (key,)).fetchone()
        rows = self.db.execute(
            "SELECT wall, counter, author, accepted_ms, source, length(data) FROM items WHERE key=?"
            " ORDER BY wall, counter, author",
            (key,),
        ).fetchall()
        return [
            HistoryEntry(
                version=Version(r[0], r[1], r[2]), accepted_ms=r[3], source=r[4], size=r[5],
                current=head is not None and tuple(head) == (r[0], r[1], r[2]),
            )
            for r in rows
        ]

    def get_version(self, key: str, version: Version) -> SignedItem | None:
        row = self.db.execute(
            "SELECT data FROM items WHERE key=? AND wall=? AND counter=? AND author=?",
            (key, version.wall_ms, version.counter, version.author),
        ).fetchone()
        return SignedItem.decode(row[0]) if row else None

    # -- run orders -----------------------------------------------------
    def mark_run_seen(self, run_id: str, deadline_ms: int, *, now_ms: int | None = None) -> bool:
        """Remember a run-order id until its deadline; True if it was new (durable on return).

        Every so many inserts, ids whose own deadline passed more than
        ``SEEN_RUNS_GRACE_MS`` before ``now_ms`` (default: the wall clock)
        are forgotten; an id is never forgotten before its own deadline,
        whatever the deadline of the order being marked.
        """
        with self._tx():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO seen_runs (run_id, deadline_ms) VALUES (?, ?)", (run_id, int(deadline_ms))
            )
            new = cur.rowcount == 1
        self._run_inserts += 1
        if self._run_inserts % SEEN_RUNS_PRUNE_EVERY == 0:
            now = time.time_ns() // 1_000_000 if now_ms is None else int(now_ms)
            self.prune_runs(now - SEEN_RUNS_GRACE_MS)
        return new

    def run_seen(self, run_id: str) -> bool:
        """Whether a run-order id was marked seen (and not yet pruned)."""
        return self.db.execute("SELECT 1 FROM seen_runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def prune_runs(self, before_ms: int) -> int:
        """Forget run ids whose deadline passed before ``before_ms`` (expired orders are refused anyway)."""
        with self._tx(sync=self.fsync == "always"):
            return self.db.execute("DELETE FROM seen_runs WHERE deadline_ms < ?", (before_ms,)).rowcount

    # -- converge reports and applied versions --------------------------
    def add_report(self, *, at_ms: int, trigger: str, bundles: list[str], ok: bool, report: dict) -> int:
        with self._tx(sync=self.fsync == "always"):
            cur = self.db.execute(
                "INSERT INTO reports (at_ms, trigger, bundles, ok, report) VALUES (?,?,?,?,?)",
                (at_ms, trigger, json.dumps(bundles), int(ok), json.dumps(report, sort_keys=True, default=str)),
            )
            self.db.execute(
                "DELETE FROM reports WHERE id NOT IN (SELECT id FROM reports ORDER BY id DESC LIMIT ?)",
                (self.reports_keep,),
            )
        return int(cur.lastrowid)

    def reports(self, limit: int = 20) -> list[StoredReport]:
        rows = self.db.execute(
            "SELECT id, at_ms, trigger, bundles, ok, report FROM reports ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [
            StoredReport(id=r[0], at_ms=r[1], trigger=r[2], bundles=json.loads(r[3]), ok=bool(r[4]), report=json.loads(r[5]))
            for r in rows
        ]

    def set_applied(self, versions: dict[str, Version], at_ms: int, ok: bool) -> None:
        with self._tx(sync=self.fsync == "always"):
            for name, v in versions.items():
                self.db.execute(
                    "INSERT OR REPLACE INTO applied (bundle, wall, counter, author, at_ms, ok) VALUES (?,?,?,?,?,?)",
                    (name, v.wall_ms, v.counter, v.author, at_ms, int(ok)),
                )

    def applied(self) -> dict[str, tuple[Version, int, bool]]:
        rows = self.db.execute("SELECT bundle, wall, counter, author, at_ms, ok FROM applied").fetchall()
        return {r[0]: (Version(r[1], r[2], r[3]), r[4], bool(r[5])) for r in rows}

    # -- peers ----------------------------------------------------------
    def touch_peers(self, node_ids: Iterable[str], now_ms: int) -> None:
        ids = list(node_ids)
        if not ids:
            return
        with self._tx(sync=self.fsync == "always"):
            self.db.executemany(
                "INSERT OR REPLACE INTO peers (node_id, last_seen_ms) VALUES (?, ?)", [(n, now_ms) for n in ids]
            )
            self.db.execute(
                "DELETE FROM peers WHERE node_id NOT IN (SELECT node_id FROM peers ORDER BY last_seen_ms DESC LIMIT ?)",
                (PEERS_KEEP,),
            )

    def known_peers(self, limit: int = 64) -> list[str]:
        rows = self.db.execute("SELECT node_id FROM peers ORDER BY last_seen_ms DESC LIMIT ?", (limit,)).fetchall()
        return [r[0] for r in rows]

    def forget_peer(self, node_id: str) -> None:
        with self._tx(sync=self.fsync == "always"):
            self.db.execute("DELETE FROM peers WHERE node_id=?", (node_id,))

    # -- network keys ---------------------------------------------------
    def netkeys(self) -> tuple[list[bytes], str | None, set[str]]:
        """(installed keys, primary key id, removed key ids)."""
        rows = self.db.execute("SELECT key_id, key, is_primary, removed FROM netkeys").fetchall()
        keys = [bytes(r[1]) for r in rows if not r[3] and r[1] is not None]
        primary = next((r[0] for r in rows if r[2] and not r[3]), None)
        removed = {r[0] for r in rows if r[3]}
        return keys, primary, removed

    def save_netkeys(self, keys: dict[str, bytes], primary: str | None, removed: Iterable[str] = ()) -> None:
        with self._tx():
            self.db.execute("DELETE FROM netkeys")
            for kid, key in keys.items():
                self.db.execute(
                    "INSERT INTO netkeys (key_id, key, is_primary, removed) VALUES (?, ?, ?, 0)",
                    (kid, key, int(kid == primary)),
                )
            for kid in removed:
                if kid not in keys:
                    self.db.execute("INSERT INTO netkeys (key_id, key, is_primary, removed) VALUES (?, NULL, 0, 1)", (kid,))

    # -- meta -----------------------------------------------------------
    def get_meta(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else None

    def set_meta(self, k: str, v: str) -> None:
        with self._tx():
            self.db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (k, v))

    def _tx(self, sync: bool | None = None) -> "_Tx":
        """A transaction; ``sync`` None: wait for the disk unless fsync is "never" (node state: keys, run ids)."""
        want = self.fsync != "never" if sync is None else sync
        if want != self._synced:
            # FULL: a commit is on disk when it returns; NORMAL (WAL): it survives the process, not the machine
            self.db.execute(f"PRAGMA synchronous={'FULL' if want else 'NORMAL'}")
            self._synced = want
        return _Tx(self.db)

    # -- run audit trail (`grapevine history --runs`) ----------------------
    RUN_AUDIT_PRUNE_EVERY = 64  # inserts between two retention passes (a pass reads up to keep_rows index entries)
    RUN_AUDIT_SCHEMA = """
    CREATE TABLE IF NOT EXISTS run_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, operator TEXT NOT NULL, command TEXT NOT NULL,
        selector TEXT NOT NULL, origin TEXT NOT NULL, started_ms INTEGER NOT NULL, duration_ms INTEGER,
        exit_code INTEGER, refused TEXT
    );
    CREATE INDEX IF NOT EXISTS run_audit_started ON run_audit (started_ms);
    """

    def record_run(self, row: dict, *, keep_rows: int, keep_ms: int, now_ms: int) -> None:
        """Record one run order this node executed or refused.

        Rows older than ``keep_ms`` and beyond the newest ``keep_rows`` are
        dropped every ``RUN_AUDIT_PRUNE_EVERY`` inserts, so the table never
        holds more than ``keep_rows + RUN_AUDIT_PRUNE_EVERY`` rows.
        """
        if not getattr(self, "_run_audit_ready", False):
            self.db.executescript(self.RUN_AUDIT_SCHEMA)
            self._run_audit_ready = True
        with self._tx(sync=self.fsync == "always"):  # bookkeeping, like reports
            self.db.execute(
                "INSERT INTO run_audit (run_id, operator, command, selector, origin, started_ms, duration_ms,"
                " exit_code, refused) VALUES (?,?,?,?,?,?,?,?,?)",
                (row["order"], row["operator"], row["command"], row["selector"], row["origin"], int(row["started_ms"]),
                 row.get("duration_ms"), row.get("exit_code"), row.get("refused")),
            )
            self._run_audit_inserts = getattr(self, "_run_audit_inserts", 0) + 1
            if self._run_audit_inserts % self.RUN_AUDIT_PRUNE_EVERY == 1:  # the first insert, then every so many
                self.db.execute("DELETE FROM run_audit WHERE started_ms < ?", (now_ms - keep_ms,))
                self.db.execute(
                    "DELETE FROM run_audit WHERE id <= (SELECT id FROM run_audit ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (max(0, keep_rows),),
                )

    def run_history(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` audit rows, newest first, in the form `history --runs --json` prints."""
        if not getattr(self, "_run_audit_ready", False):
            self.db.executescript(self.RUN_AUDIT_SCHEMA)
            self._run_audit_ready = True
        rows = self.db.execute(
            "SELECT run_id, operator, command, selector, origin, started_ms, duration_ms, exit_code, refused"
            " FROM run_audit ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        keys = ("order", "operator", "command", "selector", "origin", "started_ms", "duration_ms", "exit_code", "refused")
        return [dict(zip(keys, r)) for r in rows]

    # -- node-key pins (node/pins.py): a node name -> the node key first seen for it --------
    def _pins_table(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS node_pins (name TEXT PRIMARY KEY, key BLOB NOT NULL, "
                        "first_seen_ms INTEGER NOT NULL, node_id TEXT NOT NULL)")

    def node_pins(self) -> dict[str, tuple[bytes, int, str]]:
        """name -> (public key, first seen ms, node id it was first seen as)."""
        self._pins_table()
        rows = self.db.execute("SELECT name, key, first_seen_ms, node_id FROM node_pins").fetchall()
        return {r[0]: (bytes(r[1]), r[2], r[3]) for r in rows}

    def pin_node(self, name: str, key: bytes, now_ms: int, node_id: str) -> None:
        # no wait for the disk: new names arrive at a member's pace, and a pin lost to a power cut is
        # only taken again on the next sight
        self._pins_table()
        with self._tx(sync=False):
            self.db.execute("INSERT OR IGNORE INTO node_pins (name, key, first_seen_ms, node_id) VALUES (?, ?, ?, ?)",
                            (name, key, now_ms, node_id))

    def unpin_node(self, name: str) -> bool:
        self._pins_table()
        with self._tx():
            return self.db.execute("DELETE FROM node_pins WHERE name = ?", (name,)).rowcount > 0




class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error (autocommit connection)."""

    __slots__ = ("db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
