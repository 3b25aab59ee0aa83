"""What central held when a site was registered for adoption: those rows are never the site's.

Every OpenMRS database shares some rows (a distribution's users and providers, with the same uuids everywhere), so
"central has it and dbsync never wrote it" does not tell the site's loaded data from central's own rows. The
documented procedure is register-then-load: `sites add --adopt` (or `sites update --adopt`) records, per synced
table, the primary keys central holds at that moment (as ranges of consecutive keys: a handful per table), before
the site's dump is loaded. A loaded row gets a key that was free then (INSERT IGNORE never replaces a row), so

- a row whose key was held is central's own: the site's snapshot never adopts it, its changes are judged as for
  any central row (counted as `central_owned`, never a rename of central's user or provider);
- a row another site sent while central had it as its own (say a shared user central lacked and the load brought)
  is added to the record of every adopting site, as a range of one key: it is never adopted either.

A site that adopts with no record (registered with --adopt before this existed) adopts nothing.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.receiver import state
from dbsync_cli.sql import quote, sql

log = logging.getLogger("dbsync.adopt")


@dataclass(frozen=True)
class Recorded:
    """What `record` kept for a site: when, and how many rows in how many tables."""

    date: dt.datetime
    rows: int
    tables: int


def record(conn: Any, schema: str, site: state.Site, model: SchemaModel) -> Recorded:
    """Record the keys every synced table holds now as central's (replacing any earlier record of the site), all
    tables read in one consistent snapshot and written in the same transaction."""
    s = state.schema_name(schema)
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    total = 0
    with conn.cursor() as cur:
        conn.commit()
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        ranges: dict[str, list[tuple[int, int]]] = {}
        counts: dict[str, int] = {}
        for table in model.synced.values():
            ranges[table.name], counts[table.name] = _key_ranges(cur, model.database, table)
            total += counts[table.name]
        cur.execute(sql("DELETE FROM {}.adopt_held WHERE site_id = %s", s), (site.id,))
        cur.execute(sql("DELETE FROM {}.adopt_table WHERE site_id = %s", s), (site.id,))
        cur.executemany(sql("INSERT INTO {}.adopt_table (site_id, table_name, held_rows, date_recorded) "
                            "VALUES (%s, %s, %s, %s)", s),
                        [(site.id, name, counts[name], stamp) for name in ranges])
        cur.executemany(sql("INSERT INTO {}.adopt_held (site_id, table_name, first_key, last_key) "
                            "VALUES (%s, %s, %s, %s)", s),
                        [(site.id, name, first, last) for name, found in ranges.items() for first, last in found])
    conn.commit()
    return Recorded(stamp, total, len(ranges))


def forget(conn: Any, schema: str, site: state.Site) -> None:
    """The site adopts no more (sites update --no-adopt): its record goes."""
    s = state.schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("DELETE FROM {}.adopt_held WHERE site_id = %s", s), (site.id,))
        cur.execute(sql("DELETE FROM {}.adopt_table WHERE site_id = %s", s), (site.id,))
    conn.commit()


def recorded(conn: Any, schema: str, site: state.Site) -> Recorded | None:
    """The site's record (None: there is none)."""
    with conn.cursor() as cur:
        cur.execute(sql("SELECT MIN(date_recorded), COALESCE(SUM(held_rows), 0), COUNT(*) FROM {}.adopt_table "
                        "WHERE site_id = %s", state.schema_name(schema)), (site.id,))
        date, rows, tables = cur.fetchone() or (None, 0, 0)
    conn.commit()
    return None if date is None else Recorded(date, int(rows), int(tables))


def _key_ranges(cur: Any, database: str, table: SyncedTable) -> tuple[list[tuple[int, int]], int]:
    """The table's keys as (first, last) ranges of consecutive keys, and how many keys: the first and the last
    keys of each range found by two scans of the primary key (any MySQL or MariaDB; no window functions)."""
    if not integer_key(table):
        return [], 0  # never the case in OpenMRS; such a table's rows are all held (HeldRows.holds)
    t, k = quote(database, table.name), quote(table.key)
    cur.execute(sql("SELECT a.{k} FROM {t} a WHERE NOT EXISTS (SELECT 1 FROM {t} b WHERE b.{k} = a.{k} - 1) "
                    "ORDER BY a.{k}", t=t, k=k))
    firsts = [int(row[0]) for row in cur.fetchall()]
    cur.execute(sql("SELECT a.{k} FROM {t} a WHERE NOT EXISTS (SELECT 1 FROM {t} b WHERE b.{k} = a.{k} + 1) "
                    "ORDER BY a.{k}", t=t, k=k))
    lasts = [int(row[0]) for row in cur.fetchall()]
    found = list(zip(firsts, lasts, strict=True))
    return found, sum(last - first + 1 for first, last in found)


def integer_key(table: SyncedTable) -> bool:
    """Whether the table's key is an integer (every OpenMRS table's is): only such keys are recorded."""
    column = table.info.columns.get(table.key)
    return column is not None and column.is_integer


class HeldRows:
    """The records of the adopting sites, read once per site and table (a site's record changes only with `sites
    update`, which gives it a new date: read again then)."""

    def __init__(self, schema: Any):
        self.s = schema
        self._ranges: dict[tuple[int, str], tuple[dt.datetime, tuple[list[int], list[int]] | None]] = {}
        self._warned: set[str] = set()

    def holds(self, cur: Any, site: state.Site, table: SyncedTable, key: Any) -> bool:
        """Whether central held the row (`key`) when the site's record was made, or another site sent it as
        central's since. No record, or a key that is no integer: held (nothing is adopted without a record)."""
        if site.adopt_recorded is None:
            if site.identifier not in self._warned:
                self._warned.add(site.identifier)
                log.warning("site %s adopts but central's rows were never recorded for it (sites update %s "
                            "--no-adopt, then --adopt before loading its data): nothing is adopted",
                            site.identifier, site.identifier)
            return True
        if not isinstance(key, int) or not integer_key(table):
            return True
        ranges = self._load(cur, site, table.name)
        if ranges is None:  # a table synced since the record was made: what central held then is unknown
            return True
        firsts, lasts = ranges
        at = bisect.bisect_right(firsts, key) - 1
        return at >= 0 and lasts[at] >= key

    def add(self, cur: Any, site: state.Site, table: SyncedTable, key: Any) -> None:
        """Another site sent this row as central's own: the adopting `site` never takes it."""
        if site.adopt_recorded is None or not isinstance(key, int) or self.holds(cur, site, table, key):
            return
        cur.execute(sql("INSERT IGNORE INTO {}.adopt_held (site_id, table_name, first_key, last_key) "
                        "VALUES (%s, %s, %s, %s)", self.s), (site.id, table.name, key, key))
        ranges = self._load(cur, site, table.name)
        if ranges is not None:
            at = bisect.bisect_right(ranges[0], key)
            ranges[0].insert(at, key)
            ranges[1].insert(at, key)

    def clear(self) -> None:
        """After a rollback: a range `add` wrote may be gone; read again when next asked."""
        self._ranges.clear()

    def _load(self, cur: Any, site: state.Site, table: str) -> tuple[list[int], list[int]] | None:
        """The site's ranges of `table` (first keys, last keys), None when the table was not recorded."""
        cached = self._ranges.get((site.id, table))
        if cached is None or cached[0] != site.adopt_recorded:
            cur.execute(sql("SELECT COUNT(*) FROM {}.adopt_table WHERE site_id = %s AND table_name = %s", self.s),
                        (site.id, table))
            known = bool((cur.fetchone() or (0,))[0])
            cur.execute(sql("SELECT first_key, last_key FROM {}.adopt_held WHERE site_id = %s AND table_name = %s "
                            "ORDER BY first_key", self.s), (site.id, table))
            rows = cur.fetchall()
            assert site.adopt_recorded is not None
            cached = (site.adopt_recorded, ([int(r[0]) for r in rows], [int(r[1]) for r in rows]) if known else None)
            self._ranges[(site.id, table)] = cached
        return cached[1]
