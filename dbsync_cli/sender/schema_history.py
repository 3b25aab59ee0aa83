"""Column names for binlogs that do not carry them (MySQL 5.7; MariaDB/MySQL 8 with binlog_row_metadata=MINIMAL).

Such row events carry column types but no names, and information_schema only knows today's columns: decoding an
event written before an `ALTER TABLE … DROP COLUMN` with today's names would shift every value after the dropped
column (a uuid read from the wrong column, a delete of the wrong row). So the sender keeps a schema history in its
state (Debezium's idea): the columns of each synced table, valid from a binlog position on, recorded when capture
first starts and after every DDL statement it reads that names a synced table. An event is decoded with the columns
valid at its position; a restart that replays events from before an ALTER decodes them as they were written.

The columns after a DDL are read from information_schema when capture reads the DDL. When the sender is behind two
DDLs of one table, the first one's columns cannot be known any more: the column count of the event then disagrees
with the history and capture stops (exit 11) instead of guessing.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from dbsync_cli.files import private_file
from dbsync_cli.sender.binlog import Position, sequence


class SchemaHistory:
    """The entries of one binlog history: positions are the message-id `epoch`'s (capture renews it with every
    new snapshot and when the site fails over to a replica), since file and position names repeat across servers
    and after RESET MASTER."""

    def __init__(self, home: Path | None, epoch: str = ""):
        if home is None:
            self.conn = sqlite3.connect(":memory:")
        else:
            path = home / "state.sqlite"
            home.mkdir(parents=True, exist_ok=True)
            private_file(path)
            self.conn = sqlite3.connect(path, timeout=30)
        self.epoch = epoch
        self.conn.execute("CREATE TABLE IF NOT EXISTS schema_columns (epoch TEXT NOT NULL, tbl TEXT NOT NULL, "
                          "file TEXT NOT NULL, pos INTEGER NOT NULL, columns TEXT NOT NULL, "
                          "PRIMARY KEY (epoch, tbl, file, pos))")
        old = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_history'")
        if old.fetchone():  # 0.x before epochs: its entries are of the history the checkpoint resumes
            self.conn.execute("INSERT OR IGNORE INTO schema_columns SELECT ?, tbl, file, pos, columns "
                              "FROM schema_history", (epoch,))
            self.conn.execute("DROP TABLE schema_history")
        self.conn.commit()
        self._cache: dict[str, list[tuple[tuple[str, int], int, list[str]]]] = {}

    def _entries(self, table: str) -> list[tuple[tuple[str, int], int, list[str]]]:
        if table not in self._cache:
            rows = self.conn.execute("SELECT file, pos, columns FROM schema_columns WHERE epoch = ? AND tbl = ?",
                                     (self.epoch, table))
            self._cache[table] = sorted((sequence(f), int(p), orjson.loads(c)) for f, p, c in rows)
        return self._cache[table]

    def record(self, table: str, position: Position, columns: list[str]) -> bool:
        """The columns of `table` from `position` on. The first recording stays: it was made when the DDL was
        read closest to its time; a replay reads today's columns, which later DDL may have changed since."""
        if self.recorded_at(table, position):
            return False
        self.conn.execute("INSERT OR IGNORE INTO schema_columns (epoch, tbl, file, pos, columns) VALUES (?, ?, ?, ?, ?)",
                          (self.epoch, table, position.file, position.pos, orjson.dumps(columns).decode()))
        self.conn.commit()
        self._cache.pop(table, None)
        return True

    def recorded_at(self, table: str, position: Position) -> bool:
        return any(entry[:2] == (sequence(position.file), position.pos) for entry in self._entries(table))

    def columns_at(self, table: str, position: Position) -> list[str] | None:
        """The columns valid at `position`: the last entry at or before it."""
        key = (sequence(position.file), position.pos)
        found = None
        for file_key, pos, columns in self._entries(table):
            if (file_key, pos) <= key:
                found = columns
        return found

    def has(self, table: str) -> bool:
        return bool(self._entries(table))

    def close(self) -> None:
        self.conn.close()


def current_columns(conn: Any, database: str, tables: list[str]) -> dict[str, list[str]]:
    """Today's columns of `tables`, in table order (information_schema)."""
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
                    "ORDER BY TABLE_NAME, ORDINAL_POSITION", (database,))
        found: dict[str, list[str]] = {}
        for table, column in cur.fetchall():
            if table in tables:
                found.setdefault(str(table), []).append(str(column))
    return found


def tables_named(statement: str, tables: list[str]) -> list[str]:
    """The synced tables a DDL statement names (as words, backquoted or not)."""
    return [t for t in tables if re.search(rf"(?<![\w$]){re.escape(t)}(?![\w$])", statement)]


def seed(history: SchemaHistory, columns: dict[str, list[str]], position: Position) -> None:
    """The first entry of each table without one: today's columns, from where capture starts reading."""
    for table, names in columns.items():
        if not history.has(table):
            history.record(table, position, names)


def name_columns(history: SchemaHistory, event: Any, position: Position) -> str | None:
    """Give a table map event without column names the names valid at `position`; why it cannot, or None."""
    names = history.columns_at(event.table, position)
    if names is None:
        return f"carries no column names and the schema history has none for {event.table}"
    if len(names) != len(event.columns):
        return (f"has {len(event.columns)} columns where the schema history has {len(names)} for {event.table} "
                "(several DDL statements while the sender was behind)")
    for column, name in zip(event.columns, names, strict=True):
        column.name = name
    event.table_obj.column_name_flag = True
    return None
