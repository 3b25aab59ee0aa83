"""Connections and the table knowledge the oracle reads from information_schema itself."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pymysql

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def q(name: str) -> str:
    """A quoted identifier; only plain names (the OpenMRS schema's) are accepted."""
    if not _NAME.match(name):
        raise ValueError(f"unsafe identifier {name!r}")
    return f"`{name}`"


@dataclass(frozen=True)
class DbConn:
    """Where one database is: a site's, or central's."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DbConn:
        return cls(host=str(d["host"]), port=int(d["port"]), user=str(d["user"]), password=str(d.get("password", "")),
                   database=str(d["database"]))

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=self.database, autocommit=True, charset="utf8mb4", connect_timeout=20,
                               read_timeout=600, ssl_disabled=True)  # the dev servers offer no TLS; PyMySQL's
                               # attempt at it costs ~30 ms of CPU a connection

    def where(self) -> str:
        return f"{self.host}:{self.port}/{self.database}"


def fetch(conn: pymysql.connections.Connection, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


@dataclass
class TableInfo:
    name: str
    columns: dict[str, str]  # name -> data_type, in ordinal order
    pk: list[str]
    fks: dict[str, tuple[str, str]]  # column -> (referenced table, referenced column)

    @property
    def has_uuid(self) -> bool:
        return "uuid" in self.columns


class Catalog:
    """Columns, primary keys and foreign keys of every table of one database (three queries)."""

    def __init__(self, conn: pymysql.connections.Connection, database: str) -> None:
        self.tables: dict[str, TableInfo] = {}
        for table, column, dtype in fetch(conn, "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS "
                                          "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION", (database,)):
            self.tables.setdefault(table, TableInfo(table, {}, [], {})).columns[column] = dtype.lower()
        for table, column, ref_table, ref_column, constraint in fetch(
                conn, "SELECT TABLE_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME, CONSTRAINT_NAME "
                "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, "
                "ORDINAL_POSITION", (database,)):
            info = self.tables.get(table)
            if info is None:
                continue
            if constraint == "PRIMARY":
                info.pk.append(column)
            elif ref_table:
                info.fks[column] = (ref_table, ref_column)

    def identity_of(self, table: str) -> tuple[str, str | None]:
        """(table whose uuid names a row of `table`, the column of `table` joined to it; None = its own uuid).
        A table without uuid whose single primary key references a table (patient → person) takes its uuid."""
        info = self.tables[table]
        if info.has_uuid:
            return table, None
        if len(info.pk) == 1 and info.pk[0] in info.fks:
            parent, _col = info.fks[info.pk[0]]
            root, _ = self.identity_of(parent)
            if self.tables[parent].has_uuid:
                return parent, info.pk[0]
            return root, info.pk[0]
        raise ValueError(f"{table}: no uuid and no parent key; cannot name its rows")
