"""The sender's complex obs file jobs: one row per file name in its SQLite state, written with the checkpoint.

When publish's batch holding an obs that names a file is confirmed, the job is written in the same SQLite
transaction as the checkpoint that passes the obs (checkpoint.save_all): a crash before it re-reads the obs and
writes the job then; after it, the job survives any kill. The file lane (file_lane.py) takes jobs in order and
records each chunk the broker confirmed, so a restart goes on from the last confirmed chunk.

States: queued (not read yet) → sending → sent; missing (not in the folder yet: OpenMRS writes the file next to the
row; tried again with backoff, counted); refused (a name that would leave the folder: never opened); gone (missing,
and its obs was deleted or names another file at the site now: central is told, so the obs waiting there for it
does not wait for ever).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dbsync_cli import complex_obs, wire

QUEUED, SENDING, SENT, MISSING, REFUSED, GONE = "queued", "sending", "sent", "missing", "refused", "gone"
STATES = (QUEUED, SENDING, MISSING, SENT, REFUSED, GONE)

SCHEMA = ("CREATE TABLE IF NOT EXISTS complex_file (name TEXT PRIMARY KEY, obs_uuid TEXT, state TEXT NOT NULL, "
          "sha256 TEXT, size INTEGER, chunks INTEGER, confirmed INTEGER NOT NULL DEFAULT 0, "
          "generation INTEGER NOT NULL DEFAULT 0, repair TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
          "next_try REAL NOT NULL DEFAULT 0, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL)")
INDEX = "CREATE INDEX IF NOT EXISTS complex_file_due ON complex_file (state, next_try)"


@dataclass
class Job:
    name: str
    obs_uuid: str | None
    state: str
    sha256: str | None
    size: int | None
    chunks: int | None
    confirmed: int
    generation: int
    repair: str | None
    attempts: int


def jobs_of(records: Iterable[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(file name, obs uuid) of every obs in `records` that names a file (creates, updates, initial-load rows)."""
    found: list[tuple[str, str | None]] = []
    for record in records:
        if record.get("table") != complex_obs.TABLE or record.get("op") not in (wire.CREATE, wire.UPDATE, wire.READ):
            continue
        data = record.get("data")
        name = complex_obs.file_name(data.get(complex_obs.COLUMN) if isinstance(data, dict) else None)
        if name is not None:
            found.append((name, record.get("uuid")))
    return found


def write(conn: sqlite3.Connection, jobs: list[tuple[str, str | None]], now: float, repair: str | None = None) -> None:
    """Add jobs inside the caller's transaction. A name already known for the same obs is left as it is (an obs
    voided or edited keeps its file); a name done for another obs is queued again (OpenMRS reuses a file name once
    its file was purged); with `repair` (verify --repair, resync) it is queued again whatever its state. Queued
    again means a new generation: central takes its chunks as a new file."""
    for name, obs_uuid in jobs:
        why = complex_obs.refusal(name)
        state, reason = (REFUSED, why) if why is not None else (QUEUED, None)
        if repair is None or why is not None:
            conn.execute(
                "INSERT INTO complex_file (name, obs_uuid, state, reason, created, updated) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, obs_uuid = excluded.obs_uuid, confirmed = 0, "
                "sha256 = NULL, attempts = 0, next_try = 0, reason = excluded.reason, repair = NULL, "
                "generation = generation + 1, updated = excluded.updated "
                "WHERE complex_file.obs_uuid IS NOT excluded.obs_uuid AND complex_file.state IN (?, ?)",
                (name, obs_uuid, state, reason, now, now, SENT, GONE))
            continue
        conn.execute(
            "INSERT INTO complex_file (name, obs_uuid, state, repair, created, updated) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET state = excluded.state, repair = excluded.repair, confirmed = 0, "
            "sha256 = NULL, attempts = 0, next_try = 0, reason = NULL, generation = generation + 1, "
            "updated = excluded.updated", (name, obs_uuid, QUEUED, repair, now, now))


def queue_now(conn: sqlite3.Connection, jobs: list[tuple[str, str | None]], repair: str | None = None) -> None:
    """Add jobs in a transaction of their own (verify --repair and resync move no checkpoint)."""
    if not jobs:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        write(conn, jobs, time.time(), repair)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def next_due(conn: sqlite3.Connection, now: float) -> Job | None:
    """The oldest job due (a file being sent first, so a restart finishes it before it starts another)."""
    row = conn.execute("SELECT name, obs_uuid, state, sha256, size, chunks, confirmed, generation, repair, attempts "
                       "FROM complex_file WHERE state IN (?, ?, ?) AND next_try <= ? ORDER BY state = ? DESC, created "
                       "LIMIT 1", (SENDING, QUEUED, MISSING, now, SENDING)).fetchone()
    return None if row is None else Job(*row)


def start(conn: sqlite3.Connection, job: Job, sha256: str, size: int, chunks: int) -> int:
    """The file was read: sending from the last confirmed chunk, or from the first when its bytes changed since.
    Returns the chunk to send first."""
    first = job.confirmed if job.sha256 == sha256 and job.chunks == chunks else 0
    conn.execute("UPDATE complex_file SET state = ?, sha256 = ?, size = ?, chunks = ?, confirmed = ?, reason = NULL, "
                 "updated = ? WHERE name = ?", (SENDING, sha256, size, chunks, first, time.time(), job.name))
    return first


def confirmed(conn: sqlite3.Connection, name: str, generation: int, upto: int) -> None:
    """Chunks before `upto` are confirmed by the broker (one commit: a kill -9 resumes after them). Only for the
    job's `generation`: a repair or resync that queued the file again meanwhile is sent in full afterwards."""
    conn.execute("UPDATE complex_file SET confirmed = ?, updated = ? WHERE name = ? AND generation = ?",
                 (upto, time.time(), name, generation))


def finished(conn: sqlite3.Connection, name: str, generation: int) -> None:
    conn.execute("UPDATE complex_file SET state = ?, next_try = 0, updated = ? WHERE name = ? AND generation = ?",
                 (SENT, time.time(), name, generation))


def gone(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("UPDATE complex_file SET state = ?, next_try = 0, reason = ?, updated = ? WHERE name = ?",
                 (GONE, "its obs was deleted or renamed at the site before the file was read", time.time(), name))


def missing(conn: sqlite3.Connection, name: str, attempts: int, next_try: float, reason: str) -> None:
    """Not readable yet: counted, tried again at `next_try`."""
    conn.execute("UPDATE complex_file SET state = ?, attempts = ?, next_try = ?, reason = ?, updated = ? "
                 "WHERE name = ?", (MISSING, attempts, next_try, reason[:300], time.time(), name))


def counts(conn: sqlite3.Connection) -> dict[str, Any]:
    """Jobs per state, the bytes still to send, and the last missing and refused file with its reason."""
    per_state = {state: 0 for state in STATES}
    for state, count in conn.execute("SELECT state, COUNT(*) FROM complex_file GROUP BY state"):
        per_state[str(state)] = int(count)
    row = conn.execute("SELECT COALESCE(SUM(size), 0), COALESCE(SUM(CASE WHEN chunks > 0 THEN size * confirmed / "
                       "chunks ELSE 0 END), 0) FROM complex_file WHERE state = ?", (SENDING,)).fetchone()
    out: dict[str, Any] = {**per_state, "sending_bytes": int(row[0]), "sending_bytes_confirmed": int(row[1])}
    for state in (MISSING, REFUSED):
        last = conn.execute("SELECT name, reason, attempts FROM complex_file WHERE state = ? ORDER BY updated DESC "
                            "LIMIT 1", (state,)).fetchone()
        if last is not None:
            out[f"last_{state}"] = {"name": complex_obs.shown(last[0]), "reason": last[1], "attempts": last[2]}
    return out
