"""The sync model of an OpenMRS database: which tables sync, how a row is identified, how references travel.

Everything is derived from the introspected schema, so module tables and later OpenMRS versions work when
configured; the literal OpenMRS knowledge it applies (the EIP table set, secrets, suffixes, attribute ids,
undeclared references) lives in `rules`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dbsync_cli.i18n import _
from dbsync_cli.openmrs.introspect import TableInfo, introspect
from dbsync_cli.openmrs.rules import (
    ATTRIBUTE_ID_VALUES,
    AUDIT_COLUMNS,
    DEFAULT_SYNCED_TABLES,
    SECRET_COLUMNS,
    SITE_SUFFIX_COLUMNS,
    UNDECLARED_REFERENCES,
    USERS_TABLE,
)
from dbsync_cli.sql import Sql, quote, sql


class SchemaError(Exception):
    """The live schema does not support what the configuration asks for (one line, names the table)."""


@dataclass(frozen=True)
class Identity:
    """Where a table's rows get their uuid: the table itself, or the parent a subclass shares its primary key with."""

    table: str  # table that holds the uuid column
    key: str  # its integer primary key; a subclass row's key has the same value


@dataclass(frozen=True)
class Reference:
    column: str
    table: str  # the referenced table
    identity: Identity | None  # None: the target has no uuid, the value travels as it is (e.g. a role name)

    @property
    def by_uuid(self) -> bool:
        return self.identity is not None


@dataclass
class SyncedTable:
    name: str
    info: TableInfo
    key: str
    identity: Identity
    references: dict[str, Reference] = field(default_factory=dict)
    secret_columns: tuple[str, ...] = ()
    site_suffix_columns: tuple[str, ...] = ()
    uuid_indexed: bool = False

    @property
    def is_subclass(self) -> bool:
        return self.identity.table != self.name

    @property
    def data_columns(self) -> list[str]:
        """Columns a sync message carries: all but the local key, the uuid (sent beside data) and secrets."""
        skip = {self.key, "uuid", *self.secret_columns}
        return [c for c in self.info.columns if c not in skip]

    def describe(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "key": self.key,
            "identity": f"{self.identity.table}.uuid" + ("" if not self.is_subclass else f" (via {self.key})"),
            "uuid_indexed": self.uuid_indexed,
            "references": {c: r.table + ("" if r.by_uuid else " (by value)") for c, r in self.references.items()},
            "secret_columns": list(self.secret_columns),
            "site_suffix_columns": list(self.site_suffix_columns),
            "attribute_id_value": self.name in ATTRIBUTE_ID_VALUES,
        }


class SchemaModel:
    """Tables of one database plus the sync model of the configured tables."""

    def __init__(self, database: str, tables: dict[str, TableInfo], synced: Iterable[str] = DEFAULT_SYNCED_TABLES):
        self.database = database
        self.tables = tables
        self._identities: dict[str, Identity | None] = {}
        self.synced: dict[str, SyncedTable] = {}
        for name in synced:
            if name not in tables:
                raise SchemaError(_("synced table {table!r} does not exist in database {database!r}").format(
                    table=name, database=database))
            self.synced[name] = self._derive(tables[name])

    @classmethod
    def load(cls, conn: Any, database: str, synced: Iterable[str] | None = None) -> SchemaModel:
        return cls(database, introspect(conn, database), synced if synced is not None else DEFAULT_SYNCED_TABLES)

    def identity_of(self, table: str) -> Identity | None:
        """The uuid holder for a table: itself, or (for a subclass keyed by its parent's key) the parent's (asked
        for every reference apply resolves: remembered per table)."""
        if table not in self._identities:
            self._identities[table] = self._identity_of(table)
        return self._identities[table]

    def _identity_of(self, table: str, _seen: frozenset[str] = frozenset()) -> Identity | None:
        info = self.tables.get(table)
        if info is None or table in _seen or len(info.primary_key) != 1:
            return None
        key = info.primary_key[0]
        if info.has_uuid:
            return Identity(table, key)
        parent = info.foreign_keys.get(key)
        if parent is None:
            return None
        return self._identity_of(parent.ref_table, _seen | {table})

    def _derive(self, info: TableInfo) -> SyncedTable:
        if len(info.primary_key) != 1:
            raise SchemaError(_("synced table {table!r} needs a single-column primary key").format(table=info.name))
        identity = self.identity_of(info.name)
        if identity is None:
            raise SchemaError(_("synced table {table!r} has no uuid column and its primary key is not a parent "
                                "key").format(table=info.name))
        key = info.primary_key[0]
        refs = {
            col: Reference(col, fk.ref_table, self.identity_of(fk.ref_table))
            for col, fk in info.foreign_keys.items()
            if col != key
        }
        implied = {c: USERS_TABLE for c in AUDIT_COLUMNS}
        implied.update({c: t for (tbl, c), t in UNDECLARED_REFERENCES.items() if tbl == info.name})
        for col, target in implied.items():
            column = info.columns.get(col)
            if column is not None and column.is_integer and col not in refs and target in self.tables:
                refs[col] = Reference(col, target, self.identity_of(target))
        return SyncedTable(
            name=info.name,
            info=info,
            key=key,
            identity=identity,
            references=refs,
            secret_columns=tuple(c for c in SECRET_COLUMNS.get(info.name, ()) if c in info.columns),
            site_suffix_columns=tuple(c for c in SITE_SUFFIX_COLUMNS.get(info.name, ()) if c in info.columns),
            uuid_indexed=identity.table == info.name and "uuid" in info.unique_single_columns,
        )

    def table(self, name: str) -> SyncedTable:
        try:
            return self.synced[name]
        except KeyError:
            raise SchemaError(_("table {table!r} is not a synced table").format(table=name)) from None

    def ident(self, table: str, column: str | None = None) -> Sql:
        """A quoted identifier, only for names the introspected schema has: never built from message text."""
        info = self.tables.get(table)
        if info is None or (column is not None and column not in info.columns):
            raise SchemaError(f"unknown {'column' if column else 'table'} {table}{'.' + column if column else ''}")
        return quote(table) if column is None else quote(column)

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.synced.values()]

    def default_user(self, cur: Any) -> int:
        """The central user that placeholders and required audit columns fall back to (the lowest id: admin)."""
        info = self.tables[USERS_TABLE]
        cur.execute(sql("SELECT MIN({}) FROM {}", quote(info.primary_key[0]), quote(info.name)))
        found = cur.fetchone()[0]
        return int(found) if found else 1


def synced_table_names(tables: list[str] | None, extra: list[str] | None) -> list[str]:
    """The configured synced set: the EIP default (or an explicit list) plus module tables."""
    names = list(tables) if tables else list(DEFAULT_SYNCED_TABLES)
    names += [t for t in extra or [] if t not in names]
    return names
