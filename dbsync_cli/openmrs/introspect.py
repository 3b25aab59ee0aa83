"""Read a live database's structure from information_schema: the only source of table and column names.

Nothing here knows OpenMRS; `dbsync_cli.openmrs.model` derives the sync model from what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # lower-case information_schema DATA_TYPE: int, datetime, timestamp, date, time, decimal, ...
    column_type: str  # full type, e.g. tinyint(1), bit(1), decimal(10,2)
    nullable: bool
    default: str | None
    auto_increment: bool
    charset: str | None = None  # information_schema CHARACTER_SET_NAME (None: not a character column)

    @property
    def is_integer(self) -> bool:
        return self.data_type in ("tinyint", "smallint", "mediumint", "int", "bigint")


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str
    ref_column: str


@dataclass
class TableInfo:
    name: str
    columns: dict[str, Column] = field(default_factory=dict)  # in ordinal order
    primary_key: tuple[str, ...] = ()
    foreign_keys: dict[str, ForeignKey] = field(default_factory=dict)  # by local column
    unique_single_columns: set[str] = field(default_factory=set)

    @property
    def has_uuid(self) -> bool:
        return "uuid" in self.columns


def _rows(conn: Any, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def introspect(conn: Any, database: str) -> dict[str, TableInfo]:
    """All base tables of `database` with columns, primary key, single-column foreign keys and unique columns."""
    tables: dict[str, TableInfo] = {}
    for (name,) in _rows(
        conn,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_TYPE='BASE TABLE'",
        (database,),
    ):
        tables[name] = TableInfo(name=name)
    for table, col, data_type, column_type, nullable, default, extra, charset in _rows(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, "
        "CHARACTER_SET_NAME "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA=%s ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (database,),
    ):
        if table in tables:
            tables[table].columns[col] = Column(
                name=col,
                data_type=str(data_type).lower(),
                column_type=str(column_type).lower(),
                nullable=nullable == "YES",
                default=default,
                auto_increment="auto_increment" in str(extra).lower(),
                charset=str(charset).lower() if charset else None,
            )
    pk: dict[str, list[str]] = {}
    composite_fk: set[tuple[str, str]] = set()
    fk_parts: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for table, constraint, col, ref_table, ref_col in _rows(
        conn,
        "SELECT TABLE_NAME, CONSTRAINT_NAME, COLUMN_NAME, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME "
        "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA=%s "
        "AND (CONSTRAINT_NAME='PRIMARY' OR (REFERENCED_TABLE_NAME IS NOT NULL AND REFERENCED_TABLE_SCHEMA=%s)) "
        "ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION",
        (database, database),
    ):
        if table not in tables:
            continue
        if constraint == "PRIMARY":
            pk.setdefault(table, []).append(col)
        else:
            fk_parts.setdefault((table, constraint), []).append((col, ref_table, ref_col))
    for (table, constraint), parts in fk_parts.items():
        if len(parts) != 1:
            composite_fk.add((table, constraint))
            continue
        col, ref_table, ref_col = parts[0]
        tables[table].foreign_keys[col] = ForeignKey(col, ref_table, ref_col)
    for table, cols in pk.items():
        tables[table].primary_key = tuple(cols)
    uniques: dict[tuple[str, str], list[str]] = {}
    for table, index, col in _rows(
        conn,
        "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA=%s AND NON_UNIQUE=0 ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        (database,),
    ):
        uniques.setdefault((table, index), []).append(col)
    for (table, _index), cols in uniques.items():
        if table in tables and len(cols) == 1:
            tables[table].unique_single_columns.add(cols[0])
    return tables
