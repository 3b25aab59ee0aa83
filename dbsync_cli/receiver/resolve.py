"""uuid → central id, batched and cached, and the wire → central conversion of a message's data.

Every reference is resolved through the target's identity table (a reference to `patient` resolves through
`person`, since a subclass row shares its parent's key). A missing synced row becomes a placeholder; missing
metadata is an error naming the table and uuid, for the retry queue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dbsync_cli import wire
from dbsync_cli.lru import LruMap
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.rules import ATTRIBUTE_ID_VALUES, with_site_suffix
from dbsync_cli.receiver import placeholder
from dbsync_cli.receiver.reasons import reason
from dbsync_cli.sql import Sql, chunks, placeholders, quote, sql

_DATETIMES = ("datetime", "timestamp")  # the only column types whose text value apply converts


class MessageError(Exception):
    """The message itself is wrong (shape, table, column, value): retrying will not help until it is fixed."""


class MissingReference(Exception):
    """A referenced metadata row is not at central (yet): retry later (at once when a row with `uuid` arrives)."""

    def __init__(self, message: str, uuid: str | None = None):
        super().__init__(message)
        self.uuid = uuid


class HeldRow(Exception):
    """A reference needs the key of a row apply still holds back: write the held rows, then convert again."""


@dataclass(frozen=True)
class DeferredKey:
    """The key the held new row (`table`, `uuid`) gets when apply writes it (receiver/inserts.py)."""
    table: str
    uuid: str


class UuidToId:
    """Central key of an identity table's row by uuid; misses are fetched in one `IN (…)` query per table."""

    def __init__(self, model: SchemaModel, size: int = 200_000):
        self.model = model
        self.size = size
        self.cache: dict[str, LruMap] = {}
        self.absent: set[tuple[str, str]] = set()  # looked up in this batch and not found: no second query
        self.subclass_rows: LruMap = LruMap(size)  # (subclass table, key) known to exist

    def _map(self, table: str) -> LruMap:
        if table not in self.cache:
            self.cache[table] = LruMap(self.size)
        return self.cache[table]

    def clear(self) -> None:
        """After a rollback: forget everything, the database is the truth again."""
        self.cache.clear()
        self.absent.clear()
        self.subclass_rows = LruMap(self.size)

    def new_batch(self) -> None:
        self.absent.clear()

    def remember(self, table: str, uuid: str, key: Any) -> None:
        self._map(table).put(uuid, key)
        self.absent.discard((table, uuid))

    def forget(self, table: str, uuid: str) -> None:
        self._map(table).pop(uuid)

    def lookup(self, cur: Any, table: str, uuid: str) -> Any:
        """Key of `uuid`, querying only when neither cached nor known absent in this batch."""
        key = self._map(table).get(uuid)
        if key is None and (table, uuid) not in self.absent:
            self.prefetch(cur, table, [uuid])
            key = self._map(table).get(uuid)
        return key

    def get(self, table: str, uuid: str) -> Any:
        return self._map(table).get(uuid)

    def prefetch(self, cur: Any, table: str, uuids: Iterable[str]) -> None:
        cache = self._map(table)
        missing = sorted({u for u in uuids if u and cache.get(u) is None})
        key = self.model.tables[table].primary_key[0]
        for part in chunks(missing):
            cur.execute(sql("SELECT uuid, {} FROM {} WHERE uuid IN ({})", quote(key), quote(table),
                            placeholders(len(part))), part)
            # keyed by the canonical uuid: the server matched case-insensitively, a row keeps its own spelling
            found = {wire.canonical_uuid(uuid): key for uuid, key in cur.fetchall()}
            for uuid in part:
                if uuid in found:
                    cache.put(uuid, found[uuid])
                else:
                    self.absent.add((table, uuid))


class Converter:
    """Turns a message's `data` into central column values (refs → ids, datetimes → central zone, suffixes)."""

    def __init__(self, model: SchemaModel, ids: UuidToId, central_tz: dt.tzinfo, default_user: int,
                 fillers: Sql | None = None):
        self.model = model
        self.fillers = fillers  # the state schema, where the placeholders' fillers are recorded
        self.ids = ids
        self.tz = central_tz
        self.default_user = default_user
        self.attribute_formats: dict[Any, str | None] = {}
        self.plans: dict[str, dict[str, tuple[str, Any]]] = {}
        #: while apply converts a new row it holds back: (table, identity table, uuid) → the DeferredKey of a
        #: held row (None: not held; HeldRow: needs the held rows written first)
        self.held: Callable[[str, str, str], DeferredKey | None] | None = None

    def references(self, table: SyncedTable, data: dict[str, Any]) -> Iterable[tuple[str, str]]:
        """(identity table, uuid) of every reference in `data`, for batched prefetching."""
        for column, ref in table.references.items():
            value = data.get(column)
            target = wire.ref_target(value)
            if ref.identity is not None and target is not None and target[1]:
                yield ref.identity.table, target[1]
        if table.name in ATTRIBUTE_ID_VALUES:
            target = wire.ref_target(data.get(ATTRIBUTE_ID_VALUES[table.name][0]))
            if target is not None and target[0] in self.model.tables and target[1]:
                identity = self.model.identity_of(target[0])
                if identity is not None:
                    yield identity.table, target[1]

    def resolve(self, cur: Any, table_name: str, uuid: str, *, allow_placeholder: bool) -> Any:
        """Central key of `uuid` in `table_name` (a synced table gets a placeholder when it is missing)."""
        identity = self.model.identity_of(table_name)
        if identity is None:
            raise MessageError(reason("no_uuid_table", table=table_name))
        if self.held is not None:
            deferred = self.held(table_name, identity.table, uuid)
            if deferred is not None:
                return deferred
        key = self.ids.lookup(cur, identity.table, uuid)
        if key is not None:
            if identity.table != table_name:
                self._subclass_row(cur, table_name, key, uuid, allow_placeholder)
            return key
        if allow_placeholder and (table_name in self.model.synced or identity.table in self.model.synced):
            key = placeholder.create(cur, self.model, table_name, uuid, self.default_user, fillers=self.fillers)
            self.ids.remember(identity.table, uuid, key)
            if identity.table != table_name:
                self.ids.subclass_rows.put((table_name, key), True)
            return key
        raise MissingReference(reason("missing_row", table=table_name, uuid=uuid), uuid)

    def _subclass_row(self, cur: Any, table_name: str, key: Any, uuid: str, allow_placeholder: bool) -> None:
        """A reference to `patient` needs the patient row, not only the person: add a placeholder row if absent."""
        if self.ids.subclass_rows.get((table_name, key)):
            return
        pk = self.model.tables[table_name].primary_key[0]
        cur.execute(sql("SELECT 1 FROM {} WHERE {} = %s", quote(table_name), quote(pk)), (key,))
        if cur.fetchone() is None:
            if not allow_placeholder:
                raise MissingReference(reason("missing_row", table=table_name, uuid=uuid), uuid)
            placeholder.create_subclass_row(cur, self.model, table_name, key, uuid, self.default_user,
                                            fillers=self.fillers)
        self.ids.subclass_rows.put((table_name, key), True)

    def _plan(self, table: SyncedTable) -> dict[str, tuple[str, Any]]:
        """Per column a message may carry: how its value is converted (a reference, a date-time kind, as is)."""
        plan = self.plans.get(table.name)
        if plan is None:
            skip = {table.key, "uuid", *table.secret_columns}
            attribute_column = ATTRIBUTE_ID_VALUES.get(table.name, (None,))[0]
            plan = {}
            for column, info in table.info.columns.items():
                if column in skip:
                    continue
                ref = table.references.get(column)
                if column == attribute_column:
                    plan[column] = ("attribute", info.data_type)
                elif ref is not None and ref.identity is not None:
                    plan[column] = ("ref", ref.table)
                else:
                    plan[column] = ("value", info.data_type)
            self.plans[table.name] = plan
        return plan

    def values(self, cur: Any, table: SyncedTable, data: dict[str, Any], site: str) -> dict[str, Any]:
        plan = self._plan(table)
        if not plan.keys() >= data.keys():  # every name first: a bad message creates no placeholder on its way
            column = next(c for c in data if c not in plan)
            raise MessageError(reason("unknown_column", table=table.name, column=str(column)[:64]))
        out: dict[str, Any] = {}
        for column, value in data.items():
            kind, detail = plan[column]
            if kind == "ref":
                if value is None:
                    out[column] = None
                elif isinstance(value, dict) and isinstance(value.get("uuid"), str):
                    out[column] = self.resolve(cur, detail, _uuid(value["uuid"]), allow_placeholder=True)
                else:
                    raise MessageError(reason("expected_ref", table=table.name, column=column))
            elif kind == "attribute" and isinstance(value, dict):
                continue  # an id-valued attribute: resolved below
            elif value is None or (type(value) is str and detail not in _DATETIMES):
                out[column] = value
            else:
                out[column] = self.value(detail, value, table.name, column)
        for column in table.site_suffix_columns:
            value = out.get(column)
            if isinstance(value, str) and value:
                out[column] = with_site_suffix(value, site)
        if table.name in ATTRIBUTE_ID_VALUES:
            value_column = ATTRIBUTE_ID_VALUES[table.name][0]
            value = data.get(value_column)
            if isinstance(value, dict) and isinstance(value.get("uuid"), str):
                target = str(value.get(wire.REF))
                if target not in self.model.tables or self.model.identity_of(target) is None:
                    raise MessageError(reason("unknown_ref_table", table=table.name, column=value_column,
                                                           target=target[:64]))
                key = self.resolve(cur, target, _uuid(value["uuid"]), allow_placeholder=False)
                if isinstance(key, DeferredKey):  # stored as text: the key must be known now
                    raise HeldRow(f"{target} {value['uuid']}")
                out[value_column] = str(key)
        return out

    def value(self, data_type: str, value: Any, table: str, column: str) -> Any:
        """One non-reference wire value as central stores it (DATETIME in central's zone, binary as bytes)."""
        where = f"{table}.{column}"
        if value is None:
            return None
        if isinstance(value, dict):
            if wire.is_b64(value):
                try:
                    return wire.unb64(value)
                except ValueError:
                    raise MessageError(reason("invalid_base64", where=where)) from None
            raise MessageError(reason("object_value", where=where))
        if isinstance(value, list):
            raise MessageError(reason("list_value", where=where))
        try:
            if data_type == "datetime" and isinstance(value, str):
                return wire.local_datetime(value, self.tz)
            if data_type == "timestamp" and isinstance(value, str):
                return wire.local_datetime(value, dt.UTC)
        except ValueError:
            raise MessageError(reason("invalid_datetime", where=where, value=value[:40])) from None
        return value


def _uuid(value: str) -> str:
    if not wire.UUID_TEXT.match(value):
        raise MessageError(reason("invalid_uuid", uuid=value[:40]))
    return wire.canonical_uuid(value)
