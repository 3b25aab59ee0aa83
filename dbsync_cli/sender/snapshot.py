"""Initial load: existing rows as `r` events from one consistent snapshot, with the binlog position that matches it.

MariaDB gives the exact position with `START TRANSACTION WITH CONSISTENT SNAPSHOT` + `binlog_snapshot_*`, so no
global read lock (and no RELOAD privilege) is needed. An interrupted load resumes per table after the last primary
key confirmed downstream and keeps the original position: streaming from there replays every later change, and
enrich loads each row's current state, so the union still equals the site.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from contextlib import nullcontext
from typing import Any

import pymysql.cursors
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dbsync_cli import logs, wire
from dbsync_cli.sender import binlog, gtid, servers
from dbsync_cli.sender.binlog import CaptureSettings, Position
from dbsync_cli.sql import quote, sql

log = logging.getLogger("dbsync.snapshot")


def _primary_keys(cur: Any, database: str, tables: list[str]) -> dict[str, str]:
    cur.execute(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
        "WHERE TABLE_SCHEMA=%s AND CONSTRAINT_NAME='PRIMARY'",
        (database,),
    )
    keys: dict[str, list[str]] = {}
    for table, column in cur.fetchall():
        keys.setdefault(table, []).append(column)
    return {t: keys[t][0] for t in tables if len(keys.get(t, [])) == 1}


class Snapshot:
    """The initial load's `r` events. Each event's source carries `done` (rows of the load up to this one, counted
    across resumes) and `total` (rows in the synced tables when the load started), so the checkpoint, and with it
    `dbsync status`, knows how far a running load is; the progress bar starts where a resumed load left off."""

    def __init__(self, settings: CaptureSettings, resume: dict[str, Any] | None, epoch: str,
                 console: Console | None = None):
        self.settings = settings
        self.resume = resume
        self.epoch = epoch  # of the message ids (renewed with every new snapshot by capture)
        self.position: Position | None = None
        self.born: int | None = None  # when the snapshot position's binlog file was created
        self.gtids: str | None = None  # the GTID position of `position` (gtid.py): a failover resumes by it
        self.console = console  # the progress bar's (default: stderr's, shared with the log handler)
        self.done = 0
        self.total: int | None = None

    def _start(self, conn: Any) -> Position:
        method = servers.choose(conn, self.settings.snapshot_method)
        position = servers.open_snapshot(conn, method)
        log.info("snapshot transaction opened (%s) at binlog position %s", method, position)
        if self.resume is not None:
            # keep the original position: streaming from it covers every change made while we were down
            self.gtids = self.resume.get("gtid_pos")
            return Position(self.resume["file"], int(self.resume["pos"]))
        state = gtid.state_at(self.settings, conn, gtid.flavor_of(conn), position)
        self.gtids = None if state is None else str(state)
        return position

    def events(self) -> Generator[dict[str, Any], None, None]:
        settings = self.settings
        database = settings.db.database or ""
        conn = settings.db.connect(autocommit=False)
        try:
            self.position = self._start(conn)
            self.born = binlog.file_born(settings, self.position.file)
            with conn.cursor() as cur:
                keys = _primary_keys(cur, database, settings.tables)
            tables = [t for t in settings.tables if t in keys]
            done_before: set[str] = set()
            after_key: Any = None
            if self.resume is not None:
                current = self.resume.get("table")
                if current in tables:
                    done_before = set(tables[: tables.index(current)])
                    after_key = self.resume.get("key")
                log.info("resuming snapshot at %s after key %s (position %s)", current, after_key, self.position)
            else:
                log.info("snapshot at binlog position %s", self.position)
            resumed_total = self.resume.get("total") if self.resume is not None else None
            if isinstance(resumed_total, int):  # "when the load started": counted once, not at every resume
                self.total = resumed_total
            else:
                self.total = sum(self._totals(conn, tables, exact=settings.progress).values())
            self.done = self._done_before(conn, tables, keys, done_before, after_key)
            progress = _progress(self.console) if settings.progress else nullcontext()
            with progress as bar:
                task = bar.add_task("snapshot", total=self.total, completed=self.done) if bar else None
                for table in tables:
                    if table in done_before:
                        continue
                    start_key = after_key if self.resume is not None and table == self.resume.get("table") else None
                    for event in self._table(conn, table, keys[table], start_key):
                        yield event
                        if bar is not None and task is not None:
                            bar.update(task, completed=self.done, total=max(self.total, self.done))
                if bar is not None and task is not None:  # an estimated total ends at 100 % all the same
                    bar.update(task, completed=self.done, total=self.done)
            conn.commit()
        finally:
            conn.close()

    def _done_before(self, conn: Any, tables: list[str], keys: dict[str, str], done_before: set[str],
                     after_key: Any) -> int:
        """Rows a resumed load sent before: the checkpoint's count when it has one, else counted now."""
        if self.resume is None or self.resume.get("table") not in tables:
            return 0  # a fresh load, or the table it stopped in is no longer synced: every table goes again
        if isinstance(self.resume.get("done"), int):
            return int(self.resume["done"])
        with conn.cursor() as cur:
            done = 0
            for table in done_before:
                cur.execute(sql("SELECT COUNT(*) FROM {}", quote(table)))
                done += int(cur.fetchone()[0])
            current = self.resume.get("table")
            if current in keys and after_key is not None:
                cur.execute(sql("SELECT COUNT(*) FROM {t} WHERE {k} <= %s", t=quote(current), k=quote(keys[current])),
                            (after_key,))
                done += int(cur.fetchone()[0])
            return done

    def _totals(self, conn: Any, tables: list[str], *, exact: bool) -> dict[str, int]:
        """Rows per table: counted (for the progress bar on a terminal), else InnoDB's estimate, so that a
        supervised sender does not scan a large obs table before its first row (status shows a percent of it)."""
        with conn.cursor() as cur:
            totals = {}
            if not exact:
                cur.execute("SELECT TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
                            (self.settings.db.database,))
                estimates = {str(name): int(rows or 0) for name, rows in cur.fetchall()}
                return {table: estimates.get(table, 0) for table in tables}
            for table in tables:
                cur.execute(sql("SELECT COUNT(*) FROM {}", quote(table)))  # name from information_schema
                totals[table] = int(cur.fetchone()[0])
            return totals

    def _table(self, conn: Any, table: str, key: str, after: Any) -> Iterator[dict[str, Any]]:
        """Keyset pages by primary key, in the snapshot transaction: constant memory for any table size."""
        assert self.position is not None
        server_id = self.settings.server_id
        database = self.settings.db.database
        chunk = self.settings.chunk_rows
        while True:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                if after is None:
                    cur.execute(sql("SELECT * FROM {t} ORDER BY {k} LIMIT %s", t=quote(table), k=quote(key)), (chunk,))
                else:
                    cur.execute(sql("SELECT * FROM {t} WHERE {k} > %s ORDER BY {k} LIMIT %s", t=quote(table),
                                    k=quote(key)), (after, chunk))
                rows = cur.fetchall()
            now_ms = int(time.time() * 1000)
            secrets = self.settings.secret_columns.get(table, ())
            for row in rows:
                after = row[key]
                for column in secrets:
                    row.pop(column, None)
                self.done += 1
                yield {
                    "op": wire.READ,
                    "db": database,
                    "table": table,
                    "before": None,
                    "after": row,
                    "source": {
                        "server_id": server_id,
                        "file": self.position.file,
                        "pos": self.position.pos,
                        "row": -1,
                        "gtid": None,
                        "ts_ms": now_ms,
                        "snapshot": True,
                        "table": table,
                        "key": after,
                        "epoch": self.epoch,
                        "born": self.born,
                        "gtid_pos": self.gtids,
                        "done": self.done,
                        "total": self.total,
                    },
                }
            if len(rows) < chunk:
                return


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} rows/s")


def _progress(console: Console | None = None) -> Progress:
    """Rows done / total, rate and ETA on stderr, only when stderr is a terminal (stdout carries the data). The
    console is the one the log handler writes to, so log lines print above the bar, not into it."""
    console = console or logs.stderr_console()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
        TimeRemainingColumn(), console=console, disable=not console.is_terminal,
    )  # fmt: skip
