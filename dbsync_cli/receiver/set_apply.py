"""Set-based apply: a batch's plain new rows written a statement per table and wave, with their bookkeeping.

The per-row path (apply.py) converts, judges and writes every message on its own; most of a site's traffic is new
rows that need no judgement (set_select.py says which). Those are written here before the per-row path runs:

- the rows go to the server as one JSON document per statement, read by `JSON_TABLE` inside an
  `INSERT … SELECT`: one escaped parameter instead of one per value (PyMySQL's escaping was a fifth of apply's
  time), and the server converts each value to its column's type exactly as it converts a literal of the per-row
  path's INSERT (strict mode refuses the same values). No staging table, so no staging table's character set
  can differ from OpenMRS's and lose the indexes; references are resolved to keys before (from the batch's
  prefetched ids, or the keys learnt from an earlier wave);
- waves: a row referencing another row of the batch goes in a later statement than it (an obs group before its
  members, a person before its patient row); a table and column set is one statement per wave;
- new keys and the hashes of the new rows come back from the INSERT itself (`RETURNING`, MariaDB 10.5+): the
  server computes each hash from the row as stored, in the statement that stores it, and no key is inferred from
  `LAST_INSERT_ID()`. Where the server has no `RETURNING` (MySQL), keys come from the statement when the server
  makes them consecutive, else are read back by uuid;
- the entity hashes, with the source position of each message, are one `INSERT … SELECT` from a JSON document per
  table: the hashes returned, or (updates, and servers without `RETURNING`) computed by the server by a join to
  the rows just written;
- applied ids, status counts and REST calls join the batch's bookkeeping (bookkeeping.write_batch) as the per-row
  path's do.

Any error fails the batch as a per-row error does: the transaction rolls back and apply replays the batch message
by message (savepoints, no set path), so one bad row still parks only its own message.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pymysql

from dbsync_cli import complex_obs
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.rules import REST_RESOURCES
from dbsync_cli.receiver import bookkeeping, state
from dbsync_cli.receiver.batch import Batch, Outcome, now
from dbsync_cli.receiver.conflict import hash_sql
from dbsync_cli.receiver.guard import COLUMNS as POSITION_COLUMNS
from dbsync_cli.receiver.message import Parsed
from dbsync_cli.receiver.resolve import UuidToId
from dbsync_cli.receiver.set_select import (
    Need,
    Plans,
    Row,
    Unfit,
    candidate,
    convert,
    future_dated,
    settle,
    subclass_rows,
)
from dbsync_cli.sql import Sql, StatementCache, chunks, columns, join, placeholders, quote, sql, value_rows

log = logging.getLogger("dbsync.apply")

#: bytes of one statement's JSON document at most (also at most half the server's max_allowed_packet)
SET_BYTES = 1_000_000
SET_ROWS = 1000  # rows per INSERT at most


def json_table_works(cur: Any) -> bool:
    """Whether central's server has JSON_TABLE (MariaDB 10.6+, MySQL 8.0.4+): the set path needs it."""
    try:
        cur.execute("SELECT a FROM JSON_TABLE('[[1]]', '$[*]' COLUMNS (a BIGINT PATH '$[0]')) AS t")
        cur.fetchall()
    except pymysql.MySQLError:
        return False
    return True


def insert_returning_works(cur: Any) -> bool:
    """Whether central's server has `INSERT … RETURNING` (MariaDB 10.5+; MySQL has none)."""
    cur.execute("SELECT VERSION()")
    (text,) = cur.fetchone() or ("",)
    match = re.match(r"(\d+)\.(\d+)", str(text))
    return "mariadb" in str(text).lower() and match is not None and (int(match[1]), int(match[2])) >= (10, 5)


def _default(value: Any) -> Any:
    raise TypeError(type(value).__name__)


class SetApply:
    def __init__(self, model: SchemaModel, ids: UuidToId, value_of: Callable[..., Any], schema: Sql, *,
                 consecutive: bool, rest_enabled: bool, complex_obs: bool = False, peek: Callable[[str, Any], dict[str, Any] | None],
                 central_now: Callable[[Any], dt.datetime], tolerance: float, max_bytes: int = SET_BYTES,
                 returning: bool = False) -> None:
        self.model = model
        self.ids = ids
        self.value_of = value_of  # Converter.value: a DATETIME in central's zone, a TIMESTAMP in UTC
        self.s = schema
        self.consecutive = consecutive
        self.rest_enabled = rest_enabled
        self.complex_obs = complex_obs  # receiver.complex_obs_dir is set: an obs naming a file waits for it
        self.peek = peek  # (table, key) → central's row as the batch's locked read found it (None: none)
        self.central_now = central_now  # central's clock (cursor → naive, central's zone)
        self.tolerance = tolerance  # seconds a change may be dated past central's clock and still count as now
        self.max_bytes = max_bytes
        self.returning = returning  # new keys and hashes come back from the INSERT (insert_returning_works)
        self.plans = Plans(model)
        self.statements = StatementCache()
        self.rows_written = 0  # rows written by the set path (the benchmark's profile reads it)

    # ---- choosing -------------------------------------------------------------------------------------------
    def choose(self, cur: Any, parsed: list[Parsed], *, done: Mapping[str, Any], sites: Mapping[str, state.Site],
               blocked: set[str], synced: Mapping[tuple[str, str], bookkeeping.Synced] | None) -> list[Row]:
        """The messages of `parsed` the set path writes (set_select.py), each with its wave."""
        rows: list[Row] = []
        unfit: set[str] = set()
        seen_ids: dict[str, int] = {}
        seen_rows: set[tuple[str, str]] = set()
        for item in parsed:
            seen_ids[item.message_id] = seen_ids.get(item.message_id, 0) + 1
        for index, item in enumerate(parsed):
            ek = None
            try:
                if item.table is not None and item.message is not None:
                    ek = f"{item.table.identity.table}:{item.message['uuid']}"
                if item.message_id in done or seen_ids[item.message_id] > 1:
                    raise Unfit
                row = candidate(item, index, sites=sites, blocked=blocked, synced=synced, ids=self.ids,
                                peek=self.peek, model=self.model)
                if (row.table.name, row.uuid) in seen_rows:
                    raise Unfit
                seen_rows.add((row.table.name, row.uuid))
                assert item.message is not None
                data = item.message.get("data") or {}
                if self.complex_obs and row.table.name == complex_obs.TABLE \
                        and complex_obs.file_name(data.get(complex_obs.COLUMN)) is not None:
                    raise Unfit  # its file may not be at central yet: the per-row path waits for it (complex_files.py)
                convert(self.plans, self.ids, self.value_of, row.table, data, row)
                if row.update and future_dated(row, self.central_now(cur), self.tolerance):
                    raise Unfit
            except Unfit:
                if ek is not None:
                    unfit.add(ek)
                continue
            rows.append(row)
        if not rows:
            return rows
        subclass_rows(cur, self.model, self.ids, rows)
        return settle(rows, unfit, self.ids)

    # ---- writing --------------------------------------------------------------------------------------------
    def write(self, cur: Any, rows: list[Row], batch: Batch) -> dict[int, Outcome]:
        """Write `rows` (from `choose`) and their bookkeeping in the caller's transaction; their outcomes by the
        index of their message in the batch."""
        by_key = {(r.table.name, r.uuid): r for r in rows}
        waves: dict[int, dict[tuple[str, tuple[str, ...], bool], list[Row]]] = {}
        for row in rows:
            waves.setdefault(row.wave, {}).setdefault((row.table.name, row.columns, row.update), []).append(row)
        stamp = now()
        for wave in sorted(waves):
            for group in waves[wave].values():
                for part in self._parts(group, by_key):
                    if group[0].update:
                        self._update(cur, part)
                    else:
                        self._insert(cur, part)
        written: dict[str, list[Row]] = {}  # the hashes once every wave is written: one statement per table
        for row in rows:
            written.setdefault(row.table.name, []).append(row)
        for table_rows in written.values():
            returned = [r for r in table_rows if r.hash is not None]
            joined = [r for r in table_rows if r.hash is None]
            for chunk in chunks(returned, SET_ROWS):
                self._hashes(cur, chunk, stamp, returned=True)
            for chunk in chunks(joined, SET_ROWS):
                self._hashes(cur, chunk, stamp)
        return {row.index: self._applied(row, batch) for row in rows}

    def _parts(self, group: list[Row], by_key: Mapping[tuple[str, str], Row]) -> list[tuple[list[Row], list[list[Any]]]]:
        """The group's rows, keys of earlier waves filled in, in parts of at most `max_bytes` of statement (twice
        a message's JSON plus 16 bytes a column bounds its values, as for the per-row path's grouped INSERTs)."""
        parts: list[tuple[list[Row], list[Any]]] = []
        members: list[Row] = []
        params: list[list[Any]] = []  # each member's values
        size = 0
        for row in group:
            values = [by_key[(v.table, v.uuid)].key if isinstance(v, Need) else v for v in row.values]
            if row.update:
                values.insert(0, row.key)
            elif row.table.is_subclass:
                row.key = by_key[(row.parent.table, row.parent.uuid)].key if isinstance(row.parent, Need) \
                    else row.parent
                values.append(row.key)
            else:
                values.append(row.uuid)
            bound = 2 * len(row.item.raw) + 16 * len(values)
            if members and (size + bound > self.max_bytes or len(members) >= SET_ROWS):
                parts.append((members, params))
                members, params, size = [], [], 0
            members.append(row)
            params.append(values)
            size += bound
        if members:
            parts.append((members, params))
        return parts

    def _insert(self, cur: Any, part: tuple[list[Row], list[list[Any]]]) -> None:
        members, params = part
        table, cols = members[0].table, members[0].columns
        target = (*cols, table.key if table.is_subclass else "uuid")
        prefix = self.statements.get(("insert", table.name, cols), lambda: sql(
            "INSERT INTO {} ({}) VALUES ", quote(table.name), columns(target)))
        if self.returning:  # each new row's key (or uuid) and hash, computed from the row as stored
            returning = self.statements.get(("returning", table.name), lambda: sql(
                " RETURNING {}, {}, {}", quote(table.key), quote(table.key if table.is_subclass else "uuid"),
                hash_sql(table)))
            cur.execute(sql("{}{}{}", prefix, value_rows(cur.connection, params), returning))
            back = cur.fetchall()
            if len(back) != len(members):
                raise pymysql.err.DataError(f"{table.name}: {len(back)} of {len(members)} set rows inserted")
            self.rows_written += len(members)
            if table.is_subclass:
                by_key = {k: h for k, _same, h in back}
                for row in members:
                    row.hash = by_key[row.key]
                    self.ids.subclass_rows.put((table.name, row.key), True)
                return
            by_uuid = {str(u).lower(): (k, h) for k, u, h in back}
            for row in members:
                row.key, row.hash = by_uuid[row.uuid]
                self.ids.remember(table.identity.table, row.uuid, row.key)
            return
        # one multi-row statement (its keys are consecutive where the server promises it)
        cur.execute(sql("{}{}", prefix, value_rows(cur.connection, params)))
        if cur.rowcount != len(members):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(members)} set rows inserted")
        self.rows_written += len(members)
        if table.is_subclass:
            for row in members:
                self.ids.subclass_rows.put((table.name, row.key), True)
            return
        if self.consecutive and cur.lastrowid:
            keys = list(range(cur.lastrowid, cur.lastrowid + len(members)))
        else:
            cur.execute(sql("SELECT uuid, {} FROM {} WHERE uuid IN ({})", quote(table.key), quote(table.name),
                            placeholders(len(members))), [r.uuid for r in members])
            found = {str(u).lower(): k for u, k in cur.fetchall()}
            keys = [found[r.uuid] for r in members]
        for row, key in zip(members, keys, strict=True):
            row.key = key
            self.ids.remember(table.identity.table, row.uuid, key)

    def _update(self, cur: Any, part: tuple[list[Row], list[list[Any]]]) -> None:
        """One UPDATE of a table's rows (one column set): joined to their new values by key. Central's rows are
        locked since the batch read them, so each exists; the server converts each value as for the per-row path's
        UPDATE (strict mode refuses the same values)."""
        members, params = part
        table, cols = members[0].table, members[0].columns
        self.rows_written += len(members)
        if not cols:
            return
        names = [quote(f"dbsync_{i}") for i in range(len(cols) + 1)]
        first = self.statements.get(("update-first", len(names)), lambda: sql(
            "SELECT {}", join(sql("%s AS {}", n) for n in names)))
        other = self.statements.get(("update-other", len(names)), lambda: sql(
            " UNION ALL SELECT {}", placeholders(len(names))))
        setting = self.statements.get(("update-set", table.name, cols), lambda: join(
            sql("{}.{} = dbsync_v.{}", quote(table.name), quote(c), n) for c, n in zip(cols, names[1:], strict=True)))
        cur.execute(sql("UPDATE {t} JOIN ({}{}) AS dbsync_v ON {t}.{} = dbsync_v.{} SET {}", first,
                        join([other] * (len(members) - 1), separator=""), quote(table.key), names[0], setting, t=quote(table.name)),
                    [value for values in params for value in values])

    def _hashes(self, cur: Any, rows: list[Row], stamp: Any, *, returned: bool = False) -> None:
        """entity_hash of the rows just written: the server's hash of each row (`returned`: as their INSERT
        returned it; else computed by a join to the rows by key), its site as owner, the source position of its
        message; one statement for the table's rows."""
        table = rows[0].table
        statement = self.statements.get(("hash", table.name, returned),
                                        lambda: _hash_statement(self.s, table, returned=returned))
        no_position = [None] * len(POSITION_COLUMNS)
        doc = orjson.dumps([[r.hash if returned else r.key, r.uuid, r.site, *(_position(r) or no_position)]
                            for r in rows], default=_default)
        cur.execute(statement, (table.name, stamp, doc.decode()))
        # a new entry counts 1; a changed one 2, an unchanged one 0: only new rows' entries can be counted
        if not any(r.update for r in rows) and cur.rowcount < len(rows):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(rows)} entity hashes written")

    def _applied(self, row: Row, batch: Batch) -> Outcome:
        """The per-row path's bookkeeping of an applied message (entity hash aside: written above)."""
        item, table = row.item, row.table
        count, _ = batch.sites.get(row.site, (0, ""))
        batch.sites[row.site] = (count + 1, item.message_id)
        if self.rest_enabled and table.name in REST_RESOURCES:
            resource, sub = REST_RESOURCES[table.name]
            batch.rest.append((resource, sub, row.uuid))
        batch.digests[item.message_id] = item.digest()
        batch.handled.append(item.message_id)
        batch.owners.setdefault((table.name, row.uuid), row.site)
        batch.ours.add((table.name, row.uuid))
        return Outcome(item.message_id, "applied", table.name, row.uuid)


def _position(row: Row) -> list[Any] | None:
    if row.position is None:
        return None
    values = list(row.position.row_values())
    sent = values[-1]
    values[-1] = None if sent is None else sent.isoformat(sep=" ")
    return values


def _path(index: int) -> Sql:
    """The JSON path of a row document's `index`th value."""
    return sql("'$[" + str(int(index)) + "]'")  # a number in a constant: no value ever goes into SQL text


def _hash_statement(schema: Sql, table: SyncedTable, *, returned: bool = False) -> Sql:
    """entity_hash rows of a table's rows (the per-row path's write_entity_hashes, as one INSERT … SELECT): with
    the hashes in the document (`returned`), or by key, the hash computed from the row joined."""
    names = ("dbsync_k", "dbsync_u", "dbsync_s", *(f"dbsync_{c}" for c in POSITION_COLUMNS))
    types = ["CHAR(64)" if returned else "BIGINT", "VARCHAR(255)", "VARCHAR(255)", "VARCHAR(255)", "BIGINT",
             "VARCHAR(255)", "BIGINT", "BIGINT", "VARCHAR(40)"]
    # the UPDATE names entity_hash's columns by table: the selected OpenMRS table may have columns of these names
    keep = join(sql("{c}=IF(VALUES(src_pos) IS NULL, {c}, VALUES({v}))", c=quote("entity_hash", c), v=quote(c))
                for c in POSITION_COLUMNS)
    source = sql("JSON_TABLE(%s, '$[*]' COLUMNS ({})) AS dbsync_j",
                 join(sql("{} {} PATH {}", quote(n), sql(t), _path(i))
                      for i, (n, t) in enumerate(zip(names, types, strict=True))))
    if returned:
        hashed, rows = sql("dbsync_k"), source
    else:
        hashed = hash_sql(table)
        rows = sql("{} JOIN {} ON {}.{} = dbsync_k", source, quote(table.name), quote(table.name), quote(table.key))
    return sql(
        "INSERT INTO {}.entity_hash (table_name, entity_uuid, hash, site, owner, date_synced, {}) "
        "SELECT %s, dbsync_u, {}, dbsync_s, dbsync_s, %s, {} FROM {} "
        "ON DUPLICATE KEY UPDATE entity_hash.hash=VALUES(hash), entity_hash.site=VALUES(site), "
        "entity_hash.owner=COALESCE(entity_hash.owner, VALUES(owner)), entity_hash.date_synced=VALUES(date_synced), {}",
        schema, columns(POSITION_COLUMNS), hashed, join(quote(n) for n in names[3:]), rows, keep)
