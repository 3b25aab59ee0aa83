"""Placeholders: a row that only holds a uuid, for a reference whose real row has not arrived yet.

Like EIP's light entities: voided/retired with reason `[placeholder]`, required columns filled with defaults (the
central default user, an existing row for other required references, the uuid for text so unique keys hold). The
real message later overwrites it; a placeholder is never a conflict. A subclass placeholder (a reference to
`patient`) also gets its parent (`person`) so the foreign key holds.

A required reference into a table that is empty at central gets a **filler** there: a row of the same kind with a
random uuid no site has and reason `[placeholder filler]`, recorded in `receiver_filler` in the same transaction.
Once the placeholder is overwritten nothing refers to the filler any more: the apply loop deletes fillers nothing
references, the database's declared foreign keys being the judge (`remove_fillers`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid as uuidlib
from typing import Any

import pymysql

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.openmrs.rules import (
    AUDIT_COLUMNS,
    PLACEHOLDER_DATE_COLUMNS,
    PLACEHOLDER_FILLER_REASON,
    PLACEHOLDER_FLAG_COLUMNS,
    PLACEHOLDER_REASON,
    PLACEHOLDER_REASON_COLUMNS,
    PLACEHOLDER_REASONS,
    PLACEHOLDER_USER_COLUMNS,
    USERS_TABLE,
)
from dbsync_cli.sql import Sql, columns, placeholders, quote, sql

log = logging.getLogger("dbsync.placeholder")

_LENGTH = re.compile(r"\((\d+)")
_TEXT = {"char", "varchar"}

#: fillers the apply loop tries to remove per round (each try is one DELETE the foreign keys judge)
FILLERS_PER_ROUND = 200
#: MariaDB: "Cannot delete or update a parent row: a foreign key constraint fails"
ROW_IS_REFERENCED = 1451
_LOCK_ERRORS = (1205, 1213)  # lock wait timeout, deadlock


def is_placeholder(row: dict[str, Any]) -> bool:
    """A placeholder or a filler: a row dbsync made up, never a conflict and never a site's row."""
    return any(row.get(column) in PLACEHOLDER_REASONS for column in PLACEHOLDER_REASON_COLUMNS)


def _default(cur: Any, model: SchemaModel, info: TableInfo, column: Column, uuid: str, user: int,
             fillers: Sql | None) -> Any:
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
        return _filler(cur, model, target, user, fillers)
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


def create(cur: Any, model: SchemaModel, table: str, uuid: str, user: int, *, fillers: Sql | None = None,
           reason: str = PLACEHOLDER_REASON) -> Any:
    """Insert a placeholder for `uuid` in `table` (and its identity parent); return the shared key.

    `fillers`: the state schema where the fillers this needs are recorded (None: not recorded, never removed)."""
    identity = model.identity_of(table)
    if identity is None:
        raise ValueError(f"cannot create a placeholder in {table}: it has no uuid")
    if identity.table != table:
        parent_key = create(cur, model, identity.table, uuid, user, fillers=fillers, reason=reason)
        create_subclass_row(cur, model, table, parent_key, uuid, user, fillers=fillers, reason=reason)
        return parent_key
    info = model.tables[table]
    _insert(cur, table, _values(cur, model, info, uuid, user, fillers=fillers, reason=reason))
    return cur.lastrowid


def create_subclass_row(cur: Any, model: SchemaModel, table: str, key: Any, uuid: str, user: int, *,
                        fillers: Sql | None = None, reason: str = PLACEHOLDER_REASON) -> None:
    """The subclass half (e.g. `patient`) for an existing parent row (e.g. `person`)."""
    _insert(cur, table, _values(cur, model, model.tables[table], uuid, user, key=key, fillers=fillers,
                                reason=reason))


def _filler(cur: Any, model: SchemaModel, table: str, user: int, fillers: Sql | None) -> Any:
    """A row in `table` (empty at central) for a placeholder's required reference; recorded, in the caller's
    transaction, for `remove_fillers`."""
    uuid = str(uuidlib.uuid4())
    key = create(cur, model, table, uuid, user, fillers=fillers, reason=PLACEHOLDER_FILLER_REASON)
    if fillers is not None:
        cur.execute(sql("INSERT INTO {}.receiver_filler (table_name, row_key, uuid, date_created) "
                        "VALUES (%s, %s, %s, %s)", fillers), (table, str(key), uuid, _now(precise=True)))
    log.info("placeholder filler %s %s (key %s): %s is empty at central", table, uuid, key, table)
    return key


def _now(precise: bool = False) -> dt.datetime:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return now if precise else now.replace(microsecond=0)


def _values(cur: Any, model: SchemaModel, info: TableInfo, uuid: str, user: int, key: Any = None, *,
            fillers: Sql | None = None, reason: str = PLACEHOLDER_REASON) -> dict[str, Any]:
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
            values[column.name] = reason
        elif column.name in PLACEHOLDER_DATE_COLUMNS:
            values[column.name] = now
        elif column.name in PLACEHOLDER_USER_COLUMNS:
            values[column.name] = user
        elif not column.nullable and (column.default is None or column.name in info.foreign_keys):
            # a NOT NULL reference needs a real target even when the schema declares a default such as 0
            values[column.name] = _default(cur, model, info, column, uuid, user, fillers)
    return values


def remove_fillers(conn: Any, model: SchemaModel, schema: Sql, limit: int = FILLERS_PER_ROUND) -> int:
    """Delete up to `limit` recorded fillers that nothing references any more (the ones tried longest ago
    first); returns how many were removed. A DELETE the foreign keys refuse (1451) keeps its filler for a later
    round; a filler referenced through a cascading foreign key is kept without trying (the delete would take the
    referencing row with it). Commits."""
    removed = 0
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, table_name, row_key FROM {}.receiver_filler ORDER BY date_checked, id LIMIT %s",
                        schema), (limit,))
        rows = sorted(cur.fetchall(), key=lambda r: -int(r[0]))  # newest first: a filler may need an older one
        if not rows:
            conn.commit()
            return 0
        try:
            cascading = _cascading(cur)
            checked = _now(precise=True)
            for filler_id, table, key in rows:
                tables = _filler_tables(model, table)
                if (tables and not _cascade_referenced(cur, model, cascading, tables, key)
                        and _delete(cur, model, tables, key)):
                    cur.execute(sql("DELETE FROM {}.receiver_filler WHERE id = %s", schema), (filler_id,))
                    removed += 1
                    log.info("placeholder filler %s (key %s) removed: nothing references it any more", table, key)
                else:
                    cur.execute(sql("UPDATE {}.receiver_filler SET date_checked = %s WHERE id = %s", schema),
                                (checked, filler_id))
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in _LOCK_ERRORS:
                raise
            conn.rollback()  # a busy central: the next round tries again
            log.info("placeholder fillers: cleanup round given up (%s), tried again later", exc.args[-1])
            return 0
    conn.commit()
    return removed


def _filler_tables(model: SchemaModel, table: str) -> list[str]:
    """The tables a filler of `table` has a row in, the one to delete first first (patient, then person)."""
    if table not in model.tables:
        return []
    identity = model.identity_of(table)
    if identity is None or identity.table == table:
        return [table]
    return [table, identity.table] if identity.table in model.tables else []


def _delete(cur: Any, model: SchemaModel, tables: list[str], key: Any) -> bool:
    """Delete the filler's rows in a savepoint; False (and nothing deleted) when a foreign key refuses."""
    cur.execute("SAVEPOINT dbsync_filler")
    try:
        for table in tables:
            cur.execute(sql("DELETE FROM {} WHERE {} = %s", quote(table), quote(model.tables[table].primary_key[0])),
                        (key,))
    except pymysql.MySQLError as exc:
        if exc.args[0] != ROW_IS_REFERENCED:
            raise
        cur.execute("ROLLBACK TO SAVEPOINT dbsync_filler")
        return False
    cur.execute("RELEASE SAVEPOINT dbsync_filler")
    return True


def _cascading(cur: Any) -> dict[str, list[tuple[str, str, str]]]:
    """Per referenced table: (table, column, referenced column) of the foreign keys whose delete rule is not
    RESTRICT / NO ACTION (a DELETE would change the referencing rows instead of failing)."""
    cur.execute("SELECT k.REFERENCED_TABLE_NAME, k.TABLE_NAME, k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME FROM "
                "information_schema.REFERENTIAL_CONSTRAINTS r JOIN information_schema.KEY_COLUMN_USAGE k "
                "ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME "
                "AND k.TABLE_NAME = r.TABLE_NAME WHERE r.CONSTRAINT_SCHEMA = DATABASE() "
                "AND r.DELETE_RULE NOT IN ('RESTRICT', 'NO ACTION') AND k.REFERENCED_TABLE_NAME IS NOT NULL")
    found: dict[str, list[tuple[str, str, str]]] = {}
    for referenced, table, column, referenced_column in cur.fetchall():
        found.setdefault(referenced, []).append((table, column, referenced_column))
    return found


def _cascade_referenced(cur: Any, model: SchemaModel, cascading: dict[str, list[tuple[str, str, str]]],
                        tables: list[str], key: Any) -> bool:
    """Whether a row references the filler's rows through a cascading foreign key."""
    for referenced in tables:
        pk = model.tables[referenced].primary_key[0]
        for table, column, referenced_column in cascading.get(referenced, []):
            cur.execute(sql("SELECT 1 FROM {} c JOIN {} p ON c.{} = p.{} WHERE p.{} = %s LIMIT 1", quote(table),
                            quote(referenced), quote(column), quote(referenced_column), quote(pk)), (key,))
            if cur.fetchone() is not None:
                return True
    return False
