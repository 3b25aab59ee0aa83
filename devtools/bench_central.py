"""Rows counted in central's own tables, for scripts/bench: what a stage wrote is what central holds now and did not
hold before, not the messages that were sent.

Before a run, `watermarks` notes for each table of central's database its highest primary key (a table keyed by one
integer column) or its row count (any other table); `rows_since` counts the rows above those marks (a range scan on
the primary key, so it costs milliseconds even on a central of 10 M rows), and `remove_since` deletes them again,
so a preloaded central can be reused run after run at the same size. The bench's workload only inserts, so every
row a stage wrote is above its table's mark. Plain SQL over information_schema: the bench's counting imports
nothing of the code it measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dbsync_cli.db import DbParams


@dataclass(frozen=True)
class Mark:
    table: str
    key: str | None  # the one integer primary key column, or None: the table is counted whole
    value: int  # the highest key, or the row count


def one(cur: Any) -> int:
    """The single integer a query answered (0 when it gave no row)."""
    row = cur.fetchone()
    return int(row[0]) if row else 0



def _q(name: str) -> str:
    """A name read from information_schema, quoted (bench-only; the package's own SQL goes through sql.py)."""
    return "`" + name.replace("`", "``") + "`"


def watermarks(db: DbParams) -> list[Mark]:
    """The highest primary key (or the row count) of every base table in `db`'s database."""
    with db.connect() as conn, conn.cursor() as cur:
        # two plain look-ups filtered by schema (correlated subqueries over information_schema took ~8 s on a
        # server holding many schemas)
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND "
                    "TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME")
        names = [str(r[0]) for r in cur.fetchall()]
        cur.execute("SELECT k.TABLE_NAME, k.COLUMN_NAME, c.DATA_TYPE FROM information_schema.KEY_COLUMN_USAGE k "
                    "JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = k.TABLE_SCHEMA AND "
                    "c.TABLE_NAME = k.TABLE_NAME AND c.COLUMN_NAME = k.COLUMN_NAME "
                    "WHERE k.TABLE_SCHEMA = DATABASE() AND k.CONSTRAINT_NAME = 'PRIMARY'")
        primary: dict[str, list[tuple[str, str]]] = {}
        for table_name, column, data_type in cur.fetchall():
            primary.setdefault(str(table_name), []).append((str(column), str(data_type)))
        marks: list[Mark] = []
        for table in names:
            pk = primary.get(table, [])
            single = pk[0][0] if len(pk) == 1 and pk[0][1] in ("int", "bigint", "mediumint", "smallint") else None
            if single:
                cur.execute(f"SELECT COALESCE(MAX({_q(single)}), 0) FROM {_q(table)}")  # noqa: S608
            else:
                cur.execute(f"SELECT COUNT(*) FROM {_q(table)}")  # noqa: S608
            marks.append(Mark(table, single, one(cur)))
        conn.commit()
    return marks


def rows_by_table(db: DbParams, marks: list[Mark]) -> dict[str, int]:
    """Rows each table holds now above its mark (tables with none left out)."""
    found: dict[str, int] = {}
    with db.connect() as conn, conn.cursor() as cur:
        for m in marks:
            if m.key:
                cur.execute(f"SELECT COUNT(*) FROM {_q(m.table)} WHERE {_q(m.key)} > %s", (m.value,))  # noqa: S608
                n = one(cur)
            else:
                cur.execute(f"SELECT COUNT(*) FROM {_q(m.table)}")  # noqa: S608
                n = one(cur) - m.value
            if n:
                found[m.table] = n
        conn.commit()
    return found


def rows_since(db: DbParams, marks: list[Mark]) -> int:
    """Rows central holds now that it did not hold at `marks`: what was applied, counted in its tables."""
    return sum(rows_by_table(db, marks).values())


class CannotReset(RuntimeError):
    """Rows were added to a table without a single integer key: they cannot be told from the preloaded ones."""


def remove_since(db: DbParams, marks: list[Mark]) -> int:
    """Delete every row above the marks (foreign key checks off, not binlogged: the bench's own server), so that
    the central is as it was before the run; returns the rows deleted."""
    added = rows_by_table(db, marks)
    loose = [m.table for m in marks if m.key is None and added.get(m.table)]
    if loose:
        raise CannotReset(f"rows added to {', '.join(loose)} (no single integer key): cannot reset this central")
    deleted = 0
    with db.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        cur.execute("SET SESSION sql_log_bin = 0")
        for m in marks:
            if m.key and added.get(m.table):
                cur.execute(f"DELETE FROM {_q(m.table)} WHERE {_q(m.key)} > %s", (m.value,))  # noqa: S608
                deleted += cur.rowcount
        conn.commit()
    left = rows_since(db, marks)
    if left:
        raise CannotReset(f"{left} rows above the marks after removing them")
    return deleted


def total_rows(db: DbParams) -> int:
    """Every row of every base table (exact counts: what a preloaded central really holds)."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND "
                    "TABLE_TYPE = 'BASE TABLE'")
        total = 0
        for (table,) in list(cur.fetchall()):
            cur.execute(f"SELECT COUNT(*) FROM {_q(table)}")  # noqa: S608
            total += one(cur)
        conn.commit()
    return total


def wait_purged(db: DbParams, timeout: float = 120, below: int = 1000) -> float:
    """Wait until InnoDB has purged what a removal left (its history list is short again), so that the next run
    does not pay for the previous one's deletes; returns the seconds waited (at most `timeout`)."""
    started = time.monotonic()
    with db.connect() as conn, conn.cursor() as cur:
        while time.monotonic() - started < timeout:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'")
            row = cur.fetchone()
            if row is None or int(row[1]) < below:
                break
            time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def uuids_since(db: DbParams, marks: list[Mark]) -> dict[str, list[str]]:
    """The uuids of the rows above the marks, by table (tables keyed by one integer and holding a uuid column):
    a range scan each, so a run on a central of 10 M rows is judged without reading the 10 M."""
    found: dict[str, list[str]] = {}
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
                    "COLUMN_NAME = 'uuid'")
        with_uuid = {r[0] for r in cur.fetchall()}
        for m in marks:
            if m.key and m.table in with_uuid:
                cur.execute(f"SELECT uuid FROM {_q(m.table)} WHERE {_q(m.key)} > %s", (m.value,))  # noqa: S608
                found[m.table] = [str(r[0]) for r in cur.fetchall()]
        conn.commit()
    return found
