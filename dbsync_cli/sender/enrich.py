"""Enrich: change events → sync messages, the wire format.

A create's or update's message carries the row as the binlog's after image gives it (binlog_row_image=FULL: every
column, as it was at that point of the binlog) wherever that image is exactly what a read of the site DB gives
(`after_image`); otherwise, and for snapshot rows, the row as it is now in the site DB (loaded by primary key in
batches), where the latest state wins and an update for a row deleted since is dropped. An image row whose
references cannot all be resolved (a parent deleted since) is read again too, as before. Foreign keys become uuid
references, looked up in one query per referenced table per batch through the uuid cache; local ids never leave
the site. Output order equals input order, so per-entity binlog order survives.

Every message of a batch carries the batch's read time as `sent`, image or not, so `sent` never goes back from one
message to the next (the receiver's order guard and its retry queue compare it with the binlog position; an event
time, in whole seconds of the site server's clock, would not order against read times).

A batch's rows and the uuids they reference are read in one consistent snapshot: read apart, a row could be
loaded and its parent deleted (with the row, or after the row moved away from it) before the parent's uuid was
looked up, and the message went out as ``{"$ref": "obs", "uuid": null}`` (seen while a site wrote during its
initial snapshot). A reference no uuid can be found for even so is a dangling reference at the site: the batch is
read again a few times, then enrich stops before it (exit 14), never sending a reference without its uuid.

A deleted subclass row (patient, drug_order …) has no uuid of its own: it takes its parent's (person, orders), from
the parent's delete in the same batch, else from the site DB, else from the parent's delete later in the binlog
(`parent_deletes`: a transaction longer than a batch, or a parent deleted later while the sender is behind). A
delete whose uuid none of them gives stops enrich before it (exit 14): it is never skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql.cursors

from dbsync_cli import exitcodes, wire
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaModel, SyncedTable, class_table
from dbsync_cli.openmrs.rules import ATTRIBUTE_ID_VALUES
from dbsync_cli.retrying import pause
from dbsync_cli.sender import after_image, drops
from dbsync_cli.sender.binlog import CaptureStop, Position
from dbsync_cli.sender.parent_deletes import ParentDeletes, position_key
from dbsync_cli.sender.uuid_cache import IdToUuid
from dbsync_cli.sql import chunks, placeholders, quote, sql
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.values import UNCHANGED, Converter, wire_converter

log = logging.getLogger("dbsync.enrich")

#: how often a batch with a reference whose uuid cannot be found is read again before enrich stops
READ_ATTEMPTS = 4

Missing = tuple[str, Any, str, str, Any]  # (table, key, column, referenced table, referenced local id)


class EnrichStop(CaptureStop):
    """A row enrich cannot turn into a complete message: nothing after it is sent until an operator fixes it."""

@dataclass
class EnrichSettings:
    db: DbParams
    site: str
    timezone: str = DEFAULTS.sender.timezone  # defaults: the config model's, never literals of their own
    batch_events: int = DEFAULTS.broker.batch_messages
    max_transaction_events: int = DEFAULTS.sender.max_transaction_events  # a batch grows to its transaction's end
    cache_size: int = 200_000
    home: Path | None = None  # the sender's state (the schema history, for binlogs without column names)
    parent_cache_size: int = 100_000  # parent deletes remembered from the binlog scans of `parent_deletes`


class Enricher:
    def __init__(self, settings: EnrichSettings, model: SchemaModel):
        self.settings = settings
        self.model = model
        self.tz = parse_timezone(settings.timezone)
        self.conn = settings.db.connect()
        with self.conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")  # TIMESTAMP values then come back as UTC
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot per batch
        self.uuids = IdToUuid(self.conn, settings.cache_size)
        self.parents = ParentDeletes(settings.db, settings.home, settings.parent_cache_size)
        self.converters: dict[str, list[tuple[str, Converter | None, str | None, str | None]]] = {}
        self.images: dict[str, after_image.Reader | None] = {}  # per table: its after images as rows, or None
        self.attribute_formats: dict[Any, str | None] = {}
        self.image_rows = 0  # rows sent from their after image (the rest were read again)

    def close(self) -> None:
        log.debug("enrich: %d row(s) sent from their binlog after image", self.image_rows)
        self.conn.close()

    def _converters(self, table: SyncedTable) -> list[tuple[str, Converter | None, str | None, str | None]]:
        """Per data column: its converter (None: the value as it is), or for a reference its table and the table
        its uuid is in (a subclass's parent): worked out once per table, not per row."""
        if table.name not in self.converters:
            plan: list[tuple[str, Converter | None, str | None, str | None]] = []
            for column in table.data_columns:
                ref = table.references.get(column)
                if ref is not None and ref.identity is not None:
                    plan.append((column, None, ref.table, ref.identity.table))
                else:
                    convert = wire_converter(table.info.columns[column], self.tz)
                    plan.append((column, None if convert is UNCHANGED else convert, None, None))
            self.converters[table.name] = plan
        return self.converters[table.name]

    def run(self, events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Batches end between transactions (up to `max_transaction_events`): a subclass delete (patient,
        drug_order …) comes before its parent's delete in the binlog and gets its uuid from the parent's before
        image, cheapest when it is in the same batch (a longer transaction is found by `parent_deletes`)."""
        batch: list[dict[str, Any]] = []
        for event in events:
            if event.get("op") == wire.HEARTBEAT:
                yield from self._flush(batch)
                batch = []
                yield event
                continue
            if batch and len(batch) >= self.settings.batch_events and (
                    not _same_transaction(batch[-1], event) or len(batch) >= self.settings.max_transaction_events):
                yield from self._flush(batch)
                batch = []
            batch.append(event)
        yield from self._flush(batch)

    def wire_rows(self, table: SyncedTable, rows: dict[Any, dict[str, Any]]) -> list[tuple[Any, str, dict[str, Any]]]:
        """(key, uuid, wire data) of rows already read: what a message would carry (`dbsync verify` digests it). A
        dangling reference travels as a reference without uuid, so the row cannot match central's."""
        refs = self._resolve_references({table.name: rows})
        found = []
        for key, row in rows.items():
            uuid = row["uuid"] if not table.is_subclass else refs.get((table.identity.table, key))
            if uuid is not None:
                found.append((key, uuid, self._data(table, row, refs, [], key)))
        return found

    def _load_rows(self, table: SyncedTable, keys: set[Any]) -> tuple[dict[Any, dict[str, Any]], bool]:
        """Current rows by key, and whether the table's columns differ from the model's (DDL since it loaded)."""
        rows: dict[Any, dict[str, Any]] = {}
        changed = False
        for part in chunks(sorted(keys, key=str)):
            with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql("SELECT * FROM {} WHERE {} IN ({})", quote(table.name), quote(table.key),
                                placeholders(len(part))), part)
                changed = changed or [d[0] for d in cur.description] != list(table.info.columns)
                for row in cur.fetchall():
                    rows[row[table.key]] = row
        return rows, changed

    def _reload_model(self, tables: Iterable[str]) -> None:
        """After DDL: read information_schema again and rebuild the per-table converters."""
        log.info("columns of %s changed: reloading the schema model", ", ".join(sorted(tables)))
        self.model = SchemaModel.load(self.conn, self.model.database, list(self.model.synced))
        self.converters.clear()
        self.images.clear()
        self.attribute_formats.clear()

    def _valid(self, event: dict[str, Any]) -> SyncedTable | None:
        table = self.model.synced.get(event.get("table", ""))
        if table is None:
            log.error("event at %s: table %r is not synced; skipped", event.get("source"), event.get("table"))
            return None
        image = event.get("before") if event.get("op") == wire.DELETE else event.get("after")
        if event.get("op") not in wire.OPS or not isinstance(image, dict) or table.key not in image:
            log.error("event at %s: malformed %s event for %s; skipped", event.get("source"), event.get("op"), table.name)
            return None
        return table

    def _invalid(self, event: dict[str, Any]) -> dict[str, Any]:
        """The drop record of an event `_valid` refused."""
        synced = event.get("table", "") in self.model.synced
        return drops.of_event(drops.MALFORMED if synced else drops.NOT_SYNCED, event)

    def _flush(self, batch: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if not batch:
            return
        checked = [(e, self._valid(e)) for e in batch]
        valid = [(e, t) for e, t in checked if t is not None]
        for attempt in range(1, READ_ATTEMPTS + 1):
            with self.conn.cursor() as cur:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                valid, messages, missing = self._read(valid)
            finally:
                self.conn.commit()
            if not missing:
                if attempt > 1:
                    log.warning("enrich: batch complete on read %d (rows changed while it was read)", attempt)
                yield from _in_order(checked, messages, self._invalid)
                return
            table, key, column, target, local = missing[0]
            log.warning("enrich: %s %s: %s references %s %s, not found (%d reference(s) in the batch); reading "
                        "the batch again (%d of %d)", table, key, column, target, local, len(missing), attempt,
                        READ_ATTEMPTS)
            pause(0.2 * attempt)
        raise EnrichStop(_("site row {table} {key}: {column} references {target} {local}, which does not exist in "
                           "the site database (a dangling reference); enrich stops before it and nothing after it "
                           "is sent: fix the row at the site (or restore the referenced row), then restart").format(
            table=table, key=key, column=column, target=target, local=local),
                         exitcodes.DANGLING_REFERENCE)

    def _read(self, valid: list[tuple[dict[str, Any], SyncedTable]]) -> tuple[
            list[tuple[dict[str, Any], SyncedTable]], list[dict[str, Any]], list[Missing]]:
        """The batch's messages from one consistent read, and the references no uuid was found for."""
        messages: list[dict[str, Any]] = []
        missing: list[Missing] = []
        sent = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        images = self._images(valid)
        current, changed = self._load_wanted(valid, images)
        if changed:  # DDL since the model was read: every row read again under the new model
            self._reload_model(changed)
            valid = [(e, self.model.synced[t.name]) for e, t in valid]
            images = {}
            current, _changed = self._load_wanted(valid, images)
        refs = self._resolve_references(current)
        deleted_uuids = self._deleted_identity(valid)
        for index, (event, table) in enumerate(valid):
            if event["op"] == wire.DELETE:
                key = event["before"][table.key]
                uuid = deleted_uuids.get((table.identity.table, key))
                if uuid is None:
                    raise EnrichStop(_(
                        "site row {table} {key} was deleted and its uuid is nowhere: the {parent} row it takes it "
                        "from is neither in the site database nor deleted in the binlog after it (deleted earlier "
                        "with foreign key checks off?); enrich stops before the delete and nothing after it is "
                        "sent: put the {parent} row {key} back at the site with its uuid, then restart").format(
                        table=table.name, key=key, parent=table.identity.table), exitcodes.DANGLING_REFERENCE)
                messages.append(self._message(event, table, key, uuid, None, sent))  # the batch's time
                continue
            key = event["after"][table.key]
            image = images.get(index)
            if image is not None:
                uuid, data = image
                messages.append(self._message(event, table, key, uuid, data, sent))
                continue
            row = current[table.name].get(key)
            if row is None:
                log.debug("%s %s of %s %s: row deleted since; dropped", event["op"], event["source"], table.name, key)
                messages.append(drops.of_event(drops.ROW_DELETED, event, key))  # counted by publish
                continue
            uuid = row["uuid"] if not table.is_subclass else refs.get((table.identity.table, key))
            if uuid is None:
                log.warning("%s %s: parent %s row is gone; dropped", table.name, key, table.identity.table)
                messages.append(drops.of_event(drops.PARENT_GONE, event, key))
                continue
            data = self._data(table, row, refs, missing, key)
            messages.append(self._message(event, table, key, uuid, data, sent))
        self.image_rows += len(images)
        return valid, messages, missing

    def _images(self, valid: list[tuple[dict[str, Any], SyncedTable]]) -> dict[int, tuple[str, dict[str, Any]]]:
        """(uuid, wire data) of the batch's binlog creates and updates whose after image is the
        row (after_image.py) and whose references all resolve, by index in `valid`; the others are read again."""
        rows: list[tuple[int, SyncedTable, dict[str, Any]]] = []
        for index, (event, table) in enumerate(valid):
            if event["op"] not in (wire.CREATE, wire.UPDATE) or (event.get("source") or {}).get("snapshot"):
                continue
            if table.name not in self.images:
                self.images[table.name] = after_image.reader(table)
            read = self.images[table.name]
            row = read(event) if read is not None else None
            if row is not None:
                rows.append((index, table, row))
        if not rows:
            return {}
        by_table: dict[str, tuple[SyncedTable, list[dict[str, Any]]]] = {}
        for _index, table, row in rows:
            by_table.setdefault(table.name, (table, []))[1].append(row)
        refs = self._references(by_table.values())
        found: dict[int, tuple[str, dict[str, Any]]] = {}
        for index, table, row in rows:
            key = row[table.key]
            uuid = row["uuid"] if not table.is_subclass else refs.get((table.identity.table, key))
            missing: list[Missing] = []
            data = self._data(table, row, refs, missing, key)
            if uuid is not None and not missing:
                found[index] = (uuid, data)
            else:  # a row it references, or its parent, deleted since: read it again as it is now
                log.debug("%s %s: %s not found for its after image: the row is read again", table.name, key,
                          missing[0][2] if missing else "its identity")
        return found

    def _load_wanted(self, valid: list[tuple[dict[str, Any], SyncedTable]],
                     images: dict[int, Any]) -> tuple[dict[str, dict[Any, dict[str, Any]]], list[str]]:
        """The rows of the batch's creates and updates not sent from their image, read now; and the tables whose
        columns differ from the model's."""
        wanted: dict[str, set[Any]] = {}
        for index, (event, table) in enumerate(valid):
            if event["op"] != wire.DELETE and index not in images:
                wanted.setdefault(table.name, set()).add(event["after"][table.key])
        current: dict[str, dict[Any, dict[str, Any]]] = {}
        changed: list[str] = []
        for name, keys in wanted.items():
            current[name], ddl = self._load_rows(self.model.synced[name], keys)
            if ddl:
                changed.append(name)
        return current, changed

    def _message(
        self, event: dict[str, Any], table: SyncedTable, key: Any, uuid: str, data: dict[str, Any] | None,
        sent: str,
    ) -> dict[str, Any]:
        return wire.message(site=self.settings.site, table=table.name, op=event["op"], uuid=uuid,
                            source=event["source"], key=key, data=data, sent=sent)

    def _deleted_identity(self, valid: list[tuple[dict[str, Any], SyncedTable]]) -> dict[tuple[str, Any], str]:
        """uuids of deleted rows: own uuid from the before image; a subclass's from its parent's delete in the
        batch, else from the site DB, else from the parent's delete later in the binlog."""
        found: dict[tuple[str, Any], str] = {}
        need: dict[str, set[Any]] = {}
        for event, table in valid:
            if event["op"] != wire.DELETE:
                continue
            key = event["before"][table.key]
            if not table.is_subclass and event["before"].get("uuid"):
                found[(table.name, key)] = event["before"]["uuid"]
            else:
                need.setdefault(table.identity.table, set()).add(key)
        for ident_table, keys in need.items():
            missing = {k for k in keys if (ident_table, k) not in found}
            if missing:
                identity_key = self.model.tables[ident_table].primary_key[0]
                for key, uuid in self.uuids.resolve(ident_table, identity_key, missing).items():
                    found[(ident_table, key)] = uuid
        gone: dict[str, set[Any]] = {}
        start: Position | None = None
        epoch = ""
        for event, table in valid:
            if event["op"] != wire.DELETE or (table.identity.table, event["before"][table.key]) in found:
                continue
            source = event.get("source") or {}
            if not isinstance(source.get("file"), str) or not isinstance(source.get("pos"), int):
                continue  # not from the binlog: nothing to read further on
            gone.setdefault(table.identity.table, set()).add(event["before"][table.key])
            here = Position(source["file"], source["pos"])
            if start is None or position_key(here) < position_key(start):
                start, epoch = here, str(source.get("epoch") or "")
        if start is not None:
            columns = {name: self.model.tables[name].primary_key[0] for name in gone}
            found.update(self.parents.find(gone, start, epoch, columns))
        return found

    def _resolve_references(self, current: dict[str, dict[Any, dict[str, Any]]]) -> dict[tuple[str, Any], str]:
        """One batched lookup per referenced identity table for every foreign key (and subclass identity)."""
        return self._references((self.model.synced[name], rows.values()) for name, rows in current.items())

    def _references(self, tables: Iterable[tuple[SyncedTable, Iterable[dict[str, Any]]]]) -> dict[tuple[str, Any], str]:
        """uuids of what these rows reference (and of a subclass row's identity): one query per referenced table
        (through the uuid cache), never one per row."""
        need: dict[tuple[str, str], set[Any]] = {}
        for table, table_rows in tables:
            rows = list(table_rows)
            if table.is_subclass:
                need.setdefault((table.identity.table, table.identity.key), set()).update(row[table.key]
                                                                                        for row in rows)
            for column, ref in table.references.items():
                if ref.identity is None:
                    continue
                ids = need.setdefault((ref.identity.table, ref.identity.key), set())
                ids.update(row[column] for row in rows if row[column] is not None)
            if table.name in ATTRIBUTE_ID_VALUES:
                self._attribute_value_ids(table, rows, need)
        resolved: dict[tuple[str, Any], str] = {}
        for (ident_table, key), ids in need.items():
            for local, uuid in self.uuids.resolve(ident_table, key, ids).items():
                resolved[(ident_table, local)] = uuid
        return resolved

    def _attribute_format(self, table: SyncedTable, type_id: Any) -> str | None:
        if type_id not in self.attribute_formats:
            _value, type_column, format_column = ATTRIBUTE_ID_VALUES[table.name]
            type_table = table.references[type_column].table
            type_key = self.model.tables[type_table].primary_key[0]
            with self.conn.cursor() as cur:
                cur.execute(sql("SELECT {}, {} FROM {}", quote(type_key), quote(format_column), quote(type_table)))
                for tid, fmt in cur.fetchall():
                    target = class_table(fmt or "")
                    self.attribute_formats[tid] = target if target in self.model.tables else None
        return self.attribute_formats.get(type_id)

    def _attribute_value_ids(self, table: SyncedTable, rows: list[dict[str, Any]],
                             need: dict[tuple[str, str], set[Any]]) -> None:
        value_column, type_column, _format = ATTRIBUTE_ID_VALUES[table.name]
        for row in rows:
            target = self._attribute_format(table, row[type_column])
            if target and row[value_column] and str(row[value_column]).isdigit():
                identity = self.model.identity_of(target)
                if identity is not None:
                    need.setdefault((identity.table, identity.key), set()).add(int(row[value_column]))

    def _data(self, table: SyncedTable, row: dict[str, Any], refs: dict[tuple[str, Any], str],
              missing: list[Missing], key: Any) -> dict[str, Any]:
        """The wire form of `row`; a reference whose uuid is not in `refs` is added to `missing`."""
        data: dict[str, Any] = {}
        for column, convert, ref_table, ref_identity in self._converters(table):
            value = row[column]
            if ref_identity is not None and ref_table is not None and value is not None:
                uuid = refs.get((ref_identity, value))
                if uuid is None:
                    missing.append((table.name, key, column, ref_table, value))
                data[column] = wire.ref(ref_table, uuid)
            elif convert is not None and value is not None:
                data[column] = convert(value)
            else:
                data[column] = value
        if table.name in ATTRIBUTE_ID_VALUES:
            value_column, type_column, _format = ATTRIBUTE_ID_VALUES[table.name]
            target = self._attribute_format(table, row[type_column])
            identity = self.model.identity_of(target) if target else None
            raw = row[value_column]
            if target and identity is not None and raw and str(raw).isdigit():
                uuid = refs.get((identity.table, int(raw)))
                if uuid is None:
                    missing.append((table.name, key, value_column, target, raw))
                data[value_column] = wire.ref(target, uuid)
        return data


def _in_order(checked: list[tuple[dict[str, Any], SyncedTable | None]], records: list[dict[str, Any]],
              invalid: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The batch's output in its events' order: each valid event gave one record (a message or a drop record), an
    invalid one gets a drop record in its place, so the checkpoint never moves back over one."""
    if len(records) != sum(1 for _e, t in checked if t is not None):  # not one each: drops first, then the rest
        yield from (invalid(e) for e, t in checked if t is None)
        yield from records
        return
    given = iter(records)
    for event, table in checked:
        yield next(given) if table is not None else invalid(event)


def _same_transaction(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Binlog events of one transaction share its start position; snapshot rows are never one transaction."""
    sa, sb = a.get("source") or {}, b.get("source") or {}
    if sa.get("snapshot") or sb.get("snapshot"):
        return False
    return (sa.get("file"), sa.get("pos")) == (sb.get("file"), sb.get("pos")) and sa.get("pos") is not None


def enrich(events: Iterable[dict[str, Any]], settings: EnrichSettings, model: SchemaModel) -> Iterator[dict[str, Any]]:
    enricher = Enricher(settings, model)
    try:
        yield from enricher.run(events)
    finally:
        enricher.close()
