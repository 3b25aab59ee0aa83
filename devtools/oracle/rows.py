"""Every row of a table in one comparable form, read with one query per table: named by uuid, foreign keys as the
referenced rows' uuids, local ids left out, DATETIME values moved to one time zone, values as plain JSON types."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pymysql

from devtools.oracle.db import Catalog, DbConn, TableInfo, fetch, q

#: columns that never leave a site (OpenMRS credentials): compared nowhere
SECRETS = {"users": {"password", "salt", "secret_question", "secret_answer", "activation_key"}}
#: columns central suffixes with "|<site>"
SUFFIXED = {"users": {"username", "system_id"}, "provider": {"identifier"}}
#: attribute tables whose value holds a local id when the type's format is an org.openmrs class
ATTRIBUTE_VALUES = {"person_attribute": ("value", "person_attribute_type_id", "person_attribute_type", "format")}
#: OpenMRS's audit columns name a user even where the schema declares no foreign key (person_name.changed_by)
AUDIT_COLUMNS = ("creator", "changed_by", "voided_by", "retired_by")
_CLASS_TABLES = {"User": "users", "Patient": "person"}
_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")

Row = dict[str, Any]


def zone(name: str) -> dt.tzinfo:
    """An IANA name, UTC, or a fixed offset like "+02:00"."""
    m = _OFFSET.match(name)
    if m:
        delta = dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
        return dt.timezone(delta if m.group(1) == "+" else -delta)
    return dt.UTC if name.upper() in ("UTC", "Z") else ZoneInfo(name)


def class_table(java_class: str | None) -> str | None:
    """org.openmrs.ProgramWorkflow → program_workflow."""
    if not java_class or not java_class.startswith("org.openmrs.") or java_class.count(".") != 2:
        return None
    simple = java_class.rsplit(".", 1)[1]
    return _CLASS_TABLES.get(simple) or re.sub(r"(?<!^)(?=[A-Z])", "_", simple).lower()


def plain(value: Any) -> Any:
    """A value as JSON can hold it, the same for the same stored value on any server."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


class Reader:
    """Reads one database's rows of the given tables in canonical form (its own catalog)."""

    def __init__(self, db: DbConn, tz: str, target_tz: str | None = None) -> None:
        self.db = db
        self.conn = db.connect()
        self.catalog = Catalog(self.conn, db.database)
        self.tz, self.target = zone(tz), zone(target_tz or tz)

    def close(self) -> None:
        self.conn.close()

    def _uuid_of(self, table: str, column: str) -> tuple[str, str] | None:
        """Where the uuid of a row referenced by (table, column) lives: (table with the uuid, its key column)."""
        info = self.catalog.tables.get(table)
        if info is None:
            return None
        if info.has_uuid:
            return table, column
        if info.pk == [column] and column in info.fks:  # patient.patient_id = person.person_id
            return self._uuid_of(*info.fks[column])
        return None

    def select(self, table: str) -> tuple[str, list[str]]:
        """The statement reading `table` canonically and the names of its result columns (uuid first)."""
        info = self.catalog.tables[table]
        joins: list[str] = []
        selected: list[str] = []
        names: list[str] = []
        if info.has_uuid:
            ident = "t.`uuid`"
        else:
            if len(info.pk) != 1 or info.pk[0] not in info.fks:
                raise ValueError(f"{table}: neither a uuid nor a parent key")
            where = self._uuid_of(*info.fks[info.pk[0]])
            if where is None:
                raise ValueError(f"{table}: its parent has no uuid")
            joins.append(f"JOIN {q(where[0])} i ON i.{q(where[1])} = t.{q(info.pk[0])}")
            ident = "i.`uuid`"
        secrets = SECRETS.get(table, set())
        for n, column in enumerate(info.columns):
            if column in info.pk or column in secrets or column == "uuid":
                continue
            names.append(column)
            ref = info.fks.get(column) or (("users", "user_id") if column in AUDIT_COLUMNS else None)
            target = self._uuid_of(*ref) if ref else None
            if target is None:
                selected.append(f"t.{q(column)}")
            else:
                alias = f"r{n}"
                joins.append(f"LEFT JOIN {q(target[0])} {alias} ON {alias}.{q(target[1])} = t.{q(column)}")
                # a reference that names no row stays visible as such (never silently null)
                selected.append(f"CASE WHEN t.{q(column)} IS NULL THEN NULL ELSE "
                                f"COALESCE({alias}.`uuid`, CONCAT('dangling:', t.{q(column)})) END")
        statement = (f"SELECT {ident}, {', '.join(selected) or 'NULL'} FROM {q(table)} t " + " ".join(joins))
        return statement, names

    def rows(self, table: str, *, site: str | None = None) -> dict[str, Row]:
        """uuid (lower case) → canonical row. `site` given: the row as central should hold it (suffixes added)."""
        if table not in self.catalog.tables:
            return {}
        statement, names = self.select(table)
        info = self.catalog.tables[table]
        datetimes = {c for c in names if info.columns[c] == "datetime"}
        suffixed = SUFFIXED.get(table, set()) if site else set()
        out: dict[str, Row] = {}
        with self.conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(statement)
            for record in cur:
                uuid = record[0]
                if uuid is None:
                    continue
                row: Row = {}
                for column, value in zip(names, record[1:], strict=True):
                    if column in datetimes and isinstance(value, dt.datetime):
                        value = value.replace(tzinfo=self.tz).astimezone(self.target).replace(tzinfo=None)
                    if column in suffixed and isinstance(value, str) and not value.endswith(f"|{site}"):
                        value = f"{value}|{site}"
                    row[column] = plain(value)
                out[str(uuid).lower()] = row  # two rows of one uuid: invariant 2 counts them (duplicate_uuids)
        self._attribute_ids(table, out)
        return out

    def _attribute_ids(self, table: str, rows: dict[str, Row]) -> None:
        """person_attribute values that are local ids of an org.openmrs class → that row's uuid (one query per
        referenced table)."""
        spec = ATTRIBUTE_VALUES.get(table)
        if spec is None or not rows:
            return
        value_col, type_col, type_table, format_col = spec
        formats = {str(u).lower(): f for u, f in fetch(self.conn, f"SELECT `uuid`, {q(format_col)} FROM {q(type_table)}")}
        wanted: dict[str, set[int]] = {}
        for row in rows.values():
            target = class_table(formats.get(str(row.get(type_col) or "").lower()))
            if target and str(row.get(value_col) or "").isdigit():
                wanted.setdefault(target, set()).add(int(row[value_col]))
        for target, ids in wanted.items():
            info = self.catalog.tables.get(target)
            if info is None or not info.has_uuid or len(info.pk) != 1:
                continue
            mapping = {int(i): u for i, u in fetch(self.conn, f"SELECT {q(info.pk[0])}, `uuid` FROM {q(target)} "
                                                   f"WHERE {q(info.pk[0])} IN ({', '.join(map(str, sorted(ids)))})")}
            for row in rows.values():
                if class_table(formats.get(str(row.get(type_col) or "").lower())) == target and \
                        str(row.get(value_col) or "").isdigit():
                    row[value_col] = "uuid:" + str(mapping.get(int(row[value_col]), f"dangling:{row[value_col]}"))

    def duplicate_uuids(self, table: str) -> list[tuple[str, int]]:
        """uuids held by more than one row in any letter case (set-based, one query)."""
        info: TableInfo | None = self.catalog.tables.get(table)
        if info is None or not info.has_uuid:
            return []
        return [(str(u), int(n)) for u, n in fetch(
            self.conn, f"SELECT LOWER(`uuid`), COUNT(*) FROM {q(table)} GROUP BY LOWER(`uuid`) HAVING COUNT(*) > 1")]


def snapshot_central_rows(central: DbConn | dict[str, Any], tables: Iterable[str], path: Path, *,
                          tz: str = "UTC") -> dict[str, dict[str, Row]]:
    """Central's rows of the synced tables before the run (its own rows: the dump's users, persons, providers …),
    written to `path` as JSON: invariant 3 compares central's rows at the end to these."""
    db = central if isinstance(central, DbConn) else DbConn.from_dict(central)
    reader = Reader(db, tz)
    try:
        snap = {t: reader.rows(t) for t in tables}
    finally:
        reader.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(snap, sort_keys=True))
    return snap
