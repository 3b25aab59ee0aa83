"""Seeded, repeatable clinical activity at one OpenMRS site, written fast (multi-row INSERTs, few round trips).

`run_workload` is pure (rows go to a `Sink`), so repeatability can be tested without a database; `generate` runs it
against a database. The random stream is seeded with "<site>:<seed>": the same seed at two sites gives different
uuids, and the same seed and site in two fresh databases give identical rows (ids included).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import pymysql
from pymysql.converters import escape_item, escape_string

from dbsync_cli.db import DbParams
from devtools.workload import metadata as md
from devtools.workload.book import TABLES, Book, Sink
from devtools.workload.create import Work, create_patient, create_staff
from devtools.workload.mutate import Mutator
from devtools.workload.truth import GroundTruth, SchemaInfo, _q


def _literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if type(v) is str:
        return "'" + escape_string(v) + "'"
    if type(v) is int:
        return str(v)
    return escape_item(v, "utf8mb4")


_COMMIT = ("COMMIT", None)


class DbSink:
    """Executes the operations; commits at unit-of-work boundaries once `transaction_rows` rows are pending
    (0: only when the generator commits, i.e. the whole create phase is one transaction).

    Statements run in order on a writer thread, so that building the next batch overlaps the server's work on the
    previous one (about a third faster); `close()` waits for it and re-raises its error."""

    def __init__(self, conn: pymysql.connections.Connection, *, batch_rows: int, transaction_rows: int) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.batch_rows = max(1, batch_rows)
        self.transaction_rows = transaction_rows
        self.pending = 0
        self.transactions = 0
        self.statements = 0
        self._queue: queue.Queue[tuple[str, list[Any] | None] | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="workload-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                if item is _COMMIT:
                    self.conn.commit()
                else:
                    self.cur.execute(*item)
            except BaseException as exc:  # handed to the generating thread
                self._error = exc

    def _submit(self, sql: str, params: list[Any] | None = None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((sql, params))
        self.statements += 1

    def close(self) -> None:
        """Wait until every statement ran; raise the first error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _chunks(self, rows: Sequence[Any]) -> list[Sequence[Any]]:
        return [rows[i:i + self.batch_rows] for i in range(0, len(rows), self.batch_rows)]

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """One multi-row INSERT per chunk, literals built here (≈2× faster than PyMySQL's generic escaping)."""
        head = f"INSERT INTO {_q(table)} ({', '.join(_q(c) for c in columns)}) VALUES "
        for chunk in self._chunks(rows):
            self._submit(head + ",".join("(" + ",".join(map(_literal, r)) + ")" for r in chunk))
        self.pending += len(rows)

    def update(self, table: str, key: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """One statement per chunk: a plain SET when every row gets the same values, else CASE key WHEN …"""
        for chunk in self._chunks(rows):
            ids = [r[0] for r in chunk]
            where = f"{_q(key)} IN ({', '.join(['%s'] * len(ids))})"
            if all(r[1:] == chunk[0][1:] for r in chunk):
                sets = ", ".join(f"{_q(c)} = %s" for c in columns)
                params: list[Any] = [*chunk[0][1:], *ids]
            else:
                parts, params = [], []
                for i, c in enumerate(columns, 1):
                    parts.append(f"{_q(c)} = CASE {_q(key)} " + " ".join(["WHEN %s THEN %s"] * len(chunk)) + " END")
                    for r in chunk:
                        params += [r[0], r[i]]
                sets = ", ".join(parts)
                params += ids
            self._submit(f"UPDATE {_q(table)} SET {sets} WHERE {where}", params)
        self.pending += len(rows)

    def delete(self, table: str, key: str, ids: list[int]) -> None:
        """Highest ids first: within obs, group members and newer versions go before what they point to."""
        for chunk in self._chunks(sorted(ids, reverse=True)):
            self._submit(f"DELETE FROM {_q(table)} WHERE {_q(key)} IN ({', '.join(['%s'] * len(chunk))}) "
                         f"ORDER BY {_q(key)} DESC", list(chunk))
        self.pending += len(ids)

    def boundary(self) -> None:
        if self.transaction_rows > 0 and self.pending >= self.transaction_rows:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            if self._error is not None:
                raise self._error
            self._queue.put(_COMMIT)
            self.transactions += 1
        self.pending = 0


def run_workload(sink: Sink, *, seed: int, site: str = "site1", patients: int = 100, visits_per_patient: float = 3,
                 encounters_per_visit: float = 2, obs_per_encounter: float = 8, mutations: float = 0.2, staff: int = 5,
                 flush_rows: int = 1000, next_ids: dict[str, int] | None = None,
                 location: int | None = None) -> GroundTruth:
    """Create staff and patients, then mutate; every operation goes to `sink`. Returns the ground truth."""
    params = {"patients": patients, "visits_per_patient": visits_per_patient, "staff": staff,
              "encounters_per_visit": encounters_per_visit, "obs_per_encounter": obs_per_encounter,
              "mutations": mutations}
    truth = GroundTruth(site=site, seed=seed, params=params)
    book = Book(truth, next_ids or {}, sink)
    w = Work(rng=random.Random(f"{site}:{seed}"), book=book, site=site,
             location=location or md.SITE_LOCATIONS.get(site, md.LOCATION_CENTRAL),
             visits=visits_per_patient, encounters=encounters_per_visit, obs=obs_per_encounter)
    t0 = time.perf_counter()
    create_staff(w, staff)
    for _ in range(patients):
        create_patient(w)
        if book.pending_rows >= flush_rows:
            book.flush()
    book.flush()
    sink.commit()
    created, t1 = book.rows_written, time.perf_counter()
    Mutator(w, mutations).run()
    t2 = time.perf_counter()
    truth.stats = {"rows_created": created, "create_seconds": round(t1 - t0, 3),
                   "rows_mutated": book.rows_written - created, "mutate_seconds": round(t2 - t1, 3),
                   "rows_per_second": round(book.rows_written / max(t2 - t0, 1e-9))}
    return truth


def next_ids(conn: pymysql.connections.Connection) -> dict[str, int]:
    """First free primary key of every table the generator writes (ids are assigned client-side to batch inserts)."""
    sql = " UNION ALL ".join(f"SELECT '{t}', COALESCE(MAX({_q(pk)}), 0) + 1 FROM {_q(t)}"
                             for t, (pk, _c, _r) in TABLES.items())
    with conn.cursor() as cur:
        cur.execute(sql)
        return {t: int(n) for t, n in cur.fetchall()}


def generate(db: DbParams, *, seed: int, patients: int = 100, visits_per_patient: float = 3,
             encounters_per_visit: float = 2, obs_per_encounter: float = 8, mutations: float = 0.2,
             site: str = "site1", staff: int = 5, batch_rows: int = 1000, transaction_rows: int = 1000,
             location: int | None = None) -> GroundTruth:
    """Write a seeded workload into `db` (an OpenMRS database with the test metadata) and return its ground truth.

    `batch_rows` bounds rows per INSERT statement; `transaction_rows` rows per transaction (0 = the whole create
    phase in one transaction). The database must not be written by anyone else meanwhile (ids are assigned here).
    """
    conn = db.connect(autocommit=False)
    sink: DbSink | None = None
    try:
        schema = SchemaInfo(conn, db.database or "")
        baseline = {t: sorted(schema.id_to_uuid(t).values()) for t in TABLES}
        started = time.perf_counter()
        sink = DbSink(conn, batch_rows=batch_rows, transaction_rows=transaction_rows)
        flush = min(batch_rows, transaction_rows) if transaction_rows > 0 else batch_rows
        truth = run_workload(sink, seed=seed, site=site, patients=patients, visits_per_patient=visits_per_patient,
                             encounters_per_visit=encounters_per_visit, obs_per_encounter=obs_per_encounter,
                             mutations=mutations, staff=staff, flush_rows=flush, next_ids=next_ids(conn),
                             location=location)
        sink.commit()
        sink.close()
        truth.baseline = {t: u for t, u in baseline.items() if u}
        elapsed = time.perf_counter() - started
        rows = truth.stats["rows_created"] + truth.stats["rows_mutated"]
        truth.stats.update(transactions=sink.transactions, statements=sink.statements, seconds=round(elapsed, 3),
                           rows_per_second=round(rows / max(elapsed, 1e-9)))
        return truth
    except BaseException:
        if sink is not None:
            try:
                sink.close()
            except BaseException:  # the original error is the one to report
                pass
        conn.rollback()
        raise
    finally:
        conn.close()
