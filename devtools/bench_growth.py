"""The growth ratio of scripts/bench: apply into a central already holding many rows against an empty one.

Two centrals are reused run after run: an empty one (OpenMRS's schema and metadata) and a preloaded one. Each run
applies the same messages file into one of them under a fresh receiver-state schema, counts the rows it wrote in
central's tables (devtools/bench_central.py: rows above the marks taken before), judges them, and deletes them
again, so the next run finds the same central. Runs alternate (empty, big, empty, big …): a pair is one empty and
the big run after it, its ratio big rows/s ÷ empty rows/s, and the figure is the median of the pairs' ratios, so a
busy moment of the shared machine moves one pair, not the figure.

The preloaded central is built once and, with --keep-preload, kept for the next bench (database
``bench_preload_<rows>`` on the central server, its marks in ``bench_preload_<rows>_m``): up to
GENERATED_AT_MOST rows come from the workload generator (patients, visits, encounters, obs of the bench's own
shape), the rest are copies of its obs rows made by INSERT … SELECT inside the server, not binlogged (the table
apply writes most, with all its indexes, at a large central's size). Reusing it first removes whatever a run that
died left above its marks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from dbsync_cli.db import DbParams
from dbsync_cli.sql import columns, sql
from devtools import bench_central as bc

#: the workload generator writes ~4,000 rows/s at central (and slows as its tables grow): above this many preloaded
#: rows, central's obs table is grown by copies of its own rows instead
GENERATED_AT_MOST = 1_000_000


def grow_obs(central: DbParams, rows: int, chunk: int = 200_000) -> int:
    """Copy central's obs rows onto themselves (new obs_id and uuid, top-level: no group, no previous version) until
    `rows` more are there; not binlogged (the bench's own server: its binlog of 10 M rows would fill the disk)."""
    with central.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND "
                    "table_name = 'obs' ORDER BY ordinal_position")
        names = [r[0] for r in cur.fetchall() if r[0] not in ("obs_id", "uuid", "obs_group_id", "previous_version")]
        listed = columns(names)  # names from information_schema, quoted by the one helper
        cur.execute("SELECT MIN(obs_id) FROM obs")
        (low,) = cur.fetchone() or (None,)
        added, start = 0, int(low or 0)
        while low is not None and added < rows:
            take = min(chunk, rows - added)
            cur.execute(sql("INSERT INTO obs ({}, uuid) SELECT {}, UUID() FROM obs WHERE obs_id >= %s ORDER BY obs_id "
                            "LIMIT %s", listed, listed), (start, take))
            conn.commit()
            added += cur.rowcount
            start = start + take if cur.rowcount else int(low)
        return added


def _exists(admin: DbParams, name: str) -> bool:
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
        return bool(bc.one(cur))


def _save_marks(admin: DbParams, name: str, marks: list[bc.Mark]) -> None:
    with admin.with_database(None).connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}_m`")
        cur.execute(f"CREATE OR REPLACE TABLE `{name}_m`.marks (table_name VARCHAR(64) PRIMARY KEY, "
                    "key_name VARCHAR(64) NULL, value BIGINT NOT NULL)")
        cur.executemany(f"INSERT INTO `{name}_m`.marks VALUES (%s, %s, %s)",  # noqa: S608 - our own name
                        [(m.table, m.key, m.value) for m in marks])
        conn.commit()


def _load_marks(admin: DbParams, name: str) -> list[bc.Mark] | None:
    if not _exists(admin, f"{name}_m"):
        return None
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT table_name, key_name, value FROM `{name}_m`.marks ORDER BY table_name")  # noqa: S608
        return [bc.Mark(t, k, int(v)) for t, k, v in cur.fetchall()] or None


def preloaded(admin: DbParams, rows: int, load: Callable[[DbParams, str], DbParams],
              generate: Callable[[DbParams, int], int], say: Callable[[str], None]) -> tuple[DbParams, dict[str, Any]]:
    """The central preloaded with ~`rows` rows: the kept one when it is there (its leftovers above its marks
    removed), else built now (`load` makes an empty OpenMRS database, `generate` writes rows into it). Returns
    it and how it came: reused or built, in how many seconds, with how many rows in all."""
    name = f"bench_preload_{rows}"
    info: dict[str, Any] = {"database": name, "target_rows": rows}
    marks = _load_marks(admin, name) if _exists(admin, name) else None
    db = admin.with_database(name)
    started = time.perf_counter()
    if marks is not None:
        left = bc.rows_since(db, marks)
        if left:
            say(f"  removing {left:,} rows a run left above the preload's marks …")
            bc.remove_since(db, marks)
        info.update(how="reused", seconds=round(time.perf_counter() - started, 1))
    else:
        drop(admin, name)
        db = load(admin, name)
        generated = min(rows, GENERATED_AT_MOST)
        say(f"preloading central with ~{generated:,} rows (workload generator, directly) …")
        held = generate(db, generated)
        info["generator_seconds"] = round(time.perf_counter() - started, 1)
        if rows > held:
            say(f"growing central's obs to ~{rows:,} rows in all (INSERT … SELECT copies, not binlogged) …")
            copied = time.perf_counter()
            grow_obs(db, rows - held)
            info["copy_seconds"] = round(time.perf_counter() - copied, 1)
        _save_marks(admin, name, bc.watermarks(db))
        info.update(how="built", seconds=round(time.perf_counter() - started, 1))
    info["central_rows"] = bc.total_rows(db)
    say(f"  central {name} holds {info['central_rows']:,} rows ({info['how']} in {info['seconds']:.0f} s)")
    return db, info


def drop(admin: DbParams, name: str) -> None:
    """Drop a preloaded central and its marks."""
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        for db in (name, f"{name}_m"):
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")


def pairs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs alternating empty, big, empty, big …: each pair's rows/s and ratio, and the median ratio."""
    found = []
    for empty, big in zip(runs[0::2], runs[1::2], strict=False):
        ratio = big["rows_per_second"] / empty["rows_per_second"] if empty["rows_per_second"] else 0.0
        found.append({"empty_rows_per_second": empty["rows_per_second"], "big_rows_per_second": big["rows_per_second"],
                      "ratio": round(ratio, 3)})
    ratios = [p["ratio"] for p in found]
    return {"pairs": found, "median_ratio": round(statistics.median(ratios), 2) if ratios else None}
