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
- the entity hashes (computed by the server from the rows just written, with the source position of each
  message) are one `INSERT … SELECT … JOIN` per table and wave, the same statement for any number of rows;
- applied ids, status counts and REST calls join the batch's bookkeeping (bookkeeping.write_batch) as the per-row
  path's do.

Any error fails the batch as a per-row error does: the transaction rolls back and apply replays the batch message
by message (savepoints, no set path), so one bad row still parks only its own message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pymysql

from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.rules import REST_RESOURCES
from dbsync_cli.receiver import bookkeeping, state
from dbsync_cli.receiver.batch import Batch, Outcome, now
from dbsync_cli.receiver.conflict import hash_sql
from dbsync_cli.receiver.guard import COLUMNS as POSITION_COLUMNS
from dbsync_cli.receiver.message import Parsed
from dbsync_cli.receiver.resolve import UuidToId
from dbsync_cli.receiver.set_select import Need, Plans, Row, Unfit, candidate, convert, settle, subclass_rows
from dbsync_cli.sql import Sql, StatementCache, columns, join, quote, sql

log = logging.getLogger("dbsync.apply")

#: bytes of one statement's JSON document at most (also at most half the server's max_allowed_packet)
SET_BYTES = 1_000_000


def json_table_works(cur: Any) -> bool:
    """Whether central's server has JSON_TABLE (MariaDB 10.6+, MySQL 8.0.4+): the set path needs it."""
    try:
        cur.execute("SELECT a FROM JSON_TABLE('[[1]]', '$[*]' COLUMNS (a BIGINT PATH '$[0]')) AS t")
        cur.fetchall()
    except pymysql.MySQLError:
        return False
    return True


def _default(value: Any) -> Any:
    raise TypeError(type(value).__name__)


class SetApply:
    def __init__(self, model: SchemaModel, ids: UuidToId, value_of: Callable[..., Any], schema: Sql, *,
                 consecutive: bool, rest_enabled: bool, held: Callable[[str, Any], bool],
                 max_bytes: int = SET_BYTES) -> None:
        self.model = model
        self.ids = ids
        self.value_of = value_of  # Converter.value: a DATETIME in central's zone, a TIMESTAMP in UTC
        self.s = schema
        self.consecutive = consecutive
        self.rest_enabled = rest_enabled
        self.held = held  # (table, key) → central holds the row (the batch's locked read found it)
        self.max_bytes = max_bytes
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
                                held=self.held, model=self.model)
                if (row.table.name, row.uuid) in seen_rows:
                    raise Unfit
                seen_rows.add((row.table.name, row.uuid))
                assert item.message is not None
                convert(self.plans, self.ids, self.value_of, row.table, item.message.get("data") or {}, row)
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
        waves: dict[int, dict[tuple[str, tuple[str, ...]], list[Row]]] = {}
        for row in rows:
            waves.setdefault(row.wave, {}).setdefault((row.table.name, row.columns), []).append(row)
        stamp = now()
        for wave in sorted(waves):
            for group in waves[wave].values():
                for part in self._parts(group, by_key):
                    self._insert(cur, part, by_key)
            written: dict[str, list[Row]] = {}
            for group in waves[wave].values():
                written.setdefault(group[0].table.name, []).extend(group)
            for table_rows in written.values():
                self._hashes(cur, table_rows, stamp)
        return {row.index: self._applied(row, batch) for row in rows}

    def _parts(self, group: list[Row], by_key: Mapping[tuple[str, str], Row]) -> list[tuple[list[Row], bytes]]:
        """The group's rows as JSON documents of at most `max_bytes` (keys of earlier waves filled in)."""
        parts: list[tuple[list[Row], bytes]] = []
        members: list[Row] = []
        docs: list[bytes] = []
        size = 0
        for row in group:
            values = [by_key[(v.table, v.uuid)].key if isinstance(v, Need) else v for v in row.values]
            if row.table.is_subclass:
                row.key = by_key[(row.parent.table, row.parent.uuid)].key if isinstance(row.parent, Need) \
                    else row.parent
                values.append(row.key)
            else:
                values.append(row.uuid)
            doc = orjson.dumps(values, default=_default)
            if members and size + len(doc) > self.max_bytes:
                parts.append((members, b"[" + b",".join(docs) + b"]"))
                members, docs, size = [], [], 0
            members.append(row)
            docs.append(doc)
            size += len(doc) + 1
        if members:
            parts.append((members, b"[" + b",".join(docs) + b"]"))
        return parts

    def _insert(self, cur: Any, part: tuple[list[Row], bytes], by_key: Mapping[tuple[str, str], Row]) -> None:
        members, doc = part
        table, cols = members[0].table, members[0].columns
        target = (*cols, table.key if table.is_subclass else "uuid")
        statement = self.statements.get(("insert", table.name, cols), lambda: sql(
            "INSERT INTO {} ({}) SELECT {} FROM JSON_TABLE(%s, '$[*]' COLUMNS (dbsync_n FOR ORDINALITY, {})) "
            "AS dbsync_j ORDER BY dbsync_n", quote(table.name), columns(target),
            join(quote(f"dbsync_{i}") for i in range(len(target))),
            join(sql("{} {} PATH {}", quote(f"dbsync_{i}"), _json_type(table, c), _path(i))
                 for i, c in enumerate(target))))
        cur.execute(statement, (doc.decode(),))  # text: a bytes parameter would be a binary string
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
                            join([sql("%s")] * len(members))), [r.uuid for r in members])
            found = {str(u).lower(): k for u, k in cur.fetchall()}
            keys = [found[r.uuid] for r in members]
        for row, key in zip(members, keys, strict=True):
            row.key = key
            self.ids.remember(table.identity.table, row.uuid, key)

    def _hashes(self, cur: Any, rows: list[Row], stamp: Any) -> None:
        """entity_hash of the rows just written: the server's hash of each row, its site as owner, the source
        position of its message; one statement for the table's rows of a wave."""
        table = rows[0].table
        statement = self.statements.get(("hash", table.name), lambda: _hash_statement(self.s, table))
        no_position = [None] * len(POSITION_COLUMNS)
        doc = orjson.dumps([[r.key, r.uuid, r.site, *(_position(r) or no_position)] for r in rows],
                           default=_default)
        cur.execute(statement, (table.name, stamp, doc.decode()))
        if cur.rowcount < len(rows):
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
    return Sql("'$[" + str(int(index)) + "]'")


def _json_type(table: SyncedTable, column: str) -> Sql:
    """A BIT column takes a number (text would be a bit string); everything else is converted by the INSERT."""
    info = table.info.columns.get(column)
    return sql("BIGINT") if info is not None and info.data_type == "bit" else sql("LONGTEXT")


def _hash_statement(schema: Sql, table: SyncedTable) -> Sql:
    """entity_hash rows of a table's rows by key (the per-row path's write_entity_hashes, as one INSERT … SELECT)."""
    names = ("dbsync_k", "dbsync_u", "dbsync_s", *(f"dbsync_{c}" for c in POSITION_COLUMNS))
    types = ["BIGINT", "VARCHAR(255)", "VARCHAR(255)", "VARCHAR(255)", "BIGINT", "VARCHAR(255)", "BIGINT",
             "BIGINT", "VARCHAR(40)"]
    # the UPDATE names entity_hash's columns by table: the selected OpenMRS table may have columns of these names
    keep = join(sql("{c}=IF(VALUES(src_pos) IS NULL, {c}, VALUES({v}))", c=quote("entity_hash", c), v=quote(c))
                for c in POSITION_COLUMNS)
    return sql(
        "INSERT INTO {}.entity_hash (table_name, entity_uuid, hash, site, owner, date_synced, {}) "
        "SELECT %s, dbsync_u, {}, dbsync_s, dbsync_s, %s, {} FROM JSON_TABLE(%s, '$[*]' COLUMNS ({})) AS dbsync_j "
        "JOIN {} ON {}.{} = dbsync_k "
        "ON DUPLICATE KEY UPDATE entity_hash.hash=VALUES(hash), entity_hash.site=VALUES(site), "
        "entity_hash.owner=COALESCE(entity_hash.owner, VALUES(owner)), entity_hash.date_synced=VALUES(date_synced), {}",
        schema, columns(POSITION_COLUMNS), hash_sql(table),
        join(quote(n) for n in names[3:]),
        join(sql("{} {} PATH {}", quote(n), Sql(t), _path(i)) for i, (n, t) in enumerate(zip(names, types, strict=True))),
        quote(table.name), quote(table.name), quote(table.key), keep)
