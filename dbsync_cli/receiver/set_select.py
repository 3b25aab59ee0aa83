"""Which messages of a batch the set path may write: plain new rows, decided in a few passes over the batch.

The set path (set_apply.py) writes a batch's new rows a statement per table and wave, without looking at them one
by one, so it takes only what the per-row path would do the same way without a judgement: an insert (or an update
or snapshot row whose entity central does not hold) of a row

- from a registered, enabled site, sent by its own broker user (trust.py), not waiting behind a queued entity,
  whose message id is new and appears once in the batch;
- of an entity dbsync never wrote (no entity_hash entry: no owner, no tombstone, no order guard to consult) and
  that central does not hold, in a table without id-valued attributes (person_attribute); or an update the per-row
  path's judgement could only apply (see `candidate`);
- whose columns and values convert without a question (no binary values, integers where central keeps integers);
- whose every reference names a row central holds, or a row the set path writes in the same batch (a placeholder
  or a missing metadata row is the per-row path's);
- whose entity's other messages in the batch (a person and its patient row) all qualify too, one per table.

Everything else, and everything that depends on it, takes the per-row path (apply.py), after the set path wrote:
the per-row path then finds the set path's rows as central rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbsync_cli import wire
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.rules import ATTRIBUTE_ID_VALUES, CHANGE_DATE_COLUMNS, with_site_suffix
from dbsync_cli.receiver import bookkeeping, state, trust
from dbsync_cli.receiver.conflict import HASH, future_seconds
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.message import Parsed, entity_key
from dbsync_cli.receiver.placeholder import is_placeholder
from dbsync_cli.receiver.resolve import MessageError, UuidToId
from dbsync_cli.sql import chunks, placeholders, quote, sql
from dbsync_cli.wire import DELETE, READ

#: column kinds of the set path's plan
REF, INT, TEXT, SUFFIXED, DATETIME, TIMESTAMP = "ref", "int", "text", "suffixed", "datetime", "timestamp"
_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "bigint", "bit"}
#: taken as text by the server's own conversion (the same as a literal of the per-row path's)
_TEXTS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "date", "time", "decimal", "double",
          "float"}
_BIGINT = 2 ** 63


@dataclass(frozen=True)
class Need:
    """A reference to a row of this batch the set path writes: (table, uuid) of that row."""
    table: str
    uuid: str


@dataclass
class Row:
    """One message the set path may write."""
    index: int
    item: Parsed
    table: SyncedTable
    uuid: str
    site: str
    ek: str
    columns: tuple[str, ...]
    values: list[Any]  # converted; a Need where the key of a row of this batch goes
    position: SourcePosition | None
    parent: Any = None  # a subclass row: its parent's key, or a Need of the parent row
    needs: list[Need] = field(default_factory=list)
    checks: list[tuple[str, Any, Need]] = field(default_factory=list)  # (subclass table, key, row) to look up
    key: Any = None  # learnt when written (an update: the key of central's row)
    hash: str | None = None  # the written row's hash, when its INSERT returned it (set_apply.py)
    update: bool = False
    wave: int = -1


class Plans:
    """Per synced table: how each column a message may carry is converted (None: the table is not for the set
    path)."""

    def __init__(self, model: SchemaModel) -> None:
        self.model = model
        self._plans: dict[str, dict[str, tuple[str, Any]] | None] = {}

    def of(self, table: SyncedTable) -> dict[str, tuple[str, Any]] | None:
        if table.name not in self._plans:
            self._plans[table.name] = self._build(table)
        return self._plans[table.name]

    def _build(self, table: SyncedTable) -> dict[str, tuple[str, Any]] | None:
        if table.name in ATTRIBUTE_ID_VALUES:
            return None
        skip = {table.key, "uuid", *table.secret_columns}
        plan: dict[str, tuple[str, Any]] = {}
        for column, info in table.info.columns.items():
            if column in skip:
                continue
            ref = table.references.get(column)
            if ref is not None and ref.identity is not None:
                plan[column] = (REF, ref)
            elif info.data_type in _INTEGERS:
                plan[column] = (INT, None)
            elif column in table.site_suffix_columns and info.data_type in _TEXTS:
                plan[column] = (SUFFIXED, None)
            elif info.data_type in _TEXTS:
                plan[column] = (TEXT, None)
            elif info.data_type in ("datetime", "timestamp"):
                plan[column] = (info.data_type, None)
            else:  # binary, enum, json …: a value goes the per-row way
                plan[column] = ("other", None)
        return plan


class Unfit(Exception):
    """This message is for the per-row path."""


def convert(plans: Plans, ids: UuidToId, value_of: Any, table: SyncedTable, data: Mapping[str, Any],
            row: Row) -> None:
    """Fill `row.columns`/`values`/`needs` from `data` (Unfit: the per-row path converts it, or refuses it)."""
    plan = plans.of(table)
    if plan is None or not plan.keys() >= data.keys():
        raise Unfit
    out: list[Any] = []
    for column, value in data.items():
        kind, detail = plan[column]
        if value is None:
            out.append(None)
        elif kind == TEXT:
            if type(value) is bool or not isinstance(value, str | int | float):
                raise Unfit
            out.append(value)
        elif kind == SUFFIXED:  # a username from site s1 is `name|s1` at central (resolve.py)
            if not isinstance(value, str):
                raise Unfit
            out.append(with_site_suffix(value, row.site) if value else value)
        elif kind == REF:
            # parsing checked and lower-cased every {"$ref", "uuid"} (wire.normalise_uuids); another shape is the
            # per-row path's to refuse
            if type(value) is not dict or wire.REF not in value or type(value.get("uuid")) is not str:
                raise Unfit
            uuid = value["uuid"]
            assert detail.identity is not None
            key = ids.get(detail.identity.table, uuid)
            if key is None:
                need = Need(detail.table, uuid)
                row.needs.append(need)
                out.append(need)
            else:
                if detail.identity.table != detail.table:  # a reference to a subclass row: it must exist
                    row.checks.append((detail.table, key, Need(detail.table, uuid)))
                out.append(key)
        elif kind == INT:
            number = int(value) if type(value) is bool else value  # as PyMySQL writes a bool
            if type(number) is not int or not -_BIGINT <= number < _BIGINT:
                raise Unfit
            out.append(number)
        elif kind in (DATETIME, TIMESTAMP):
            if not isinstance(value, str):
                raise Unfit
            try:
                out.append(value_of(kind, value, table.name, column))
            except MessageError:
                raise Unfit from None
        else:
            raise Unfit
    row.columns = tuple(data)
    row.values = out


def subclass_rows(cur: Any, model: SchemaModel, ids: UuidToId, rows: list[Row]) -> None:
    """Look up, one query per table, the subclass rows (a patient) the rows reference and the cache does not know."""
    wanted: dict[str, set[Any]] = {}
    for row in rows:
        for table, key, _need in row.checks:
            if not ids.subclass_rows.get((table, key)):
                wanted.setdefault(table, set()).add(key)
    for table, keys in wanted.items():
        pk = model.tables[table].primary_key[0]
        for part in chunks(sorted(keys)):
            cur.execute(sql("SELECT {} FROM {} WHERE {} IN ({})", quote(pk), quote(table), quote(pk),
                            placeholders(len(part))), part)
            for (key,) in cur.fetchall():
                ids.subclass_rows.put((table, key), True)


def settle(rows: list[Row], unfit: set[str], ids: UuidToId) -> list[Row]:
    """The rows that stay for the set path, each with its wave (it references rows of earlier waves only): a row
    whose entity has a message that is unfit, or whose reference no row satisfies, leaves with its entity; until
    nothing changes."""
    alive = rows
    while True:
        by_key = {(r.table.name, r.uuid): r for r in alive if r.ek not in unfit}
        dropped = False
        kept: list[Row] = []
        for row in alive:
            if row.ek in unfit:
                continue
            for table, key, need in row.checks:  # a reference to a subclass row central does not hold (yet)
                if not ids.subclass_rows.get((table, key)) and (need.table, need.uuid) not in by_key:
                    break
            else:
                parent_ok = row.parent is None or not isinstance(row.parent, Need) or \
                    (row.parent.table, row.parent.uuid) in by_key
                if parent_ok and all((n.table, n.uuid) in by_key for n in row.needs):
                    kept.append(row)
                    continue
            unfit.add(row.ek)
            dropped = True
        alive = kept
        if not dropped and _waves(alive, unfit):
            return alive


def _waves(rows: list[Row], unfit: set[str]) -> bool:
    """Number the waves; False (and the rows of a cycle unfit) when references among the rows go round."""
    by_key = {(r.table.name, r.uuid): r for r in rows}
    deps: dict[int, list[Row]] = {}
    for row in rows:
        row.wave = -1
        needed = [by_key[(n.table, n.uuid)] for n in row.needs]
        needed += [by_key[(need.table, need.uuid)] for _table, _key, need in row.checks
                   if (need.table, need.uuid) in by_key]
        if isinstance(row.parent, Need):
            needed.append(by_key[(row.parent.table, row.parent.uuid)])
        deps[id(row)] = needed
    pending = list(rows)
    wave = 0
    while pending:
        ready = [row for row in pending if all(0 <= d.wave < wave for d in deps[id(row)])]
        if not ready:
            unfit.update(r.ek for r in pending)  # a cycle (a user created by itself): the per-row path breaks it
            return False
        for row in ready:
            row.wave = wave
        pending = [r for r in pending if r.wave < 0]
        wave += 1
    return True


def candidate(item: Parsed, index: int, *, sites: Mapping[str, state.Site], blocked: set[str],
              synced: Mapping[tuple[str, str], bookkeeping.Synced] | None, ids: UuidToId,
              peek: Callable[[str, Any], dict[str, Any] | None], model: SchemaModel) -> Row:
    """The message as a set path row, or Unfit: the checks of the per-row path that need no judgement. A row central
    holds is an update when the per-row path's judgement could only say "apply": the site owns the entity, the
    site's change applied last to it (no other site's in between), central's row has not changed since (its hash is
    the stored one), it is no placeholder, and the message is not older than that change (the order guard)."""
    message, table = item.message, item.table
    if item.error is not None or message is None or table is None or message["op"] == DELETE:
        raise Unfit
    site = sites.get(message["site"])
    if site is None or site.disabled or trust.refused_sender(site, item.broker_user) is not None:
        raise Unfit
    uuid = message["uuid"]
    ek = entity_key(model, table, uuid)
    if ek is None or ek in blocked or synced is None:
        raise Unfit
    entry = synced.get((table.name, uuid))
    if entry is None:
        raise Unfit
    position = SourcePosition.of(message)
    parent = ids.get(table.identity.table, uuid)
    if parent is None and (table.identity.table, uuid) not in ids.absent:  # not looked up for this batch
        raise Unfit
    current = peek(table.name, parent) if parent is not None else None
    if current is not None:  # an update of a row central holds
        if site.adopt and message["op"] == READ:  # a snapshot row of an adopting site: adopt.py judges it
            raise Unfit
        last = entry.position
        if entry.owner != site.identifier or entry.hash is None or entry.hash != current.get(HASH) \
                or is_placeholder(current) or (last is not None and (
                    last.site != site.identifier or (position is not None and position.older_than(last)))):
            raise Unfit
        return Row(index, item, table, uuid, site.identifier, ek, (), [],
                   position.since(last) if position is not None else None, key=parent, update=True)
    if entry != bookkeeping.UNKNOWN:  # a tombstone, an owner: the per-row path knows what they mean
        raise Unfit
    if table.is_subclass:
        if parent is None:
            parent = Need(table.identity.table, uuid)
    elif parent is not None:  # central holds it, but the batch's read did not find it (another transaction's)
        raise Unfit
    return Row(index, item, table, uuid, site.identifier, ek, (), [], position, parent)


def future_dated(row: Row, central_now: dt.datetime, tolerance: float) -> bool:
    """An update dated past central's clock (and the tolerance): the per-row path counts it per site."""
    dates = [v for c, v in zip(row.columns, row.values, strict=True)
             if c in CHANGE_DATE_COLUMNS and isinstance(v, dt.datetime)]
    return bool(dates) and future_seconds(max(dates), central_now, tolerance) is not None
