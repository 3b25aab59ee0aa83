"""The uuid of a deleted subclass row whose parent is gone from the site DB, read from the parent's delete further on
in the binlog.

A subclass row (patient, drug_order, test_order, referral_order) has no uuid column: its identity is its parent's
(person, orders), whose key it shares. Its delete comes before the parent's in the binlog (the foreign key), and
by the time enrich reads the site DB the parent may be gone as well: deleted later in the same transaction, in a
part of it that falls into a later enrich batch (a transaction longer than `max_transaction_events`), or in a later
transaction while the sender is behind. A parent the site DB no longer shows was deleted by a committed transaction,
so its delete is in the binlog after the subclass delete's transaction start, and its before image holds the uuid.

Like Debezium, the sender keeps no copy of the site's rows: the binlog is the durable record. Nothing is written to
disk; a restart (or a kill -9 at any instant) reads the binlog again from the unconfirmed subclass delete, so the
answer does not depend on what the previous process saw. Memory is bounded: what one scan is asked for (at most an
enrich batch) plus an LRU map of the parent deletes scans passed (so the later batches of one long transaction need
no scan of their own). A scan reads from the earliest transaction start asked for until every parent is found, then
to the end of that transaction; it reads to the end of the binlog only when a parent is not there at all.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pymysqlreplication.event import FormatDescriptionEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent

from dbsync_cli import exitcodes
from dbsync_cli.db import DbParams
from dbsync_cli.i18n import _
from dbsync_cli.lru import LruMap
from dbsync_cli.sender import binlog, schema_history
from dbsync_cli.sender.binlog import CaptureSettings, CaptureStop, Position

log = logging.getLogger("dbsync.enrich")

#: replication server ids of these scans: another id than capture's (the server disconnects one of two readers with
#: one id), one per process (4_200_000_000 + pid is a second capture's, binlog.reader_id)
SERVER_ID_BASE = 4_100_000_000

Ident = tuple[str, Any]  # (identity table, key)


def position_key(position: Position) -> tuple[tuple[str, int], int]:
    """Binlog order: file sequence, then position."""
    return binlog.sequence(position.file), position.pos


class ParentDeletes:
    """uuids of parent rows (person, orders …) deleted at the site, from their deletes' before images in the
    binlog."""

    def __init__(self, db: DbParams, home: Path | None, size: int = 100_000):
        self.db = db
        self.home = home
        self.seen = LruMap(size)  # (table, key) → uuid of every parent delete a scan passed
        self.scans = 0

    def find(self, wanted: dict[str, set[Any]], start: Position, epoch: str, keys: dict[str, str]) -> dict[Ident, str]:
        """uuids of the deleted rows `wanted` (identity table → keys), whose deletes are at or after `start` (a
        transaction start); `keys` names each table's primary key column. Rows not found are left out."""
        found: dict[Ident, str] = {}
        rest: dict[str, set[Any]] = {}
        for table, ids in wanted.items():
            for key in ids:
                hit = self.seen.get((table, key))
                if hit is None:
                    rest.setdefault(table, set()).add(key)
                else:
                    found[(table, key)] = hit
        if rest:
            found.update(self._scan(rest, start, epoch, keys))
        return found

    def _scan(self, rest: dict[str, set[Any]], start: Position, epoch: str, keys: dict[str, str]) -> dict[Ident, str]:
        began = time.monotonic()
        self.scans += 1
        tables = sorted(rest)
        settings = CaptureSettings(db=self.db, server_id=SERVER_ID_BASE + os.getpid() % 90_000_000, tables=tables)
        stream = binlog.reader(
            settings, start.file, start.pos, blocking=False, only_schemas=[self.db.database], only_tables=tables,
            only_events=[TableMapEvent, DeleteRowsEvent, XidEvent, QueryEvent, RotateEvent, FormatDescriptionEvent])
        history: schema_history.SchemaHistory | None = None
        found: dict[Ident, str] = {}
        missing = sum(len(ids) for ids in rest.values())
        passed = 0
        try:
            for event in stream:
                if isinstance(event, TableMapEvent):
                    if event.table in rest and not all(c.name for c in event.columns):  # MINIMAL metadata, MySQL 5.7
                        history = history or schema_history.SchemaHistory(self.home, epoch)
                        where = Position(stream.log_file, event.packet.log_pos)
                        problem = schema_history.name_columns(history, event, where)
                        if problem is not None:
                            raise CaptureStop(_("binlog at {where}: a {table} table map {problem}; enrich cannot read "
                                                "the uuid of a deleted {table} row there and stops before the delete "
                                                "that needs it (nothing after it is sent)").format(
                                where=where, table=event.table, problem=problem), exitcodes.BINLOG_SETTINGS)
                elif isinstance(event, XidEvent | QueryEvent):
                    if missing == 0 and (isinstance(event, XidEvent) or event.query != "BEGIN"):
                        break  # the end of the transaction that held the last one asked for
                elif isinstance(event, DeleteRowsEvent) and event.table in rest:
                    key_column = keys[event.table]
                    for row in event.rows:
                        values = row["values"]
                        key, uuid = values.get(key_column), values.get("uuid")
                        if key is None or not uuid:
                            continue
                        passed += 1
                        self.seen.put((event.table, key), uuid)
                        if key in rest[event.table] and (event.table, key) not in found:
                            found[(event.table, key)] = uuid
                            missing -= 1
        finally:
            stream.close()
            if history is not None:
                history.close()
        log.info("enrich: %d deleted subclass row(s) took their parent's uuid from the parent's delete later in the "
                 "binlog (read from %s, %d parent delete(s) passed, %d not found, %.2f s)", len(found), start, passed,
                 missing, time.monotonic() - began)
        return found
