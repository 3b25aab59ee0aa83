"""Keeping the archive within `receiver.archive_days` and `receiver.archive_max_mb`, in the receiver's housekeeping.

archive and archive_blob are partitioned by day (RANGE COLUMNS on `day`, one partition per UTC day, a week made
ahead, `pmax` catching anything later). Pruning drops whole day partitions: a DROP PARTITION is one short DDL in
the binlog and frees the space at once, where a DELETE would log every pruned row's full before-image (the body a
second time, with binlog_row_image=FULL) and leave the space to InnoDB. The DDL waits at most DDL_WAIT_SECONDS for
the table's metadata lock (lock_wait_timeout of its own session), so it never holds apply back longer; a pass that
could not get it tries again next time. Rows older than the cut-off in a partition that also holds younger rows
(the first partition after an upgrade covers every day before it) and the size cap inside today's partition are
deleted in small chunks, oldest first, each its own short transaction. Needs no SUPER: ALTER and DELETE on the
state schema, which the receiver's user has.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from dbsync_cli.receiver.state import schema_name
from dbsync_cli.sql import Sql, join, placeholders, quote, sql

log = logging.getLogger("dbsync.archive")

TABLES = ("archive", "archive_blob")  # partitioned alike; rows first (a blob without rows is harmless)
AHEAD_DAYS = 7  # day partitions made ahead, so that `pmax` stays empty and is split in no time
DDL_WAIT_SECONDS = 5
CHUNK = 100  # blobs (each a write of up to batch_messages rows) deleted a transaction


@dataclass
class Pruned:
    rows: int = 0
    bytes: int = 0
    partitions: list[str] = field(default_factory=list)


def _literal(day: dt.date) -> Sql:
    """A date as DDL needs it (a partition bound cannot be a parameter); a date's ISO form is digits and dashes."""
    return Sql("'" + day.isoformat() + "'")


def _name(bound: dt.date) -> str:
    return f"p{bound:%Y%m%d}"


def partitions(cur: Any, schema: str, table: str = "archive") -> list[tuple[str, dt.date | None]]:
    """(name, exclusive upper bound; None for pmax) of the table's partitions, in order."""
    cur.execute("SELECT PARTITION_NAME, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS WHERE "
                "TABLE_SCHEMA = %s AND TABLE_NAME = %s AND PARTITION_NAME IS NOT NULL "
                "ORDER BY PARTITION_ORDINAL_POSITION", (schema, table))
    found: list[tuple[str, dt.date | None]] = []
    for name, description in cur.fetchall():
        text = str(description).strip("'")
        found.append((str(name), None if text.upper() == "MAXVALUE" else dt.date.fromisoformat(text)))
    return found


def _ddl(cur: Any, statement: Sql) -> bool:
    """One DDL statement waiting at most DDL_WAIT_SECONDS for its metadata lock; False when it did not get it."""
    try:
        cur.execute(statement)
    except Exception as exc:  # noqa: BLE001 - 1205 lock wait timeout, or any refusal: the next pass tries again
        log.warning("archive: %s not done now (%s); the next housekeeping pass tries again",
                    statement.split(" PARTITION")[0], exc)
        return False
    return True


def ensure_partitions(cur: Any, schema: str, today: dt.date) -> None:
    """Day partitions up to AHEAD_DAYS ahead, split off `pmax`."""
    s = schema_name(schema)
    for table in TABLES:
        bounds = [bound for _, bound in partitions(cur, schema, table) if bound is not None]
        last = max(bounds) if bounds else today
        wanted = [today + dt.timedelta(days=n) for n in range(1, AHEAD_DAYS + 2)]
        new = [bound for bound in wanted if bound > last]
        if not new:
            continue
        parts = join([sql("PARTITION {} VALUES LESS THAN ({})", quote(_name(b)), _literal(b)) for b in new]
                     + [Sql("PARTITION pmax VALUES LESS THAN (MAXVALUE)")])
        _ddl(cur, sql("ALTER TABLE {}.{} REORGANIZE PARTITION pmax INTO ({})", s, quote(table), parts))


def prune(conn: Any, schema: str, days: int, max_bytes: int, today: dt.date | None = None) -> dict[str, Pruned]:
    """One housekeeping pass: partitions ahead, then what is older than `days` (0: everything: the archive is
    off), then the oldest until the archive holds at most `max_bytes` (0: no cap). What was pruned, per reason."""
    today = today or dt.datetime.now(dt.UTC).date()
    s = schema_name(schema)
    done = {"age": Pruned(), "size": Pruned()}
    with conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = %s", (DDL_WAIT_SECONDS,))
        ensure_partitions(cur, schema, today)
        cutoff = today - dt.timedelta(days=days) if days > 0 else today + dt.timedelta(days=1)
        _drop(cur, s, schema, cutoff, done["age"])
        _delete_blobs(conn, cur, s, sql("day < %s"), (cutoff,), done["age"])
        if max_bytes > 0:
            _cap(conn, cur, s, schema, today, max_bytes, done["size"])
        for why, pruned in done.items():
            if pruned.rows or pruned.partitions:
                cur.execute(sql("INSERT INTO {}.archive_pruned (why, n_rows, bytes, last_date) VALUES (%s, %s, %s, "
                                "UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE n_rows = n_rows + VALUES(n_rows), "
                                "bytes = bytes + VALUES(bytes), last_date = VALUES(last_date)", s),
                            (why, pruned.rows, pruned.bytes))
                log.info("archive: pruned %d rows (%d bytes%s) by %s", pruned.rows, pruned.bytes,
                         f", partitions {', '.join(pruned.partitions)}" if pruned.partitions else "", why)
    conn.commit()
    return done


def _drop(cur: Any, s: Sql, schema: str, upto: dt.date, pruned: Pruned) -> bool:
    """Drop the day partitions ending by `upto` of each table (each its own: a pass that dropped one table's and not
    the other's finishes the other's next time), counting what the blobs' held; False when a DDL had to wait."""
    dropped = False
    for table in TABLES:
        names = [name for name, bound in partitions(cur, schema, table) if bound is not None and bound <= upto]
        if not names:
            continue
        listed = join([quote(n) for n in names])
        if table == "archive_blob":
            cur.execute(sql("SELECT COALESCE(SUM(n_rows), 0), COALESCE(SUM(bytes), 0) FROM {}.archive_blob "
                            "PARTITION ({})", s, listed))
            rows, size = cur.fetchone() or (0, 0)
        if not _ddl(cur, sql("ALTER TABLE {}.{} DROP PARTITION {}", s, quote(table), listed)):
            return False
        if table == "archive_blob":
            pruned.rows += int(rows)
            pruned.bytes += int(size)
            pruned.partitions += [n for n in names if n not in pruned.partitions]
        dropped = True
    return dropped


def _delete_blobs(conn: Any, cur: Any, s: Sql, where: Sql, args: tuple[Any, ...], pruned: Pruned,
                  budget: int | None = None) -> None:
    """Delete the blobs matching `where` and their rows, oldest first, CHUNK a transaction (until `budget` bytes
    are gone, when given)."""
    while budget is None or budget > 0:
        cur.execute(sql("SELECT id, n_rows, bytes FROM {}.archive_blob WHERE {} ORDER BY day, id LIMIT %s", s, where),
                    (*args, CHUNK))
        found = cur.fetchall()
        if budget is not None:
            kept, freed = [], 0
            for row in found:
                if freed >= budget:
                    break
                kept.append(row)
                freed += int(row[2])
            found = kept
        if not found:
            return
        ids = [int(row[0]) for row in found]
        cur.execute(sql("DELETE FROM {}.archive WHERE blob_id IN ({})", s, placeholders(len(ids))), ids)
        cur.execute(sql("DELETE FROM {}.archive_blob WHERE id IN ({})", s, placeholders(len(ids))), ids)
        conn.commit()
        pruned.rows += sum(int(row[1]) for row in found)
        freed = sum(int(row[2]) for row in found)
        pruned.bytes += freed
        if budget is not None:
            budget -= freed


def _cap(conn: Any, cur: Any, s: Sql, schema: str, today: dt.date, max_bytes: int, pruned: Pruned) -> None:
    """Oldest first until the archive holds at most `max_bytes`: whole days before today by DROP PARTITION, then
    today's oldest blobs in chunks."""
    while True:
        cur.execute(sql("SELECT day, SUM(bytes) FROM {}.archive_blob GROUP BY day ORDER BY day", s))
        by_day = [(day, int(size)) for day, size in cur.fetchall()]
        over = sum(size for _, size in by_day) - max_bytes
        if over <= 0 or not by_day:
            return
        oldest = by_day[0][0]
        # the partition holding the oldest day, when it ends by today (it holds no row of today's)
        ends = [bound for _, bound in partitions(cur, schema, "archive_blob") if bound is not None and oldest < bound]
        if ends and min(ends) <= today and _drop(cur, s, schema, min(ends), pruned):
            continue
        _delete_blobs(conn, cur, s, sql("1 = 1"), (), pruned, budget=over)
        return


def stats(conn: Any, schema: str) -> dict[str, Any]:
    """What the archive holds (rows, bytes as counted for the cap, its tables' size on disk, the oldest day) and what
    pruning removed so far, per reason."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT COALESCE(SUM(n_rows), 0), COALESCE(SUM(bytes), 0), MIN(day) FROM {}.archive_blob", s))
        rows, size, oldest = cur.fetchone() or (0, 0, None)
        cur.execute("SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES WHERE "
                    "TABLE_SCHEMA = %s AND TABLE_NAME IN ('archive', 'archive_blob')", (schema,))
        (disk,) = cur.fetchone() or (0,)
        cur.execute(sql("SELECT why, n_rows, bytes, last_date FROM {}.archive_pruned ORDER BY why", s))
        pruned = {str(why): {"rows": int(n), "bytes": int(b), "last": last.isoformat(sep=" ", timespec="seconds")}
                  for why, n, b, last in cur.fetchall()}
    conn.commit()
    return {"rows": int(rows), "bytes": int(size), "disk_bytes": int(disk),
            "oldest_day": oldest.isoformat() if oldest else None, "pruned": pruned}
