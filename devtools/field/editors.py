"""OpenMRS users at central: a thread that edits, voids and un-voids rows dbsync has written, as OpenMRS does.

Central is not read-only in the field: clerks fix names, void wrong identifiers, un-void them again. These edits
are what the receiver's conflict rule must notice. Each edit is one short transaction, and every committed edit is
written to a journal (in memory, and as NDJSON lines in ``journal_path`` for an oracle in another process), so
that a test can tell which central changes were people's and must survive a sync.

obs rows are only voided and un-voided: OpenMRS never edits an obs in place (it voids it and writes a new one).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pymysql

from dbsync_cli.db import DbParams

#: a new value for a column, from the row as it is now
NewValue = Callable[[random.Random, Any], Any]

_NAMES = ("Ana", "Bento", "Celia", "Dinis", "Elsa", "Fatima", "Gaspar", "Helena", "Ines", "Joao", "Lurdes", "Mateus")


def _other_gender(rng: random.Random, current: Any) -> str:
    return "F" if current == "M" else "M"


def _flag(rng: random.Random, current: Any) -> int:
    return 0 if current else 1


def _name(rng: random.Random, current: Any) -> str:
    return f"{rng.choice(_NAMES)}{rng.randrange(1000)}"


def _identifier(rng: random.Random, current: Any) -> str:
    return f"ED-{rng.randrange(10**8):08d}"


def _moved(rng: random.Random, current: Any) -> Any:
    return current + dt.timedelta(minutes=rng.choice((-1, 1)) * rng.randint(1, 240)) if current else current


#: the clinical columns an edit may change, and how; a table missing here is only voided and un-voided
EDITABLE: dict[str, dict[str, NewValue]] = {
    "person": {"gender": _other_gender, "birthdate_estimated": _flag, "dead": _flag},
    "person_name": {"given_name": _name, "middle_name": _name, "family_name": _name},
    "patient_identifier": {"identifier": _identifier, "preferred": _flag},
    "encounter": {"encounter_datetime": _moved},
}
DEFAULT_TABLES = ("person", "person_name", "patient_identifier", "obs", "encounter")
VOID_REASON = "voided at central by the field bed"
#: rows dbsync wrote as stand-ins for references that had not arrived, and the fillers those needed (never a
#: person's edit; fillers are deleted by the receiver once nothing references them)
_PLACEHOLDER = "[placeholder]"
_FILLER = "[placeholder filler]"


def _plain(value: Any) -> Any:
    """A journal value as JSON: datetimes as MySQL writes them."""
    return str(value) if isinstance(value, dt.date | dt.datetime | dt.timedelta) else value


class CentralEditors:
    """Edits rows of ``tables`` at ``rate_per_s`` (Poisson arrivals, drawn from ``seed``) until stopped.

    ``db`` is a login on central's server; ``database`` names the OpenMRS database (default: ``db.database``), or
    is the whole DbParams of it.
    ``user_id`` is the OpenMRS user the edits are made as (changed_by, voided_by).
    """

    def __init__(self, db: DbParams, database: str | DbParams | None = None, *, seed: int,
                 tables: Sequence[str] = DEFAULT_TABLES, rate_per_s: float = 5.0, journal_path: Path | None = None,
                 user_id: int = 1, refresh_s: float = 10.0, candidates_per_table: int = 2000) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        if isinstance(database, DbParams):
            self.db = database
        else:
            self.db = db.with_database(database or db.database)
        if not self.db.database:
            raise ValueError("CentralEditors needs a database name")
        self.tables = tuple(tables)
        self.rate_per_s = rate_per_s
        self.journal_path = journal_path
        self.user_id = user_id
        self.refresh_s = refresh_s
        self.candidates_per_table = candidates_per_table
        self.last_error: str | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._journal: list[dict[str, Any]] = []
        self._counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: pymysql.connections.Connection | None = None
        self._columns: dict[str, set[str]] = {}
        self._keys: dict[str, str] = {}
        self._candidates: dict[str, list[str]] = {}
        self._refreshed_at = -1e9

    # -- what a test reads ---------------------------------------------------------------------------------
    def journal(self) -> list[dict[str, Any]]:
        """Every committed edit so far, oldest first (copies)."""
        with self._lock:
            return [dict(entry) for entry in self._journal]

    def counts(self) -> dict[str, int]:
        """Committed edits by kind ("edit", "void", "unvoid") and "failed" (rolled back: a lock wait, a lost link)."""
        with self._lock:
            return dict(self._counts)

    # -- running -------------------------------------------------------------------------------------------
    def start(self) -> CentralEditors:
        if self._thread is not None:
            raise RuntimeError("the editors already run")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="central-editors", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the edit under way, then stop. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self._disconnect()

    def __enter__(self) -> CentralEditors:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self._rng.expovariate(self.rate_per_s)):
            self.edit_one()

    def edit_one(self) -> dict[str, Any] | None:
        """One edit of a row picked at random, in its own transaction; its journal entry (None: nothing to edit,
        or it failed and was rolled back)."""
        try:
            conn = self._connection()
            self._refresh(conn)
            tables = [t for t in self.tables if self._candidates.get(t)]
            if not tables:
                return None
            table = self._rng.choice(tables)
            entry = self._edit(conn, table, self._rng.choice(self._candidates[table]))
        except pymysql.MySQLError as exc:
            self._disconnect()
            with self._lock:
                self._counts["failed"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            return None
        if entry is not None:
            self._record(entry)
        return entry

    # -- the SQL -------------------------------------------------------------------------------------------
    def _connection(self) -> pymysql.connections.Connection:
        if self._conn is None:
            self._conn = self.db.connect(autocommit=False)
            with self._conn.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 5")  # a receiver holding the row: give up soon
            self._learn(self._conn)
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except pymysql.MySQLError:
                pass

    def _learn(self, conn: pymysql.connections.Connection) -> None:
        """Columns and primary key of each table, once: what exists decides what an edit writes."""
        if self._columns:
            return
        with conn.cursor() as cur:
            for table in self.tables:
                cur.execute("SELECT COLUMN_NAME, COLUMN_KEY FROM information_schema.COLUMNS "
                            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (self.db.database, table))
                rows = cur.fetchall()
                columns = {name for name, _key in rows}
                if not {"uuid", "voided", "voided_by", "date_voided", "void_reason"} <= columns:
                    raise ValueError(f"{table}: not an OpenMRS data table with uuid and void columns")
                self._columns[table] = columns
                self._keys[table] = next(name for name, key in rows if key == "PRI")
        conn.commit()

    def _refresh(self, conn: pymysql.connections.Connection) -> None:
        """The rows to pick from: the newest of each table (what a sync just brought), now and then again."""
        if time.monotonic() - self._refreshed_at < self.refresh_s:
            return
        with conn.cursor() as cur:
            for table in self.tables:
                cur.execute(f"SELECT uuid FROM `{table}` WHERE void_reason IS NULL OR void_reason NOT IN (%s, %s) "
                            f"ORDER BY `{self._keys[table]}` DESC LIMIT %s",
                            (_PLACEHOLDER, _FILLER, self.candidates_per_table))
                self._candidates[table] = [row[0] for row in cur.fetchall()]
        conn.commit()
        self._refreshed_at = time.monotonic()

    def _edit(self, conn: pymysql.connections.Connection, table: str, uuid: str) -> dict[str, Any] | None:
        columns = self._columns[table]
        editable = {c: f for c, f in EDITABLE.get(table, {}).items() if c in columns}
        read = ["voided", *editable]
        with conn.cursor() as cur:
            cur.execute(f"SELECT {', '.join(f'`{c}`' for c in read)}, NOW() FROM `{table}` WHERE uuid = %s "
                        "FOR UPDATE", (uuid,))
            row = cur.fetchone()
            if row is None:  # gone since the candidates were read
                conn.rollback()
                return None
            current = dict(zip(read, row[:-1], strict=True))
            now = row[-1]
            if current["voided"]:
                kind = "unvoid"
                values: dict[str, Any] = {"voided": 0, "voided_by": None, "date_voided": None, "void_reason": None}
            elif editable and self._rng.random() < 0.7:
                kind = "edit"
                column = self._rng.choice(sorted(editable))
                values = {column: editable[column](self._rng, current[column])}
            else:
                kind = "void"
                values = {"voided": 1, "voided_by": self.user_id, "date_voided": now, "void_reason": VOID_REASON}
            if kind != "void" and "date_changed" in columns:
                values.update(date_changed=now, changed_by=self.user_id)
            assignments = ", ".join(f"`{c}` = %s" for c in values)
            cur.execute(f"UPDATE `{table}` SET {assignments} WHERE uuid = %s", (*values.values(), uuid))
        conn.commit()
        return {"table": table, "uuid": uuid, "kind": kind, "columns": sorted(values),
                "values": {c: _plain(v) for c, v in values.items()},
                "committed_at": dt.datetime.now(dt.UTC).isoformat()}

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._journal.append(entry)
            self._counts[entry["kind"]] += 1
            if self.journal_path is not None:
                with open(self.journal_path, "a", encoding="utf-8") as out:
                    out.write(json.dumps(entry, sort_keys=True) + "\n")
