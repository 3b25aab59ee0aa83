"""Rows central holds that hang off a site's rows but no site sent: `dbsync verify`'s kind "added at central".

Which rows: of the tables of a patient's record (those `dbsync resync --patient` follows from `person`: patient,
names, attributes, visits, encounters, obs, orders …), each row dbsync never wrote (no `entity_hash` entry: neither
a site's row nor one an operator kept as central's), that is no placeholder, and one of whose references (never an
audit column, never through users or providers, whose rows belong to many patients) is a row this site owns; a
subclass row (a `patient`) added to a site's parent row counts too. By the project's rules such a row is central's
own (a site never changes it by a message), so verify reports it as a kind of its own, and `--repair` deletes it
only when the site's operator confirms (`verify-delete`, carried out here, at central, re-checked row by row).
"""

from __future__ import annotations

import logging
from typing import Any

import pymysql

from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.model import Identity
from dbsync_cli.openmrs.rules import (
    AUDIT_COLUMNS,
    PLACEHOLDER_REASON_COLUMNS,
    PLACEHOLDER_REASONS,
    USERS_TABLE,
)
from dbsync_cli.sql import Sql, chunks, join, placeholders, quote, sql
from dbsync_cli.wire import canonical_uuid

log = logging.getLogger("dbsync.receiver.verify")

#: the uuids of added rows one answer lists per table at most (the count is exact up to this)
MAX_LISTED = 10_000
_NOT_FOLLOWED = (USERS_TABLE, "provider")
_FK_REFUSED = 1451  # ER_ROW_IS_REFERENCED_2: another row still references it


def record_references(model: SchemaModel) -> dict[str, list[tuple[str, Identity]]]:
    """Table → [(column, referenced identity)] of the patient-record tables: the references that make a row hang
    off another row of the record (a subclass row's own key, to its parent, among them)."""
    record = {"person"} if "person" in model.synced else set()
    grown = True
    while grown:
        grown = False
        for table in model.synced.values():
            if table.name not in record and (
                    (table.is_subclass and table.identity.table in record)
                    or any(c not in AUDIT_COLUMNS and r.table in record and r.table not in _NOT_FOLLOWED
                           for c, r in table.references.items())):
                record.add(table.name)
                grown = True
    found: dict[str, list[tuple[str, Identity]]] = {}
    for name in sorted(record):
        table = model.synced[name]
        refs = [(c, r.identity) for c, r in sorted(table.references.items())
                if c not in AUDIT_COLUMNS and r.table in record and r.identity is not None]
        if table.is_subclass and table.key not in dict(refs):
            refs.append((table.key, table.identity))
        if refs:
            found[name] = refs
    return found


class AddedRows:
    """Finds (and, on the site's confirmed request, deletes) one site's rows added at central, table by table."""

    def __init__(self, conn: Any, state: Sql, model: SchemaModel, site: str) -> None:
        self.conn = conn
        self.s = state
        self.model = model
        self.site = site
        self.references = record_references(model)

    def _query(self, table: SyncedTable, column: str, ident: Identity, uuids: list[str] | None) -> Sql:
        row_uuid = sql("x.{}", quote("uuid"))
        parent = sql("JOIN {} x ON x.{} = t.{}", quote(table.identity.table), quote(table.identity.key),
                     quote(table.key)) if table.is_subclass else sql("")
        if not table.is_subclass:
            row_uuid = sql("t.{}", quote("uuid"))
        not_placeholder = [sql("(t.{c} IS NULL OR t.{c} NOT IN ({}))", placeholders(len(PLACEHOLDER_REASONS)),
                               c=quote(c)) for c in PLACEHOLDER_REASON_COLUMNS if c in table.info.columns]
        conditions = [sql("e.entity_uuid IS NULL"), *not_placeholder]
        if uuids is not None:
            conditions.append(sql("{} IN ({})", row_uuid, placeholders(len(uuids))))
        return sql("SELECT DISTINCT {u} FROM {t} t {parent} JOIN {i} r ON r.{ik} = t.{c} "
                   "JOIN {s}.entity_hash o ON o.table_name = %s AND o.entity_uuid = r.{uuid} AND o.owner = %s "
                   "LEFT JOIN {s}.entity_hash e ON e.table_name = %s AND e.entity_uuid = {u} WHERE {w} LIMIT %s",
                   u=row_uuid, t=quote(table.name), parent=parent, i=quote(ident.table), ik=quote(ident.key),
                   c=quote(column), s=self.s, uuid=quote("uuid"), w=join(conditions, " AND "))

    def find(self, table: SyncedTable, uuids: list[str] | None = None) -> list[str]:
        """The uuids of this table's rows added at central (of only these `uuids`, when given), at most MAX_LISTED."""
        found: set[str] = set()
        reasons = [c for c in PLACEHOLDER_REASON_COLUMNS if c in table.info.columns]
        for column, ident in self.references.get(table.name, []):
            for part in ([None] if uuids is None else list(chunks(uuids))):
                args: list[Any] = [ident.table, self.site, table.name]
                args += list(PLACEHOLDER_REASONS) * len(reasons)
                args += [] if part is None else list(part)
                with self.conn.cursor() as cur:
                    cur.execute(self._query(table, column, ident, part), [*args, MAX_LISTED])
                    found.update(canonical_uuid(row[0]) for row in cur.fetchall())
        self.conn.commit()
        return sorted(found)[:MAX_LISTED]

    def delete(self, wanted: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, int]]:
        """Delete these rows (table → uuids) that are still added at central; rows other rows still reference are
        tried again after the others (an obs group after its members), and kept when nothing moves. Returns
        (the uuids deleted, how many kept) per table."""
        left = {name: self.find(self.model.synced[name], uuids) for name, uuids in wanted.items() if uuids}
        deleted: dict[str, list[str]] = {name: [] for name in left}
        moved = True
        while moved and any(left.values()):
            moved = False
            for name, uuids in left.items():
                table = self.model.synced[name]
                kept = []
                for uuid in uuids:
                    try:
                        with self.conn.cursor() as cur:
                            if cur.execute(_delete(table), (uuid,)):
                                deleted[name].append(uuid)
                    except pymysql.err.IntegrityError as exc:
                        if exc.args[0] != _FK_REFUSED:
                            raise
                        kept.append(uuid)
                moved = moved or len(kept) < len(uuids)
                left[name] = kept
        self.conn.commit()
        kept_counts = {name: len(uuids) for name, uuids in left.items() if uuids}
        log.warning("verify: site %s's operator confirmed: %s deleted at central (rows added at central hanging off "
                    "the site's rows)%s", self.site, _per_table({n: len(u) for n, u in deleted.items()}),
                    f"; kept, still referenced: {_per_table(kept_counts)}" if kept_counts else "")
        return deleted, kept_counts


def _delete(table: SyncedTable) -> Sql:
    if table.is_subclass:
        ident = table.identity
        return sql("DELETE t FROM {} t JOIN {} x ON x.{} = t.{} WHERE x.{} = %s", quote(table.name),
                   quote(ident.table), quote(ident.key), quote(table.key), quote("uuid"))
    return sql("DELETE FROM {} WHERE {} = %s", quote(table.name), quote("uuid"))


def _per_table(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()) if n) or "0 rows"
