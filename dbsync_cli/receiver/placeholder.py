"""Placeholders: a row that only holds a uuid, for a reference whose real row has not arrived yet.

Like EIP's light entities: voided/retired with reason `[placeholder]`, required columns filled with defaults (the
central default user, an existing row for other required references, the uuid for text so unique keys hold). The
real message later overwrites it; a placeholder is never a conflict. A subclass placeholder (a reference to
`patient`) also gets its parent (`person`) so the foreign key holds.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid as uuidlib
from typing import Any

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.openmrs.rules import (
    AUDIT_COLUMNS,
    PLACEHOLDER_DATE_COLUMNS,
    PLACEHOLDER_FLAG_COLUMNS,
    PLACEHOLDER_REASON,
    PLACEHOLDER_REASON_COLUMNS,
    PLACEHOLDER_USER_COLUMNS,
    USERS_TABLE,
)
from dbsync_cli.sql import columns, placeholders, quote, sql

_LENGTH = re.compile(r"\((\d+)")
_TEXT = {"char", "varchar"}


def is_placeholder(row: dict[str, Any]) -> bool:
    return any(row.get(column) == PLACEHOLDER_REASON for column in PLACEHOLDER_REASON_COLUMNS)


def _default(cur: Any, model: SchemaModel, info: TableInfo, column: Column, uuid: str, user: int) -> Any:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    fk = info.foreign_keys.get(column.name)
    target = fk.ref_table if fk else (USERS_TABLE if column.name in AUDIT_COLUMNS else None)
    if target == USERS_TABLE:
        return user
    if target is not None:
        key = model.tables[target].primary_key[0]
        cur.execute(sql("SELECT MIN({}) FROM {}", quote(key), quote(target)))
        found = cur.fetchone()[0]
        if found is not None:
            return found
        return create(cur, model, target, str(uuidlib.uuid4()), user)
    kind = column.data_type
    if kind in _TEXT:
        match = _LENGTH.search(column.column_type)
        return uuid[: int(match.group(1))] if match else uuid
    if kind.endswith("text"):
        return PLACEHOLDER_REASON
    if kind in ("datetime", "timestamp"):
        return now
    if kind == "date":
        return now.date()
    if kind == "time":
        return "00:00:00"
    return 0


def _insert(cur: Any, table: str, values: dict[str, Any]) -> None:
    cur.execute(sql("INSERT INTO {} ({}) VALUES ({})", quote(table), columns(values), placeholders(len(values))),
                list(values.values()))


def create(cur: Any, model: SchemaModel, table: str, uuid: str, user: int) -> Any:
    """Insert a placeholder for `uuid` in `table` (and its identity parent); return the shared key."""
    identity = model.identity_of(table)
    if identity is None:
        raise ValueError(f"cannot create a placeholder in {table}: it has no uuid")
    if identity.table != table:
        parent_key = create(cur, model, identity.table, uuid, user)
        create_subclass_row(cur, model, table, parent_key, uuid, user)
        return parent_key
    info = model.tables[table]
    _insert(cur, table, _values(cur, model, info, uuid, user))
    return cur.lastrowid


def create_subclass_row(cur: Any, model: SchemaModel, table: str, key: Any, uuid: str, user: int) -> None:
    """The subclass half (e.g. `patient`) for an existing parent row (e.g. `person`)."""
    _insert(cur, table, _values(cur, model, model.tables[table], uuid, user, key=key))


def _values(cur: Any, model: SchemaModel, info: TableInfo, uuid: str, user: int, key: Any = None) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    values: dict[str, Any] = {}
    pk = info.primary_key[0]
    if key is not None:
        values[pk] = key
    for column in info.columns.values():
        if column.name in values or column.auto_increment:
            continue
        if column.name == "uuid":
            values["uuid"] = uuid
        elif column.name in PLACEHOLDER_FLAG_COLUMNS:
            values[column.name] = 1
        elif column.name in PLACEHOLDER_REASON_COLUMNS:
            values[column.name] = PLACEHOLDER_REASON
        elif column.name in PLACEHOLDER_DATE_COLUMNS:
            values[column.name] = now
        elif column.name in PLACEHOLDER_USER_COLUMNS:
            values[column.name] = user
        elif not column.nullable and (column.default is None or column.name in info.foreign_keys):
            # a NOT NULL reference needs a real target even when the schema declares a default such as 0
            values[column.name] = _default(cur, model, info, column, uuid, user)
    return values
