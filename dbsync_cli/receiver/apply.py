"""Apply: sync messages → the central OpenMRS database, idempotently.

One transaction per batch holds the changes, their entity hashes, the handled message ids, the site status, the
REST-call queue entries and the inbox deletions: a crash anywhere re-applies a whole batch or nothing. A message
that fails goes to the retry queue inside the same transaction (the batch is replayed one savepoint per message
when that happens), so one bad message never stops the others. Messages for an entity with a pending retry entry
or an unresolved conflict wait behind it, in order.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.cursors

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state
from dbsync_cli.receiver.conflict import Verdict, judge, row_hash
from dbsync_cli.receiver.message import Parsed, entity_key, is_heartbeat, parse
from dbsync_cli.receiver.resolve import Converter, MessageError, MissingReference, UuidToId
from dbsync_cli.records import dumps
from dbsync_cli.schema import SchemaModel, SyncedTable
from dbsync_cli.schema.openmrs import REST_RESOURCES
from dbsync_cli.values import parse_timezone

log = logging.getLogger("dbsync.apply")



@dataclass
class ApplySettings:
    central: DbParams  # database = the central OpenMRS schema
    state_schema: str = "dbsync"
    timezone: str = "UTC"
    conflict_policy: str = "newer"  # newer | any
    batch_messages: int = 500
    max_message_bytes: int = 4_000_000
    rest_enabled: bool = False


@dataclass
class Outcome:
    message_id: str
    outcome: str  # applied | duplicate | stale | conflict | waiting | retry | error
    table: str | None = None
    uuid: str | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class _Retry(Exception):
    """Park this message in the retry queue with this reason (inside the batch transaction)."""


@dataclass
class _Batch:
    outcomes: list[Outcome] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    inbox: list[int] = field(default_factory=list)
    touched: dict[tuple[str, Any], tuple[str, str]] = field(default_factory=dict)  # (table, key) → (uuid, site)
    removed: list[tuple[str, str]] = field(default_factory=list)
    rest: list[tuple[str, str | None, str]] = field(default_factory=list)
    sites: dict[str, tuple[int, str]] = field(default_factory=dict)  # site → (count, last message id)
    ours: set[tuple[str, str]] = field(default_factory=set)  # entities this batch wrote: no conflict with ourselves


@dataclass
class _Inserts:
    """Consecutive INSERTs of one table (same columns), written with one multi-row statement when flushed."""

    table: SyncedTable
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # parameters, one tuple per row
    size: int = 0
    uuids: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)  # subclass rows: the parent's key, known before the insert


GROUP_ROWS = 1000  # rows per multi-row INSERT at most
GROUP_BYTES = 1_000_000  # and bytes of values (max_allowed_packet is 16 MB by default)


class Applier:
    def __init__(self, settings: ApplySettings, model: SchemaModel):
        self.settings = settings
        self.model = model
        self.s = state.schema_name(settings.state_schema)
        self.conn = settings.central.connect(autocommit=False)
        with self.conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            state.migrate(self.conn, settings.state_schema, settings.central.database)
            cur.execute("SELECT MIN(user_id) FROM users")
            self.default_user = cur.fetchone()[0] or 1
        self.ids = UuidToId(model)
        self.convert = Converter(model, self.ids, parse_timezone(settings.timezone), self.default_user)
        self.sites: dict[str, state.Site] = {}
        self.blocked: set[str] = set()
        # Grouped INSERTs (only while a batch runs fast-path, never with savepoints): rows held back until the next
        # statement that could depend on them; (identity table, uuid) of every held row.
        self._group: _Inserts | None = None
        self._grouped: set[tuple[str, str]] = set()
        self._grouping = False
        # Rows and entity hashes read for a whole batch up front (None outside a batch): rows that existed when the
        # batch started, dropped when the batch writes them; hashes only change at the end of a batch (_finish).
        self._rows: dict[tuple[str, Any], dict[str, Any]] | None = None
        self._hashes: dict[tuple[str, str], str | None] | None = None
        self._load_blocked()

    def close(self) -> None:
        self.conn.close()

    def _load_blocked(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT entity_key FROM {self.s}.receiver_retry_queue WHERE entity_key IS NOT NULL "  # noqa: S608
                f"UNION SELECT entity_key FROM {self.s}.receiver_conflict_queue WHERE resolved = 0"
            )
            self.blocked = {row[0] for row in cur.fetchall()}
        self.conn.commit()

    # ---- the stage -------------------------------------------------------------------------------------------
    def run(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for record in records:
            if is_heartbeat(record):
                continue
            batch.append(record)
            if len(batch) >= self.settings.batch_messages:
                yield from (o.record() for o in self.apply_batch(batch))
                batch = []
        if batch:
            yield from (o.record() for o in self.apply_batch(batch))

    def apply_batch(self, records: list[dict[str, Any]]) -> list[Outcome]:
        parsed = [parse(r, self.model, self.settings.max_message_bytes) for r in records]
        self.sites = state.sites(self.conn, self.settings.state_schema)
        blocked_before = set(self.blocked)
        try:
            result = self._run(parsed, careful=False)
        except Exception as exc:  # noqa: BLE001 - any failure: replay with one savepoint per message
            self.conn.rollback()
            self.ids.clear()
            self.blocked = blocked_before
            log.info("batch failed (%s: %s); replaying it message by message", type(exc).__name__, exc)
            result = self._run(parsed, careful=True)
        return result

    def _run(self, parsed: list[Parsed], careful: bool) -> list[Outcome]:
        batch = _Batch()
        self.ids.new_batch()
        with self.conn.cursor() as cur:
            done = self._handled_ids(cur, [p.message_id for p in parsed])
            self._prefetch(cur, parsed)
            self._prefetch_rows(cur, parsed)
            self._grouping = not careful
            try:
                self._messages(cur, parsed, batch, done, careful)
                self._flush(cur, batch)
            finally:
                self._grouping = False
                self._group = None
                self._grouped.clear()
                self._rows = self._hashes = None
            self._finish(cur, batch)
        self.conn.commit()
        for outcome in batch.outcomes:
            if outcome.outcome in ("retry", "error", "waiting"):
                log.warning("message %s → %s: %s", outcome.message_id, outcome.outcome, outcome.reason)
        return batch.outcomes

    def _messages(self, cur: Any, parsed: list[Parsed], batch: _Batch, done: set[str], careful: bool) -> None:
        for index, item in enumerate(parsed):
            if item.inbox is not None:
                batch.inbox.append(item.inbox)
            if item.message_id in done:
                batch.outcomes.append(Outcome(item.message_id, "duplicate"))
                continue
            done.add(item.message_id)
            if careful:
                cur.execute(f"SAVEPOINT m{index}")
            try:
                batch.outcomes.append(self._one(cur, item, batch))
            except Exception as exc:
                if not careful:
                    raise
                cur.execute(f"ROLLBACK TO SAVEPOINT m{index}")
                self.ids.clear()
                reason = exc.args[1] if isinstance(exc, pymysql.MySQLError) and len(exc.args) > 1 else str(exc)
                batch.outcomes.append(self._park(cur, item, f"apply failed: {reason}", batch))

    # ---- one message ---------------------------------------------------------------------------------------
    def _one(self, cur: Any, item: Parsed, batch: _Batch, *, from_retry: bool = False, force: bool = False,
             only: list[str] | None = None) -> Outcome:
        if item.error is not None:
            return self._park(cur, item, item.error, batch, kind="error")
        message = item.message
        assert message is not None and item.table is not None
        table = item.table
        site = self.sites.get(message["site"])
        if site is None or site.disabled:
            why = "is not registered" if site is None else "is disabled"
            return self._park(cur, item, f"site {message['site']!r} {why} (dbsync sites add)", batch)
        ek = entity_key(self.model, table, message["uuid"])
        if ek in self.blocked and not from_retry:
            return self._park(cur, item, f"waiting behind an earlier message for {ek}", batch, kind="waiting")
        try:
            outcome = self._change(cur, item, table, batch, force=force, only=only)
        except MissingReference as exc:
            return self._park(cur, item, str(exc), batch)
        except MessageError as exc:
            return self._park(cur, item, str(exc), batch, kind="error")
        if outcome.outcome == "applied":
            count, _ = batch.sites.get(site.identifier, (0, ""))
            batch.sites[site.identifier] = (count + 1, item.message_id)
            if self.settings.rest_enabled and table.name in REST_RESOURCES:
                resource, sub = REST_RESOURCES[table.name]
                batch.rest.append((resource, sub, message["uuid"]))
        batch.handled.append(item.message_id)
        return outcome

    def _change(self, cur: Any, item: Parsed, table: SyncedTable, batch: _Batch, *, force: bool = False,
                only: list[str] | None = None) -> Outcome:
        """Insert, update or delete one entity; `force` skips the conflict rule, `only` limits the columns."""
        message = item.message
        assert message is not None
        uuid = message["uuid"]
        ident = table.identity.table
        if self._grouped and ((ident, uuid) in self._grouped or any(
                ref in self._grouped for ref in self.convert.references(table, message.get("data") or {}))):
            self._flush(cur, batch)  # this message reads a row that is still held back
        key = self.ids.lookup(cur, ident, uuid)
        current = self._current(cur, table, key) if key is not None else None
        if message["op"] == "d":
            if current is None:
                return Outcome(item.message_id, "applied", table.name, uuid, "already absent")
            verdict = Verdict() if force else self._judge(cur, table, uuid, current, message, None, batch)
            if verdict.park:
                return self._conflict(cur, item, verdict, current, batch)
            cur.execute(f"DELETE FROM `{table.name}` WHERE `{table.key}` = %s", (key,))  # noqa: S608
            if not table.is_subclass:
                self.ids.forget(ident, uuid)
            batch.removed.append((table.name, uuid))
            batch.touched.pop((table.name, key), None)
            return Outcome(item.message_id, "applied", table.name, uuid)
        data = message["data"] or {}
        if only is not None:
            unknown = sorted(set(only) - set(data))
            if unknown:
                raise MessageError(f"--merge: {', '.join(unknown)} not in the incoming {table.name} row")
            data = {c: data[c] for c in only}
        values = self.convert.values(cur, table, data, message["site"])
        if key is None:  # the entity (or its parent) may have become a placeholder while converting
            key = self.ids.lookup(cur, ident, uuid)
            if key is None and table.is_subclass:
                key = self.convert.resolve(cur, ident, uuid, allow_placeholder=True)
            current = self._current(cur, table, key) if key is not None else None
        if current is not None:
            verdict = Verdict() if force else self._judge(cur, table, uuid, current, message, values, batch)
            if verdict.park:
                return self._conflict(cur, item, verdict, current, batch)
            if verdict.stale:
                return Outcome(item.message_id, "stale", table.name, uuid, verdict.reason)
            if values:
                sets = ", ".join(f"`{c}` = %s" for c in values)
                cur.execute(f"UPDATE `{table.name}` SET {sets} WHERE `{table.key}` = %s",  # noqa: S608
                            [*values.values(), key])
        else:
            row = dict(values)
            if table.is_subclass:
                row[table.key] = key
            else:
                row["uuid"] = uuid
            if self._grouping:
                self._hold(cur, batch, table, row, uuid, message["site"], key)
                batch.ours.add((table.name, uuid))
                return Outcome(item.message_id, "applied", table.name, uuid)
            columns = ", ".join(f"`{c}`" for c in row)
            cur.execute(f"INSERT INTO `{table.name}` ({columns}) VALUES ({', '.join(['%s'] * len(row))})",  # noqa: S608
                        list(row.values()))
            if not table.is_subclass:
                key = cur.lastrowid
                self.ids.remember(ident, uuid, key)
        batch.touched[(table.name, key)] = (uuid, message["site"])
        batch.ours.add((table.name, uuid))
        return Outcome(item.message_id, "applied", table.name, uuid)

    # ---- grouped inserts -----------------------------------------------------------------------------------
    def _hold(self, cur: Any, batch: _Batch, table: SyncedTable, row: dict[str, Any], uuid: str, site: str,
              key: Any) -> None:
        """Hold an INSERT back to write it with its neighbours of the same table in one statement."""
        columns = tuple(row)
        values = tuple(row.values())
        size = sum(len(v) if isinstance(v, str | bytes) else 8 for v in values)
        group = self._group
        if group is not None and (group.table.name != table.name or group.columns != columns
                                  or len(group.rows) >= GROUP_ROWS or group.size + size > GROUP_BYTES):
            self._flush(cur, batch)
            group = None
        if group is None:
            group = self._group = _Inserts(table, columns)
        group.rows.append(values)
        group.size += size
        group.uuids.append(uuid)
        group.sites.append(site)
        group.keys.append(key)
        self._grouped.add((table.identity.table, uuid))

    def _flush(self, cur: Any, batch: _Batch) -> None:
        """Write the held rows (one multi-row INSERT) and learn their keys; any error fails the batch as usual."""
        group, self._group = self._group, None
        self._grouped.clear()
        if group is None or not group.rows:
            return
        table = group.table
        columns = ", ".join(f"`{c}`" for c in group.columns)
        # parameterised: PyMySQL's executemany sends these as multi-row INSERTs (escaping every value itself)
        cur.executemany(f"INSERT INTO `{table.name}` ({columns}) VALUES "  # noqa: S608
                        f"({', '.join(['%s'] * len(group.columns))})", group.rows)
        if cur.rowcount != len(group.rows):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(group.rows)} grouped rows inserted")
        ident = table.identity.table
        if table.is_subclass:
            keys = group.keys
        else:  # read the keys back by uuid: never infer them from auto-increment arithmetic
            found: dict[str, Any] = {}
            for i in range(0, len(group.uuids), GROUP_ROWS):
                part = group.uuids[i:i + GROUP_ROWS]
                cur.execute(f"SELECT uuid, `{table.key}` FROM `{table.name}` WHERE uuid IN "  # noqa: S608
                            f"({','.join(['%s'] * len(part))})", part)
                found.update(cur.fetchall())
            keys = [found[u] for u in group.uuids]
        for uuid, site, key in zip(group.uuids, group.sites, keys, strict=True):
            if not table.is_subclass:
                self.ids.remember(ident, uuid, key)
            batch.touched[(table.name, key)] = (uuid, site)

    def _prefetch_rows(self, cur: Any, parsed: list[Parsed]) -> None:
        """Current rows and entity hashes of the batch's entities that exist at central: one query per table."""
        keys: dict[str, dict[Any, str]] = {}
        for item in parsed:
            if item.message is None or item.table is None or not isinstance(item.message.get("uuid"), str):
                continue
            key = self.ids.get(item.table.identity.table, item.message["uuid"])
            if key is not None:
                keys.setdefault(item.table.name, {})[key] = item.message["uuid"]
        self._rows, self._hashes = {}, {}
        for name, wanted in keys.items():
            info = self.model.synced[name]
            ordered = list(wanted)
            with self.conn.cursor(pymysql.cursors.DictCursor) as dcur:
                for i in range(0, len(ordered), 1000):
                    part = ordered[i:i + 1000]
                    dcur.execute(f"SELECT * FROM `{name}` WHERE `{info.key}` IN "  # noqa: S608
                                 f"({','.join(['%s'] * len(part))})", part)
                    for row in dcur.fetchall():
                        self._rows[(name, row[info.key])] = row
            uuids = sorted(set(wanted.values()))
            for i in range(0, len(uuids), 1000):
                part = uuids[i:i + 1000]
                self._hashes.update(((name, u), None) for u in part)
                cur.execute(f"SELECT entity_uuid, hash FROM {self.s}.entity_hash WHERE table_name = %s AND "  # noqa: S608
                            f"entity_uuid IN ({','.join(['%s'] * len(part))})", [name, *part])
                for uuid, digest in cur.fetchall():
                    self._hashes[(name, uuid)] = digest

    def _current(self, cur: Any, table: SyncedTable, key: Any) -> dict[str, Any] | None:
        if self._rows is not None:
            row = self._rows.pop((table.name, key), None)  # used once: this message may change the row
            if row is not None:
                return row
        with self.conn.cursor(pymysql.cursors.DictCursor) as dcur:
            dcur.execute(f"SELECT * FROM `{table.name}` WHERE `{table.key}` = %s", (key,))  # noqa: S608
            return dcur.fetchone()

    def _judge(self, cur: Any, table: SyncedTable, uuid: str, current: dict[str, Any], message: dict[str, Any],
               values: dict[str, Any] | None, batch: _Batch) -> Verdict:
        if (table.name, uuid) in batch.ours:
            return Verdict()
        if self._hashes is not None and (table.name, uuid) in self._hashes:
            digest = self._hashes[(table.name, uuid)]
            row = None if digest is None else (digest,)
        else:
            cur.execute(f"SELECT hash FROM {self.s}.entity_hash WHERE table_name=%s AND entity_uuid=%s",  # noqa: S608
                        (table.name, uuid))
            row = cur.fetchone()
        incoming_time = None
        ts_ms = (message.get("source") or {}).get("ts_ms")
        if isinstance(ts_ms, int | float):
            incoming_time = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(self.convert.tz).replace(
                tzinfo=None)
        return judge(table, current, row[0] if row else None, message, values, incoming_time,
                     self.settings.conflict_policy)

    # ---- parking -------------------------------------------------------------------------------------------
    def _park(self, cur: Any, item: Parsed, reason: str, batch: _Batch, kind: str = "retry") -> Outcome:
        message = item.message or {}
        # a message that can never apply (kind "error") holds nothing up; a retry keeps its entity's later messages
        ek = entity_key(self.model, item.table, message.get("uuid")) if item.table and kind != "error" else None
        cur.execute(
            f"INSERT INTO {self.s}.receiver_retry_queue (message_id, site, table_name, entity_key, body, reason, "  # noqa: S608
            "date_created) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (item.message_id[:255], str(message.get("site") or item.site or "")[:100] or None,
             item.table.name if item.table else None, ek, item.raw, reason[:2000], _now()),
        )
        if ek is not None:
            self.blocked.add(ek)
        batch.handled.append(item.message_id)
        return Outcome(item.message_id, kind, item.table.name if item.table else None, message.get("uuid"), reason)

    def _conflict(self, cur: Any, item: Parsed, verdict: Verdict, current: dict[str, Any], batch: _Batch) -> Outcome:
        message = item.message
        assert message is not None and item.table is not None
        ek = entity_key(self.model, item.table, message["uuid"])
        cur.execute(
            f"INSERT INTO {self.s}.receiver_conflict_queue (message_id, site, table_name, entity_uuid, entity_key, "  # noqa: S608
            "body, central_row, reason, date_created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (item.message_id, message["site"], item.table.name, message["uuid"], ek, item.raw,
             dumps(current), verdict.reason, _now()),
        )
        self.blocked.add(ek)
        batch.handled.append(item.message_id)
        return Outcome(item.message_id, "conflict", item.table.name, message["uuid"], verdict.reason)

    # ---- batch bookkeeping ---------------------------------------------------------------------------------
    def _handled_ids(self, cur: Any, ids: list[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(ids))
        for i in range(0, len(unique), 1000):
            part = unique[i : i + 1000]
            cur.execute(f"SELECT message_id FROM {self.s}.applied_message WHERE message_id IN "  # noqa: S608
                        f"({','.join(['%s'] * len(part))})", part)
            found.update(row[0] for row in cur.fetchall())
        return found

    def _prefetch(self, cur: Any, parsed: list[Parsed]) -> None:
        wanted: dict[str, set[str]] = {}
        for item in parsed:
            if item.message is None or item.table is None:
                continue
            wanted.setdefault(item.table.identity.table, set()).add(item.message["uuid"])
            for ident, uuid in self.convert.references(item.table, item.message.get("data") or {}):
                wanted.setdefault(ident, set()).add(uuid)
        for ident, uuids in wanted.items():
            self.ids.prefetch(cur, ident, uuids)

    def _finish(self, cur: Any, batch: _Batch) -> None:
        now = _now()
        by_table: dict[str, list[Any]] = {}
        for (table, key) in batch.touched:
            by_table.setdefault(table, []).append(key)
        hashes = []
        for table, keys in by_table.items():
            info = self.model.synced[table]
            with self.conn.cursor(pymysql.cursors.DictCursor) as dcur:
                for i in range(0, len(keys), 1000):
                    part = keys[i : i + 1000]
                    dcur.execute(f"SELECT * FROM `{table}` WHERE `{info.key}` IN "  # noqa: S608
                                 f"({','.join(['%s'] * len(part))})", part)
                    for row in dcur.fetchall():
                        uuid, site = batch.touched[(table, row[info.key])]
                        hashes.append((table, uuid, row_hash(row), site, now))
        if hashes:
            cur.executemany(
                f"INSERT INTO {self.s}.entity_hash (table_name, entity_uuid, hash, site, date_synced) "  # noqa: S608
                "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE hash=VALUES(hash), site=VALUES(site), "
                "date_synced=VALUES(date_synced)", hashes)
        if batch.removed:
            cur.executemany(f"DELETE FROM {self.s}.entity_hash WHERE table_name=%s AND entity_uuid=%s",  # noqa: S608
                            batch.removed)
        if batch.handled:
            cur.executemany(f"INSERT IGNORE INTO {self.s}.applied_message (message_id, date_applied) "  # noqa: S608
                            "VALUES (%s, %s)", [(m[:255], now) for m in batch.handled])
        if batch.inbox:
            cur.execute(f"DELETE FROM {self.s}.inbox WHERE id IN ({','.join(['%s'] * len(batch.inbox))})",  # noqa: S608
                        batch.inbox)
        if batch.rest:
            cur.executemany(f"INSERT INTO {self.s}.rest_call (resource, sub_resource, entity_uuid, date_created) "  # noqa: S608
                            "VALUES (%s, %s, %s, %s)", [(*r, now) for r in batch.rest])
        for identifier, (count, last_id) in batch.sites.items():
            cur.execute(
                f"INSERT INTO {self.s}.receiver_sync_status (site_id, last_sync_date, last_message_id, messages) "  # noqa: S608
                "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE last_sync_date=VALUES(last_sync_date), "
                "last_message_id=VALUES(last_message_id), messages=messages+VALUES(messages)",
                (self.sites[identifier].id, now, last_id[:255], count),
            )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def apply(records: Iterable[dict[str, Any]], settings: ApplySettings, model: SchemaModel) -> Iterator[dict[str, Any]]:
    applier = Applier(settings, model)
    try:
        yield from applier.run(records)
    finally:
        applier.close()
