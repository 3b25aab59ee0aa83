"""Capture: the site's binlog (after an optional snapshot) as change events, resumable exactly.

A position is a transaction start (file, pos) plus the index of the row within that transaction: resuming at a row
event inside a statement would silently drop the rest, so capture restarts at the transaction and skips the rows
already handled. Heartbeat records (`op: "h"`) carry the last transaction boundary so that quiet periods and
other tables' traffic still move the checkpoint, and so that downstream batches flush when the binlog is idle.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Generator, Iterator
from typing import Any

import pymysql
from pymysqlreplication.bitmap import BitCount
from pymysqlreplication.event import (
    FormatDescriptionEvent,
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from dbsync_cli import exitcodes, wire
from dbsync_cli.i18n import _
from dbsync_cli.sender import binlog, gtid, schema_history
from dbsync_cli.sender.binlog import CaptureSettings, CaptureStop, Position
from dbsync_cli.sender.checkpoint import FAILOVER, CheckpointStore
from dbsync_cli.sender.clock import ClockWatch

log = logging.getLogger("dbsync.capture")

Event = dict[str, Any]


def strip(image: dict | None, secrets: tuple[str, ...]) -> dict | None:
    if image is None or not secrets:
        return image
    return {k: v for k, v in image.items() if k not in secrets}


def _gaps(none_sources: dict[str, str]) -> list[str] | None:
    """Columns of an after image whose None is not a NULL: not logged (binlog_row_image NOBLOB or MINIMAL), a zero
    or invalid date, an empty SET. Enrich reads those rows from the site database instead of trusting the image."""
    if not none_sources:
        return None
    gaps = [column for column, source in none_sources.items() if source != "null"]
    return gaps or None


def _row_images(event: Any) -> Iterator[tuple[str, dict | None, dict | None, list[str] | None]]:
    if isinstance(event, WriteRowsEvent):
        for row in event.rows:
            yield wire.CREATE, None, row["values"], _gaps(row["none_sources"])
    elif isinstance(event, UpdateRowsEvent):
        for row in event.rows:
            yield wire.UPDATE, row["before_values"], row["after_values"], _gaps(row["after_none_sources"])
    else:
        for row in event.rows:
            yield wire.DELETE, row["values"], None, None


def capture(settings: CaptureSettings, checkpoint: dict[str, Any] | None) -> Iterator[Event]:
    """Yield change events after `checkpoint` (a source dict from a published record), snapshotting first if due.

    A checkpoint no longer in the server's binlog (purged, or the history restarted: RESET MASTER, a restored or
    rebuilt server) is never resumed from: with `snapshot = "when_needed"` capture takes a new snapshot under a new
    message-id epoch, otherwise it stops (exit 10)."""
    while True:
        try:
            yield from _capture(settings, checkpoint)
            return
        except binlog.PositionLost as lost:
            if settings.snapshot != "when_needed":
                raise lost.stop() from None
            log.warning("%s: taking a new snapshot under a new message-id epoch (snapshot = when_needed)", lost)
            checkpoint = None


def _capture(settings: CaptureSettings, checkpoint: dict[str, Any] | None) -> Iterator[Event]:
    with settings.db.connect() as conn:
        binlog.check_settings(conn, settings.min_retention_hours)
        start: Position | None = None
        skip_rows = 0
        resume_snapshot: dict[str, Any] | None = None
        flavor = gtid.flavor_of(conn)
        snapshot_again = False  # a failover interrupted the snapshot: taken again whatever sender.snapshot says
        if checkpoint is not None:
            checkpoint = _in_this_history(settings, conn, checkpoint)
            snapshot_again = checkpoint is None
        epoch = checkpoint.get("epoch") if checkpoint is not None else None
        if not isinstance(epoch, str):
            epoch = binlog.new_epoch(conn)
            log.info("message-id epoch %s (site server id and start of this binlog history)", epoch)
        if checkpoint is not None and checkpoint.get("snapshot"):
            resume_snapshot = checkpoint
        elif checkpoint is not None:
            start = Position(checkpoint["file"], int(checkpoint["pos"]))
            skip_rows = int(checkpoint.get("row", -1)) + 1
        elif settings.snapshot == "never" and not snapshot_again:
            start = binlog.current_position(conn)
        gtids = None
        if checkpoint is not None and isinstance(checkpoint.get("gtid_pos"), str) and flavor is not None:
            gtids = gtid.parse(flavor, checkpoint["gtid_pos"])
        elif start is not None and resume_snapshot is None:
            gtids = gtid.state_at(settings, conn, flavor, start)
        # --until-idle: the end as it is now; a stream that ends earlier (a dropped connection) is resumed
        target = binlog.current_position(conn) if settings.until_idle else None
        columns = schema_history.current_columns(conn, settings.db.database or "", settings.tables)
    emitted = 0
    if checkpoint is None and (settings.snapshot != "never" or snapshot_again) or resume_snapshot is not None:
        from dbsync_cli.sender import snapshot as snapshot_stage  # only here: it loads rich's progress

        snap = snapshot_stage.Snapshot(settings, resume_snapshot, epoch)
        events = snap.events()
        for event in events:
            yield event
            emitted += 1
            if settings.stop.is_set() or settings.max_events is not None and emitted >= settings.max_events:
                events.close()
                return
        start, skip_rows = snap.position, 0
        gtids = None if snap.gtids is None or flavor is None else gtid.parse(flavor, snap.gtids)
    assert start is not None
    history = schema_history.SchemaHistory(settings.home, epoch)
    try:
        schema_history.seed(history, columns, start)
        yield from _streams(settings, history, start, skip_rows, emitted, target, epoch, gtids)
    finally:
        history.close()


def _streams(settings: CaptureSettings, history: schema_history.SchemaHistory, start: Position, skip_rows: int,
             emitted: int, target: Position | None, epoch: str, gtids: gtid.Gtids | None) -> Iterator[Event]:
    remaining = None if settings.max_events is None else settings.max_events - emitted
    while True:
        boundary, count = yield from stream(settings, start, skip_rows, remaining, epoch, history, gtids)
        remaining = None if remaining is None else remaining - count
        if target is None or settings.stop.is_set() or (remaining is not None and remaining <= 0) or (
                (boundary.file, boundary.pos) >= (target.file, target.pos)):
            return
        log.warning("binlog stream ended at %s, before the end seen at start (%s): continuing", boundary, target)
        start, skip_rows = boundary, 0


def stream(settings: CaptureSettings, start: Position, skip_rows: int, max_events: int | None,
           epoch: str, history: schema_history.SchemaHistory | None = None, gtids: gtid.Gtids | None = None
           ) -> Generator[Event, None, tuple[Position, int]]:
    """Row events from `start` (a transaction boundary), skipping the first `skip_rows` rows of that transaction.
    Every event's source carries the message-id `epoch`, when its binlog file was created (`born`) and the GTID
    position before its transaction (`gtid_pos`, from `gtids`: the position at `start`, kept up to date here)."""
    db = settings.db
    reader = binlog.reader(
        settings, start.file, start.pos,
        blocking=not settings.until_idle,
        slave_heartbeat=settings.heartbeat_seconds if not settings.until_idle else None,
        only_schemas=[db.database],
        only_tables=settings.tables,
        only_events=[
            MariadbGtidEvent, GtidEvent, QueryEvent, XidEvent, RotateEvent, HeartbeatLogEvent, FormatDescriptionEvent,
            TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent,
        ],
    )  # fmt: skip
    history = history if history is not None else schema_history.SchemaHistory(None)
    server_id = settings.server_id
    born: int | None = None  # creation time of reader.log_file, from its format description event
    txn = start  # start of the current (or next) transaction
    boundary = start  # last position where no transaction was open
    row = -1
    txn_gtid: str | None = None
    gtid_pos = None if gtids is None else str(gtids)  # before the current transaction
    in_txn = False
    emitted = 0
    last_beat = time.monotonic()
    binlog_ms: int | None = None  # time of the last binlog event read: a heartbeat is as old as what it covers
    clock = ClockWatch(db, settings.home, periodic=not settings.until_idle)  # the server's clock vs this host's
    clock.tick()
    watch = binlog.HistoryWatch(db)  # RESET MASTER while we wait at the end of the binlog
    try:
        for event in reader:
            clock.tick()
            if isinstance(event, FormatDescriptionEvent):
                born = int(event.timestamp)
                continue
            if isinstance(event, RotateEvent):
                if event.timestamp == 0 and in_txn:
                    raise RuntimeError("binlog connection was re-established inside a transaction; restarting capture")
                if not in_txn:
                    boundary = txn = Position(event.next_binlog, event.position)
                continue
            end = Position(reader.log_file, event.packet.log_pos)
            if isinstance(event, TableMapEvent):
                if event.table in settings.tables and not all(c.name for c in event.columns):
                    problem = schema_history.name_columns(history, event, end)  # MINIMAL metadata, MySQL 5.7
                    if problem is not None:
                        _stop_undecodable(settings, end, f"a {event.table} table map {problem}", history=True)
                continue
            if not isinstance(event, HeartbeatLogEvent) and event.timestamp:
                binlog_ms = event.timestamp * 1000
                clock.event(event.timestamp)
            if isinstance(event, MariadbGtidEvent | GtidEvent) or (
                isinstance(event, QueryEvent) and event.query == "BEGIN"
            ):
                if not in_txn:
                    txn = Position(reader.log_file, event.packet.log_pos - event.packet.event_size)
                    txn_gtid = getattr(event, "gtid", None)
                    if gtids is not None:
                        gtid_pos = str(gtids)
                        if txn_gtid is not None:
                            gtids.add(txn_gtid)
                    row = -1
                    in_txn = True
            elif isinstance(event, XidEvent | QueryEvent):
                if isinstance(event, QueryEvent) and _DML.match(str(event.query)) and _schema(event) == db.database:
                    _stop_undecodable(settings, end, "a data change logged as a statement (binlog_format is not ROW)")
                if isinstance(event, QueryEvent) and event.query != "COMMIT":
                    # DDL commits on its own; with row metadata FULL the next table map carries the new columns,
                    # without it the schema history gives them from here on
                    log.debug("DDL at %s: %s", end, str(event.query)[:200])
                    if _schema(event) == db.database or (db.database or "\0") in str(event.query):
                        _record_ddl(settings, history, str(event.query), end)  # not another database's DDL
                boundary = end
                in_txn = False
            elif isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                problem = _undecodable(event)
                if problem is not None:
                    _stop_undecodable(settings, end, f"a {event.table} row event {problem}")
                skipping = txn == start and skip_rows > 0
                secrets = settings.secret_columns.get(event.table, ())
                skew_ms = clock.skew_ms
                # what every row of this event shares, built once per event (a row event holds up to ~8 kB of rows)
                shared = {"server_id": server_id, "file": txn.file, "pos": txn.pos, "row": 0, "gtid": txn_gtid,
                          "gtid_pos": gtid_pos, "ts_ms": event.timestamp * 1000, "snapshot": False, "epoch": epoch,
                          "born": born, "end_pos": end.pos,  # how far the rows read so far reach: status's lag in it
                          **({"skew_ms": skew_ms} if skew_ms is not None else {})}
                for op, before, after, gaps in _row_images(event):
                    row += 1
                    if skipping and row < skip_rows:
                        continue
                    source = shared.copy()
                    source["row"] = row
                    record = {"op": op, "db": event.schema, "table": event.table,
                              "before": strip(before, secrets) if secrets else before,
                              "after": strip(after, secrets) if secrets else after, "source": source}
                    if gaps:
                        record["gaps"] = gaps
                    yield record
                    emitted += 1
                    if max_events is not None and emitted >= max_events:
                        return boundary, emitted
            now = time.monotonic()
            if isinstance(event, HeartbeatLogEvent) and not in_txn:  # idle at the end of the binlog
                watch.check(boundary)
            if not in_txn and (isinstance(event, HeartbeatLogEvent) or now - last_beat >= settings.heartbeat_seconds):
                last_beat = now
                # an idle server's heartbeat means "caught up": it carries now; otherwise the binlog time
                yield heartbeat(server_id, boundary, None if isinstance(event, HeartbeatLogEvent) else binlog_ms,
                                epoch=epoch, born=born if boundary.file == reader.log_file else None,
                                gtid_pos=None if gtids is None else str(gtids))
            if settings.stop.is_set():
                # inside a transaction too: the checkpoint keeps the row index, a restart skips what was done
                break
        if not in_txn:  # --until-idle reached the end of the binlog: caught up
            yield heartbeat(server_id, boundary, epoch=epoch, born=born if boundary.file == reader.log_file else None,
                            gtid_pos=None if gtids is None else str(gtids))
        return boundary, emitted
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == 1236:  # the server cannot send from there: purged, or a restarted history
            with db.connect() as conn:
                binlog.check_history(conn, {"file": start.file, "pos": start.pos}, lambda file: None)
            # the position is in the server's history: the server's own reason (e.g. an event larger than
            # max_allowed_packet), never a silent re-snapshot
            raise CaptureStop(_("the site server cannot send its binlog from {start}: {error}").format(
                start=start, error=exc.args[1]),
                              exitcodes.BINLOG_SETTINGS) from None
        raise
    finally:
        reader.close()
        if in_txn and gtids is not None and gtid_pos is not None:
            gtids.restore(gtid_pos)  # a stream resumed from `boundary` reads this transaction again


_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def _schema(event: Any) -> str:
    schema = event.schema
    return schema.decode("utf-8", "replace") if isinstance(schema, bytes) else str(schema)


def _undecodable(event: Any) -> str | None:
    """Why a row event cannot be decoded completely from the binlog itself, or None. Names filled in from
    information_schema by the library would be today's columns, not those the event was written with."""
    table = event.table_map.get(event.table_id)
    if table is not None and not getattr(table, "column_name_flag", True):
        return "carries no column names (binlog_row_metadata is not FULL)"
    bitmaps = [getattr(event, name, None) for name in ("columns_present_bitmap", "columns_present_bitmap2")]
    if any(b is not None and BitCount(b) != event.number_of_columns for b in bitmaps):
        return "carries only some of its columns (binlog_row_image is not FULL)"
    return None


def _record_ddl(settings: CaptureSettings, history: schema_history.SchemaHistory, statement: str,
                end: Position) -> None:
    """After a DDL statement naming synced tables: their columns from `end` on (today's, read now)."""
    named = [t for t in schema_history.tables_named(statement, settings.tables) if not history.recorded_at(t, end)]
    if not named:  # none named, or a replay of a DDL recorded before: no information_schema read
        return
    with settings.db.connect() as conn:
        columns = schema_history.current_columns(conn, settings.db.database or "", named)
    for table in named:
        if table in columns and history.record(table, end, columns[table]):
            log.info("schema history: %s has %d columns from %s on", table, len(columns[table]), end)


def _stop_undecodable(settings: CaptureSettings, where: Position, what: str, *, history: bool = False) -> None:
    """Never skip past an event we cannot decode: stop before it (the checkpoint stays before it), with the start-up
    message when the server's settings changed, so an operator fixes them (exit 11)."""
    if history:
        raise CaptureStop(_("binlog at {where}: {what}; capture stops before it (nothing after it is sent). Take a "
                            "new snapshot (`dbsync sender --snapshot when_needed` after clearing the checkpoint) or "
                            "set binlog_row_metadata=FULL").format(where=where, what=what), exitcodes.BINLOG_SETTINGS)
    with settings.db.connect() as conn:
        binlog.check_settings(conn)
    raise CaptureStop(_("binlog at {where}: {what}; capture stops before it (nothing after it is sent). Set the "
                        "binlog back to ROW/FULL/FULL; events written meanwhile need the sender to read columns from "
                        "a schema history (not supported yet)").format(where=where, what=what),
                      exitcodes.BINLOG_SETTINGS)


def heartbeat(server_id: int, position: Position, ts_ms: int | None = None, *, epoch: str | None = None,
              born: int | None = None, gtid_pos: str | None = None) -> Event:
    """A record that only says: everything before `position` has been captured (`ts_ms`: its binlog time)."""
    source: dict[str, Any] = {"server_id": server_id, "file": position.file, "pos": position.pos, "row": -1,
                              "ts_ms": ts_ms if ts_ms is not None else int(time.time() * 1000), "snapshot": False}
    if epoch is not None:
        source["epoch"] = epoch
    if born is not None:
        source["born"] = born
    if gtid_pos is not None:
        source["gtid_pos"] = gtid_pos
    return {"op": wire.HEARTBEAT, "source": source}


def _in_this_history(settings: CaptureSettings, conn: Any, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to go on from on this server: as it is when its position is in the server's binlog history;
    moved to where this server's binlog continues it when the site failed over to a replica (another server id,
    found by its GTID position: a new message-id epoch, since file and position names repeat across servers); None
    (a new snapshot) when a failover interrupted the snapshot. Raises PositionLost otherwise."""
    was = str(checkpoint.get("epoch") or "").partition(".")[0]
    now = str(binlog.server_id(conn))
    if not (was and was != now and isinstance(checkpoint.get("gtid_pos"), str) and checkpoint["gtid_pos"]):
        # the same server: its own history, or a restarted one (RESET MASTER, a restore), where GTIDs repeat
        binlog.check_history(conn, checkpoint, lambda file: binlog.file_born(settings, file))
        return checkpoint
    lost = binlog.PositionLost(Position(checkpoint["file"], int(checkpoint["pos"])),
                               f"the site server changed (server id {now}, the checkpoint's {was})", restarted=True)
    found = gtid.locate(settings, conn, checkpoint)
    if found is None:
        raise lost
    if checkpoint.get("snapshot"):
        log.warning("%s during the initial snapshot: taking it again from this server", lost)
        return None
    position, skip = found.position, found.skip_rows
    log.warning("%s: going on at %s (row %d of its transaction), where this server's binlog continues GTID "
                "position %s, under a new message-id epoch", lost, position, skip, checkpoint["gtid_pos"])
    if settings.home is not None:  # `dbsync status` shows the last failover and what it passed over
        store = CheckpointStore(settings.home)
        try:
            store.save({"at": round(time.time()), "from_server_id": was, "to_server_id": now,
                        "file": position.file, "pos": position.pos, "skip_rows": skip,
                        "gtid_pos": checkpoint["gtid_pos"], "not_sent": len(found.not_sent),
                        "not_sent_first": found.not_sent[0] if found.not_sent else None,
                        "not_sent_last": found.not_sent[-1] if found.not_sent else None}, name=FAILOVER)
        finally:
            store.close()
    return {**checkpoint, "file": position.file, "pos": position.pos, "row": skip - 1, "born": None,
            "epoch": binlog.new_epoch(conn), "gtid_pos": found.gtid_pos}


__all__ = ["CaptureSettings", "CaptureStop", "capture", "heartbeat", "stream"]
