"""Central's half of `dbsync verify`: a site's rows as central holds them, in the canonical form the site computes.

Central's rows of a site are the entities `entity_hash` says the site owns and central still has. Each is turned
back into its wire form — central ids to uuids (one lookup per referenced table and page), DATETIME from central's
zone, the `|site` suffix taken off — and digested by `openmrs.canonical`, as the site digests its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pymysql.cursors

from dbsync_cli import complex_obs
from dbsync_cli.lru import LruMap
from dbsync_cli.openmrs import SchemaModel, SyncedTable, class_table
from dbsync_cli.openmrs.canonical import Buckets, row_digest
from dbsync_cli.openmrs.model import Identity
from dbsync_cli.openmrs.rules import ATTRIBUTE_ID_VALUES, PLACEHOLDER_REASON_COLUMNS, PLACEHOLDER_REASONS
from dbsync_cli.sql import Sql, chunks, placeholders, quote, sql
from dbsync_cli.values import Converter, wire_converter
from dbsync_cli.wire import canonical_uuid

PAGE = 1000
UUID_ALIAS = "dbsync_verify_uuid"


class CentralRows:
    """Digests of central's copies of one site's rows (read with the session at +00:00, as apply writes them)."""

    def __init__(self, conn: Any, state: Sql, model: SchemaModel, tz: dt.tzinfo, site: str,
                 files: Path | None = None) -> None:
        self.conn = conn
        self.files = files  # receiver.complex_obs_dir: an obs's digest covers its file's
        self.s = state
        self.model = model
        self.tz = tz
        self.site = site
        self.uuids = LruMap(200_000)  # (identity table, central id) → uuid
        self.converters: dict[str, list[tuple[str, Converter]]] = {}
        self.formats: dict[Any, str | None] | None = None

    # ---- which rows ------------------------------------------------------------------------------------------
    def owned(self, table: str, *, prefix: str | None = None) -> Iterator[list[str]]:
        """Pages of the uuids of `table` the site owns (tombstones included: `load` drops rows central lacks)."""
        after = ""
        like = [] if prefix is None else [f"{prefix}%"]
        while True:
            with self.conn.cursor() as cur:
                cur.execute(sql("SELECT entity_uuid FROM {}.entity_hash WHERE table_name = %s AND owner = %s "
                                "AND entity_uuid > %s{} ORDER BY entity_uuid LIMIT %s", self.s,
                                sql(" AND entity_uuid LIKE %s") if prefix is not None else sql("")),
                            [table, self.site, after, *like, PAGE])
                page = [row[0] for row in cur.fetchall()]
            if not page:
                return
            yield [canonical_uuid(u) for u in page]
            after = page[-1]

    def owners(self, table: str, uuids: Iterable[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        for part in chunks(sorted(set(uuids))):
            with self.conn.cursor() as cur:
                cur.execute(sql("SELECT entity_uuid, owner FROM {}.entity_hash WHERE table_name = %s "
                                "AND entity_uuid IN ({})", self.s, placeholders(len(part))), [table, *part])
                found.update({canonical_uuid(u): o for u, o in cur.fetchall()})
        return found

    # ---- their canonical form --------------------------------------------------------------------------------
    def load(self, table: SyncedTable, uuids: list[str]) -> dict[str, dict[str, Any]]:
        """Central's rows with these uuids (a subclass through its parent), keyed by canonical uuid."""
        rows: dict[str, dict[str, Any]] = {}
        for part in chunks(uuids):
            if table.is_subclass:
                ident = table.identity
                query = sql("SELECT t.*, p.{} AS {} FROM {} t JOIN {} p ON p.{} = t.{} WHERE p.{} IN ({})",
                            quote("uuid"), quote(UUID_ALIAS), quote(table.name), quote(ident.table),
                            quote(ident.key), quote(table.key), quote("uuid"), placeholders(len(part)))
            else:
                query = sql("SELECT t.*, t.{} AS {} FROM {} t WHERE t.{} IN ({})", quote("uuid"), quote(UUID_ALIAS),
                            quote(table.name), quote("uuid"), placeholders(len(part)))
            with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(query, part)
                for row in cur.fetchall():
                    rows[canonical_uuid(row.pop(UUID_ALIAS))] = row
        return rows

    def digests(self, table: SyncedTable, uuids: list[str],
                columns: list[str] | None = None) -> dict[str, tuple[str, bool]]:
        """uuid → (digest over `columns`, default all, and is a placeholder) of the rows central has."""
        rows = self.load(table, uuids)
        self._resolve(table, rows.values())
        out: dict[str, tuple[str, bool]] = {}
        files = self.files if table.name == complex_obs.TABLE else None
        for uuid, row in rows.items():
            data = self.data(table, row)
            out[uuid] = (row_digest(table, uuid, data, columns, complex_obs.digest_for_verify(
                files, data.get(complex_obs.COLUMN))), _is_placeholder(row))
        return out

    def buckets(self, table: SyncedTable, length: int, columns: list[str] | None = None) -> Buckets:
        found = Buckets(length)
        for page in self.owned(table.name):
            for uuid, (digest, _placeholder) in self.digests(table, page, columns).items():
                found.add(uuid, digest)
        return found

    def data(self, table: SyncedTable, row: dict[str, Any]) -> dict[str, Any]:
        """The wire form of a central row, as the site would send it."""
        data: dict[str, Any] = {}
        for column, convert in self._converters(table):
            value = row[column]
            ref = table.references.get(column)
            if ref is not None and ref.identity is not None:
                data[column] = None if value is None else {"$ref": ref.table,
                                                          "uuid": self.uuids.get((ref.identity.table, value))}
            elif column in table.site_suffix_columns and isinstance(value, str) and value.endswith(f"|{self.site}"):
                data[column] = value[: -len(self.site) - 1]
            else:
                data[column] = convert(value)
        if table.name in ATTRIBUTE_ID_VALUES:
            value_column, type_column, _ = ATTRIBUTE_ID_VALUES[table.name]
            identity = self._attribute_identity(table, row[type_column])
            raw = row[value_column]
            if identity is not None and raw and str(raw).isdigit():
                data[value_column] = {"$ref": identity[0], "uuid": self.uuids.get((identity[1].table, int(raw)))}
        return data

    def _converters(self, table: SyncedTable) -> list[tuple[str, Converter]]:
        if table.name not in self.converters:
            self.converters[table.name] = [(c, wire_converter(table.info.columns[c], self.tz))
                                           for c in table.data_columns]
        return self.converters[table.name]

    def _attribute_identity(self, table: SyncedTable, type_id: Any) -> tuple[str, Identity] | None:
        if self.formats is None:
            _, type_column, format_column = ATTRIBUTE_ID_VALUES[table.name]
            type_table = table.references[type_column].table
            type_key = self.model.tables[type_table].primary_key[0]
            with self.conn.cursor() as cur:
                cur.execute(sql("SELECT {}, {} FROM {}", quote(type_key), quote(format_column), quote(type_table)))
                self.formats = {tid: class_table(fmt or "") for tid, fmt in cur.fetchall()}
        target = self.formats.get(type_id)
        identity = self.model.identity_of(target) if target and target in self.model.tables else None
        return None if identity is None or target is None else (target, identity)

    def _resolve(self, table: SyncedTable, rows: Iterable[dict[str, Any]]) -> None:
        """Fill the id → uuid cache for every reference of these rows: one query per referenced table."""
        need: dict[Identity, set[Any]] = {}
        rows = list(rows)
        for column, ref in table.references.items():
            if ref.identity is None:
                continue
            ids = need.setdefault(ref.identity, set())
            ids.update(r[column] for r in rows if r[column] is not None)
        if table.name in ATTRIBUTE_ID_VALUES:
            value_column, type_column, _ = ATTRIBUTE_ID_VALUES[table.name]
            for r in rows:
                found = self._attribute_identity(table, r[type_column])
                if found is not None and r[value_column] and str(r[value_column]).isdigit():
                    need.setdefault(found[1], set()).add(int(r[value_column]))
        for identity, ids in need.items():
            missing = [i for i in ids if self.uuids.get((identity.table, i)) is None]
            for part in chunks(missing):
                with self.conn.cursor() as cur:
                    cur.execute(sql("SELECT {}, {} FROM {} WHERE {} IN ({})", quote(identity.key), quote("uuid"),
                                    quote(identity.table), quote(identity.key), placeholders(len(part))), part)
                    for key, uuid in cur.fetchall():
                        self.uuids.put((identity.table, key), uuid)


def _is_placeholder(row: dict[str, Any]) -> bool:
    return any(row.get(c) in PLACEHOLDER_REASONS for c in PLACEHOLDER_REASON_COLUMNS)
