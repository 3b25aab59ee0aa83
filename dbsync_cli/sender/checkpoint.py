"""The sender's durable state: one SQLite file under home holding named checkpoints.

Only `publish` writes the binlog checkpoint, after the broker confirmed the data; `capture` reads it to resume.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from dbsync_cli.files import private_dir, private_file
from dbsync_cli.sender import drops, file_jobs

BINLOG = "binlog"
FAILOVER = "failover"  # the last time capture followed the site to another server by GTID (capture.py)
RESYNC_REFUSED = "resync_refused"  # central's re-sync requests the sender refused: count, last reason (resync.py)
BROKER_REFUSED = "broker_refused"  # the broker's last refusal of a batch until one is confirmed again (publish.py)
EXPORT_PART = "export_part"  # the bundle `dbsync export` is writing: file, durable length, position reached (export.py)
EXPORTED = "exported"  # the last sealed bundle: its id, file, positions and figures (export.py, dbsync status)
STATS_KEEP_SECONDS = 3600  # the rate record `dbsync status` reads: messages confirmed per batch, last hour


class CheckpointStore:
    def __init__(self, home: Path):
        private_dir(home)
        self.path = home / "state.sqlite"
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS checkpoint (name TEXT PRIMARY KEY, value BLOB NOT NULL, updated REAL NOT NULL)"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS stats (ts REAL NOT NULL, messages INTEGER NOT NULL)")
        self.conn.execute("CREATE INDEX IF NOT EXISTS stats_ts ON stats (ts)")
        # what the sender read and did not send, per reason (drops.py): written with the checkpoint past them
        self.conn.execute("CREATE TABLE IF NOT EXISTS dropped (reason TEXT PRIMARY KEY, count INTEGER NOT NULL, "
                          "last TEXT NOT NULL, last_at REAL NOT NULL)")
        # complex obs files to send (file_jobs.py): written with the checkpoint that passes their obs
        self.conn.execute(file_jobs.SCHEMA)
        self.conn.execute(file_jobs.INDEX)
        self.unsaved_messages = 0
        self.unsaved_drops: list[dict[str, Any]] = []
        self.unsaved_files: list[tuple[str, str | None]] = []
        for name in ("state.sqlite", "state.sqlite-wal", "state.sqlite-shm"):
            private_file(home / name)

    def load(self, name: str = BINLOG) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM checkpoint WHERE name=?", (name,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def updated(self, name: str = BINLOG) -> float | None:
        row = self.conn.execute("SELECT updated FROM checkpoint WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def count_sent(self, messages: int) -> None:
        """Messages the broker just confirmed: recorded with the next save(), in the same transaction."""
        self.unsaved_messages += messages

    def count_dropped(self, items: list[dict[str, Any]]) -> None:
        """Drop records (drops.py) the checkpoint is about to move past: counted by the next save(), in the same
        transaction, so a crash before it re-reads them and counts them then, never twice."""
        self.unsaved_drops.extend(items)

    def note_files(self, records: list[dict[str, Any]]) -> None:
        """A confirmed batch: the complex obs files its obs name become file jobs with the next save(), in the same
        transaction as the checkpoint that passes them (a crash before it re-reads the obs)."""
        self.unsaved_files.extend(file_jobs.jobs_of(records))

    def record_dropped(self, items: list[dict[str, Any]]) -> None:
        """Drop records of sends that move no checkpoint (verify --repair, re-sync requests): counted now."""
        if not items:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._write_drops(items, time.time())
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _write_drops(self, items: list[dict[str, Any]], now: float) -> None:
        for reason, (count, last) in drops.summary(items, now).items():
            self.conn.execute(
                "INSERT INTO dropped (reason, count, last, last_at) VALUES (?,?,?,?) ON CONFLICT(reason) DO UPDATE "
                "SET count = count + excluded.count, last = excluded.last, last_at = excluded.last_at",
                (reason, count, orjson.dumps(last).decode(), now))

    def dropped(self) -> dict[str, dict[str, Any]]:
        """Per reason: count, the last one dropped and when (epoch seconds)."""
        rows = self.conn.execute("SELECT reason, count, last, last_at FROM dropped").fetchall()
        return {reason: {"count": int(count), "last": orjson.loads(last), "last_at": float(at)}
                for reason, count, last, at in rows}

    def save(self, value: dict[str, Any], name: str = BINLOG) -> None:
        self.save_all({name: value})

    def save_all(self, values: dict[str, dict[str, Any]], forget: tuple[str, ...] = ()) -> None:
        """Several named checkpoints (and the counts waiting for them) in one transaction; `forget` deletes some."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            if self.unsaved_drops:
                self._write_drops(self.unsaved_drops, now)
            if self.unsaved_files:
                file_jobs.write(self.conn, self.unsaved_files, now)
            for name, value in values.items():
                self.conn.execute(
                    "INSERT INTO checkpoint(name, value, updated) VALUES (?,?,?) "
                    "ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                    (name, orjson.dumps(value), now),
                )
            for name in forget:
                self.conn.execute("DELETE FROM checkpoint WHERE name=?", (name,))
            if self.unsaved_messages:
                self.conn.execute("INSERT INTO stats (ts, messages) VALUES (?, ?)", (now, self.unsaved_messages))
                self.conn.execute("DELETE FROM stats WHERE ts < ?", (now - STATS_KEEP_SECONDS,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.unsaved_messages = 0
        self.unsaved_drops = []
        self.unsaved_files = []

    def note_refusal(self, kind: str | None, message: str) -> None:
        """The broker refused a batch (`kind`: disk_full, permission, …; `message`: its one line), or, with None,
        took one again: `dbsync status` names an open refusal. `since` is when this kind of refusal began."""
        if kind is None:
            self.conn.execute("DELETE FROM checkpoint WHERE name=?", (BROKER_REFUSED,))
            return
        now = time.time()
        previous = self.load(BROKER_REFUSED) or {}
        same = previous.get("kind") == kind
        value = {"kind": kind, "message": message[:500], "at": now, "since": previous["since"] if same else now,
                 "count": int(previous.get("count") or 0) + 1 if same else 1}
        self.conn.execute("INSERT INTO checkpoint(name, value, updated) VALUES (?,?,?) "
                          "ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                          (BROKER_REFUSED, orjson.dumps(value), now))

    def sent_since(self, since: float) -> int:
        """Messages confirmed since the epoch time `since` (at most STATS_KEEP_SECONDS back)."""
        row = self.conn.execute("SELECT COALESCE(SUM(messages), 0) FROM stats WHERE ts >= ?", (since,)).fetchone()
        return int(row[0])

    def clear(self, name: str = BINLOG) -> None:
        self.conn.execute("DELETE FROM checkpoint WHERE name=?", (name,))

    def close(self) -> None:
        self.conn.close()


def record_dropped(home: Path, items: list[dict[str, Any]]) -> None:
    """Count drop records of a send that moves no checkpoint (verify --repair, a re-sync request) at once."""
    if not items:
        return
    store = CheckpointStore(home)
    try:
        store.record_dropped(items)
    finally:
        store.close()
