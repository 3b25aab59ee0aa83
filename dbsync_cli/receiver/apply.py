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
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dbsync_cli import complex_obs
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.faults import operator_fault
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.patients import Links
from dbsync_cli.openmrs.rules import REST_RESOURCES
from dbsync_cli.receiver import adopt, archive, bookkeeping, complex_files, reasons, state, trust
from dbsync_cli.receiver.adopt_held import HeldRows
from dbsync_cli.receiver.batch import ArchiveEntry, Batch, Outcome, failure_reason, log_outcomes, now
from dbsync_cli.receiver.conflict import FUTURE_DATED, HASH, Verdict, amount, judge
from dbsync_cli.receiver.current_rows import (
    LOCK_RETRIES,
    ROW_LOCK_WAIT_SECONDS,
    CurrentRows,
    backoff,
    deadlock,
)
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.inserts import GROUP_BYTES, GroupedInserts, consecutive_keys
from dbsync_cli.receiver.message import Parsed, entity_key, expand, expand_raw, parse_raw
from dbsync_cli.receiver.placeholder import is_placeholder
from dbsync_cli.receiver.resolve import (
    Converter,
    DeferredKey,
    HeldRow,
    MessageError,
    MissingReference,
    UuidToId,
)
from dbsync_cli.receiver.retry_rules import PERMANENT, queue_kind_of, reference_cause
from dbsync_cli.receiver.set_apply import SetApply, json_table_works
from dbsync_cli.receiver.state import CENTRAL_OWNER
from dbsync_cli.receiver.worker_locks import AlreadyApplying, refuse_beside_workers
from dbsync_cli.retrying import pause
from dbsync_cli.sql import StatementCache, chunks, columns, join, placeholders, quote, sql
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.wire import DELETE, READ, dumps, is_heartbeat

log = logging.getLogger("dbsync.apply")


#: how long a starting applier waits for the lock (a killed predecessor's session may take a moment to end)
LOCK_WAIT_SECONDS = 30


@dataclass
class ApplySettings:
    central: DbParams  # database = the central OpenMRS schema
    # defaults: the config model's (config_model.DEFAULTS), never literals of their own
    state_schema: str = DEFAULTS.central_db.state_schema
    timezone: str = DEFAULTS.receiver.timezone
    conflict_policy: str = DEFAULTS.receiver.conflict_policy  # newer | any
    central_rows: str = DEFAULTS.receiver.central_rows  # skip | park: a site's change to a row central owns
    cross_site_changes: str = DEFAULTS.receiver.cross_site_changes  # refuse | allow: a row another site created
    batch_messages: int = DEFAULTS.receiver.batch_messages
    max_message_bytes: int = DEFAULTS.broker.max_message_bytes
    rest_enabled: bool = False
    consecutive_keys: bool = True  # take new keys from a grouped INSERT when the server makes them consecutive
    future_tolerance_seconds: int = DEFAULTS.receiver.future_tolerance_seconds  # later than central's clock: no win
    row_lock_wait_seconds: int = ROW_LOCK_WAIT_SECONDS  # innodb_lock_wait_timeout of apply's session
    archive_days: int = DEFAULTS.receiver.archive_days  # 0: no archive of handled messages (receiver/archive.py)
    complex_obs: bool = False  # receiver.complex_obs_dir is set: an obs waits for its file (complex_files.py)
    set_apply: bool = DEFAULTS.receiver.set_apply  # plain rows written set-based (set_apply.py) before the rest


class Applier:
    _clock: tuple[dt.datetime, float] | None = None  # central's UTC clock read at a monotonic time (_central_now)
    #: who decides the outcomes being written (an operator's action: the console user or the CLI's); None: the receiver
    actor: str | None = None
    _future_logged: frozenset[str] = frozenset()  # sites whose future-dated changes were logged once

    def __init__(self, settings: ApplySettings, model: SchemaModel):
        self.settings = settings
        self.model = model
        self.s = state.schema_name(settings.state_schema)
        self.conn = settings.central.connect(autocommit=False)
        with self.conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (settings.row_lock_wait_seconds,))
            state.migrate(self.conn, settings.state_schema, settings.central.database)
            self.default_user = model.default_user(cur)
        self.ids = UuidToId(model)
        self.statements = StatementCache()  # hot-path statements, built once per table and column set
        self.convert = Converter(model, self.ids, parse_timezone(settings.timezone), self.default_user,
                                 fillers=self.s)
        self.sites: dict[str, state.Site] = {}
        self.blocked: set[str] = set()
        # Grouped INSERTs, only while a batch runs fast-path (never with savepoints).
        with self.conn.cursor() as cur:
            consecutive = settings.consecutive_keys and consecutive_keys(cur)
            cur.execute("SELECT @@max_allowed_packet")
            (packet,) = cur.fetchone() or (4_194_304,)
        self.inserts = GroupedInserts(self.ids, consecutive, max_bytes=min(GROUP_BYTES, int(packet) // 2))
        self._grouping = False
        with self.conn.cursor() as cur:
            set_based = settings.set_apply and json_table_works(cur)
        # The rows a batch judges, read and locked up front (current_rows.py); entity_hash entries read for a whole
        # batch up front (None outside a batch): entity_hash only changes in finish_batch.
        self.rows = CurrentRows(self.conn, model, self.statements)
        self.set_path = SetApply(model, self.ids, self.convert.value, self.s, consecutive=consecutive,
                                 rest_enabled=settings.rest_enabled, complex_obs=settings.complex_obs,
                                 peek=self.rows.peek,
                                 central_now=self._central_now, tolerance=settings.future_tolerance_seconds,
                                 max_bytes=min(GROUP_BYTES, int(packet) // 2)) if set_based else None
        self._synced: dict[tuple[str, str], bookkeeping.Synced] | None = None
        self._built_ins: set[str] | None = None  # central's OpenMRS users and their persons: never adopted
        self.held_rows = HeldRows(self.s)  # what central held when each adopting site was registered: never adopted
        self.links = Links(model.synced)  # who the rows hang off, for the archive
        self.reload_blocked()

    def close(self) -> None:
        self.conn.close()

    def claim(self, wait: float = LOCK_WAIT_SECONDS) -> None:
        """Become the one applier of this state schema (a server lock held by this session until it closes). With a
        wait, a holder that is carrying out an operator action (the console's worker) is waited for, not refused."""
        name = f"dbsync:{self.settings.state_schema}"
        told: set[int] = set()
        with self.conn.cursor() as cur:
            while True:
                cur.execute("SELECT GET_LOCK(%s, %s)", (name, wait))
                (got,) = cur.fetchone() or (0,)
                if got == 1:
                    refuse_beside_workers(cur, self.settings.state_schema)  # receiver workers run: the gate goes
                    return
                cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
                (holder,) = cur.fetchone() or (None,)
                # the console's worker (or a CLI action) holding the lock while it carries out an operator action
                # is not another receiver: wait for it to finish instead of stopping with exit 13
                cur.execute(sql("SELECT id FROM {}.receiver_request WHERE state = 'running' AND taken_by = %s "
                                "LIMIT 1", self.s), (holder,))
                serving = cur.fetchone()
                self.conn.commit()
                if wait > 0 and holder is not None and serving is not None:
                    if serving[0] not in told:
                        told.add(serving[0])
                        log.warning("central connection %s is carrying out operator action %s: waiting for it "
                                    "before applying", holder, serving[0])
                    continue
                raise AlreadyApplying(
                    f"another receiver (central connection {holder}) is applying to state schema "
                    f"{self.settings.state_schema!r}: run one receiver (or one `dbsync apply`) per central")

    # ---- the interface of the retry queue and conflict resolution ---------------------------------------------
    def reload_blocked(self) -> None:
        """Re-read which entities wait behind a retry entry or an unresolved conflict (after the queues changed)."""
        with self.conn.cursor() as cur:
            cur.execute(sql("SELECT entity_key FROM {s}.receiver_retry_queue WHERE entity_key IS NOT NULL "
                            "UNION SELECT entity_key FROM {s}.receiver_conflict_queue WHERE resolved = 0", s=self.s))
            self.blocked = {row[0] for row in cur.fetchall()}
        self.conn.commit()

    def refresh_sites(self) -> None:
        """Re-read the registered sites (a site added or disabled since)."""
        self.sites = state.sites(self.conn, self.settings.state_schema)

    def expand_stored(self, raw: bytes, message_id: str, site: str | None, broker_user: str | None = None,
                      header_site: str | None = None) -> list[Parsed]:
        """The messages of a body kept in the retry queue: one, or each of an envelope kept whole."""
        return expand_raw(raw, message_id, site, self.model, self.settings.max_message_bytes,
                          broker_user=broker_user, header_site=header_site)

    def park(self, cur: Any, item: Parsed, reason: str, batch: Batch, kind: str = "retry") -> Outcome:
        """Put a message in the retry queue ("error": it never applies as it is) inside the caller's transaction."""
        return self._archived(batch, item, self._park(cur, item, reason, batch, kind), from_queue=True)

    def parse_stored(self, raw: bytes, message_id: str, site: str | None, broker_user: str | None = None,
                     header_site: str | None = None) -> Parsed:
        """A message body kept in the retry or conflict queue, with the transport identity it arrived with (the
        same identity checks apply on every retry)."""
        return parse_raw(raw, message_id, site, self.model, self.settings.max_message_bytes,
                         broker_user=broker_user, header_site=header_site)

    def apply_message(self, cur: Any, item: Parsed, batch: Batch, *, from_queue: bool = False, force: bool = False,
                      only: list[str] | None = None) -> Outcome:
        """Apply one message inside the caller's transaction, collecting its bookkeeping in `batch`.

        `from_queue`: the message is the one its entity waits for (it is not parked behind itself); `force`
        skips the conflict rule and the order guard; `only` limits an update to these columns (--merge)."""
        batch.digests.setdefault(item.message_id, item.digest())
        return self._archived(batch, item, self._one(cur, item, batch, from_queue=from_queue, force=force, only=only),
                              from_queue=from_queue)

    def archived(self, batch: Batch, entry: ArchiveEntry) -> None:
        """Keep `entry` for the archive, written with the batch (nothing when the archive is off)."""
        if self.settings.archive_days > 0:
            batch.archive.append(entry)

    def write_archive(self, cur: Any, batch: Batch) -> None:
        """The archive entries `batch` collected, in the caller's transaction (finish_batch does it too)."""
        archive.write(cur, self.s, batch.archive, now())
        batch.archive.clear()

    def archive_dropped(self, cur: Any, ids: list[int]) -> None:
        """Retry entries `ids`, about to be dropped by an operator (`self.actor`), as events of their messages."""
        if self.settings.archive_days > 0:
            archive.write(cur, self.s, archive.queue_events(cur, self.s, ids, "dropped", self.actor), now())

    def _archived(self, batch: Batch, item: Parsed, outcome: Outcome, *, from_queue: bool = False) -> Outcome:
        """`outcome` kept for the archive; from the retry or conflict queue its decider is the operator acting, or
        the retry pass."""
        if self.settings.archive_days > 0:  # off: not even worked out
            actor = self.actor or (archive.RETRY_ACTOR if from_queue else None)
            batch.archive.append(archive.entry(item, outcome, self.links, actor=actor, from_queue=from_queue))
        return outcome

    def rolled_back(self) -> None:
        """After a rollback (to a savepoint): cached ids may name rows that no longer exist."""
        self.ids.clear()
        self.held_rows.clear()

    def finish_batch(self, cur: Any, batch: Batch) -> None:
        """Write what `batch` collected (entity hashes, handled ids, inbox deletions, REST calls, site status) in
        the caller's transaction, which commits it with the changes."""
        site_ids = {identifier: self.sites[identifier].id for identifier in batch.sites}
        stamp = now()
        bookkeeping.write_batch(cur, self.s, batch, site_ids, stamp, self._hashes)
        archive.write(cur, self.s, batch.archive, stamp)
        batch.archive.clear()

    def rebaseline(self, cur: Any, table: SyncedTable, uuid: str, site: str, position: SourcePosition | None,
                   key: Any, owner: str | None = None) -> None:
        """Central's row (`key`; None: its absence, kept as a tombstone) becomes the entity's sync baseline, at
        `position`, so that a late redelivery older than the decision cannot undo it; `owner`: who owns it now."""
        batch = Batch()
        if key is not None:
            batch.touched[(table.name, key)] = (uuid, site)
        self._applied_at(cur, batch, table, uuid, position, None if key is not None else site)
        bookkeeping.write_entity_hashes(cur, self.s, batch, now(), self._hashes)
        if owner is not None:
            bookkeeping.set_owner(cur, self.s, table.name, uuid, owner)

    def owner(self, cur: Any, table: str, uuid: str) -> str | None:
        """The entity's owner in entity_hash (None: dbsync never wrote it)."""
        return self._synced_entry(cur, table, uuid).owner

    # ---- the stage -------------------------------------------------------------------------------------------
    def run(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Outcomes of the records' messages, a transaction per `batch_messages` messages (an envelope's
        messages always commit together, with the deletion of its inbox row)."""
        batch: list[Parsed] = []
        for record in records:
            if is_heartbeat(record):
                continue
            batch.extend(self.expand(record))
            if len(batch) >= self.settings.batch_messages:
                yield from (o.record() for o in self.apply_parsed(batch))
                batch = []
        if batch:
            yield from (o.record() for o in self.apply_parsed(batch))

    def expand(self, record: dict[str, Any]) -> list[Parsed]:
        """The messages of an inbox record or a bare message (an envelope holds several)."""
        return expand(record, self.model, self.settings.max_message_bytes)

    def apply_batch(self, records: list[dict[str, Any]]) -> list[Outcome]:
        """Apply the messages of `records`, a transaction per `batch_messages` messages they really hold (the row
        counts the inbox read them by come from the senders' headers), whole deliveries in each."""
        outcomes: list[Outcome] = []
        batch: list[Parsed] = []
        for record in records:
            items = self.expand(record)
            if batch and len(batch) + len(items) > self.settings.batch_messages:
                outcomes += self.apply_parsed(batch)
                batch = []
            batch += items
        if batch:
            outcomes += self.apply_parsed(batch)
        return outcomes

    def apply_parsed(self, parsed: list[Parsed]) -> list[Outcome]:
        """One transaction for `parsed`; retried whole when the server rolled it back in a deadlock with another
        central transaction: that says nothing about any one message (a lock wait timeout does: see
        current_rows.py)."""
        self.refresh_sites()
        blocked_before = set(self.blocked)
        attempt = 0
        while True:
            try:
                return self._apply_parsed(parsed, blocked_before)
            except Exception as exc:
                attempt += 1
                if not deadlock(exc) or attempt > LOCK_RETRIES:
                    raise
                self._rolled_back_batch(blocked_before)
                log.warning("batch of %d messages lost a lock conflict with another central transaction (%s); "
                            "retrying it whole (%d of %d)", len(parsed), failure_reason(exc), attempt, LOCK_RETRIES)
                pause(backoff(attempt))  # ends at once on SIGTERM (retrying.py)

    def _apply_parsed(self, parsed: list[Parsed], blocked_before: set[str]) -> list[Outcome]:
        try:
            return self._run(parsed, careful=False)
        except Exception as exc:  # noqa: BLE001 - any failure: replay with one savepoint per message
            if operator_fault(exc) or deadlock(exc):  # a missing grant fails every message alike: stop, park
                raise  # nothing; a deadlock retries the batch
            self._rolled_back_batch(blocked_before)
            log.info("batch failed (%s: %s); replaying it message by message", type(exc).__name__, exc)
            return self._run(parsed, careful=True)

    def _rolled_back_batch(self, blocked_before: set[str]) -> None:
        self.conn.rollback()
        self.ids.clear()
        self.held_rows.clear()
        self.blocked = set(blocked_before)

    def _run(self, parsed: list[Parsed], careful: bool) -> list[Outcome]:
        batch = Batch()
        self.ids.new_batch()
        with self.conn.cursor() as cur:
            done = self._handled_ids(cur, [p.message_id for p in parsed])
            self._prefetch(cur, parsed)
            self._prefetch_rows(cur, parsed, lock=not careful)
            self._grouping = not careful
            try:
                written = self._set_based(cur, parsed, batch, done) if not careful else {}
                self._messages(cur, parsed, batch, done, careful, written)
                self.inserts.flush(cur, batch)
            finally:
                self._grouping = False
                self.inserts.reset()
                self.rows.reset()
                self._synced = None
            self.finish_batch(cur, batch)
        self.conn.commit()
        log_outcomes(batch.outcomes)
        return batch.outcomes

    def _set_based(self, cur: Any, parsed: list[Parsed], batch: Batch,
                   done: dict[str, bytes | None]) -> dict[int, Outcome]:
        """The batch's plain new rows, written set-based (set_apply.py); their outcomes by index."""
        if self.set_path is None:
            return {}
        rows = self.set_path.choose(cur, parsed, done=done, sites=self.sites, blocked=self.blocked,
                                    synced=self._synced)
        log.debug("set path: %d of %d messages", len(rows), len(parsed))
        return self.set_path.write(cur, rows, batch) if rows else {}

    def _messages(self, cur: Any, parsed: list[Parsed], batch: Batch, done: dict[str, bytes | None],
                  careful: bool, written: dict[int, Outcome] | None = None) -> None:
        for index, item in enumerate(parsed):
            if item.inbox is not None:
                batch.inbox.append(item.inbox)
            if written and index in written:  # applied by the set path: archived like any other
                batch.outcomes.append(self._archived(batch, item, written[index]))
                continue
            digest = item.digest()
            if item.message_id in done:
                seen = done[item.message_id]
                if seen is None or seen == digest:
                    batch.outcomes.append(Outcome(item.message_id, "duplicate"))
                    batch.skip(item.site, "duplicate", item.message_id, item.table.name if item.table else None)
                    continue
                log.warning("message id %s was handled before with other content: judged as a new change",
                            item.message_id)
            done[item.message_id] = digest
            batch.digests[item.message_id] = digest
            if careful:
                cur.execute(sql("SAVEPOINT {}", quote(f"m{index}")))
            try:
                batch.outcomes.append(self._archived(batch, item, self._one(cur, item, batch)))
            except Exception as exc:
                if not careful or operator_fault(exc) or deadlock(exc):  # the transaction is gone: retry it
                    raise
                cur.execute(sql("ROLLBACK TO SAVEPOINT {}", quote(f"m{index}")))
                self.rolled_back()
                batch.outcomes.append(self._archived(batch, item, self._park(
                    cur, item, reasons.reason("apply_failed", error=failure_reason(exc)), batch)))

    # ---- one message ---------------------------------------------------------------------------------------
    def _one(self, cur: Any, item: Parsed, batch: Batch, *, from_queue: bool = False, force: bool = False,
             only: list[str] | None = None) -> Outcome:
        if item.error is not None:
            return self._park(cur, item, item.error, batch, kind="error", cause=state.central_cause(item.error))
        message = item.message
        assert message is not None and item.table is not None
        table = item.table
        site = self.sites.get(message["site"])
        if site is None or site.disabled:
            why = "is not registered" if site is None else "is disabled"
            return self._park(cur, item, reasons.reason("site_unknown", site=message["site"], why=why), batch,
                              queue_kind=PERMANENT, cause=state.site_cause(message["site"]))
        refused = trust.refused_sender(site, item.broker_user)
        if refused is not None:
            return self._park(cur, item, refused, batch, kind="error", cause=state.site_cause(site.identifier))
        ek = entity_key(self.model, table, message["uuid"])
        if ek in self.blocked and not from_queue:
            return self._park(cur, item, reasons.reason("waiting_behind", entity=ek), batch, kind="waiting")
        try:
            outcome = self._change(cur, item, table, batch, force=force, only=only)
        except MissingReference as exc:
            return self._park(cur, item, exc.args[0] if exc.args else str(exc), batch,  # a Reason keeps its code
                              cause=reference_cause(exc.uuid))
        except MessageError as exc:
            why = exc.args[0] if exc.args else str(exc)  # a Reason keeps its code
            return self._park(cur, item, why, batch, kind="error", cause=state.central_cause(why))
        except complex_files.FileWaiting as exc:  # its file is not in central's folder yet
            return self._park(cur, item, exc.why, batch, cause=exc.cause)
        if outcome.outcome == "applied":
            count, _ = batch.sites.get(site.identifier, (0, ""))
            batch.sites[site.identifier] = (count + 1, item.message_id)
            if self.settings.rest_enabled and table.name in REST_RESOURCES:
                resource, sub = REST_RESOURCES[table.name]
                batch.rest.append((resource, sub, message["uuid"]))
        batch.handled.append(item.message_id)
        return outcome

    def _change(self, cur: Any, item: Parsed, table: SyncedTable, batch: Batch, *, force: bool = False,
                only: list[str] | None = None) -> Outcome:
        """Insert, update or delete one entity; `force` skips the conflict rule, `only` limits the columns."""
        message = item.message
        assert message is not None
        uuid = message["uuid"]
        ident = table.identity.table
        held_parent: DeferredKey | None = None
        if self.inserts.held and (ident, uuid) in self.inserts.held:
            if table.is_subclass and message["op"] != DELETE and not self.inserts.holds_row(table.name, uuid):
                held_parent = self.inserts.rows.get((ident, uuid))  # a new subclass row of a new parent row
            if held_parent is None:
                self.inserts.flush(cur, batch)  # this message reads or changes a row that is still held back
        if not force:
            self._check_owner(cur, table, uuid, message["site"], batch)
        position = SourcePosition.of(message)
        if position is not None and not force:
            last = batch.positions.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).position
            if last is not None and position.older_than(last):
                batch.skip(message["site"], "stale", item.message_id, table.name)
                return Outcome(item.message_id, "stale", table.name, uuid,
                               reasons.reason("older_position", position=position, last=last))
        key = held_parent or self.ids.lookup(cur, ident, uuid)
        current = self.rows.current(table, key) if key is not None and held_parent is None else None
        if current is not None and not force:
            self._check_case(cur, item, table, current, batch)
        if message["op"] == DELETE:
            if current is None:
                self._applied_at(cur, batch, table, uuid, position, message["site"])
                return Outcome(item.message_id, "applied", table.name, uuid, reasons.reason("already_absent"))
            verdict = Verdict() if force else self._judge(cur, table, uuid, current, message, None, batch)
            self._sent_as_central(cur, table, key, message["site"], verdict)
            if verdict.park:
                return self._conflict(cur, item, verdict, current, batch)
            if verdict.skip:
                return self._skipped(item, verdict, batch)
            cur.execute(self.statements.get(("delete", table.name), lambda: sql(
                "DELETE FROM {} WHERE {} = %s", quote(table.name), quote(table.key))), (key,))
            if self.settings.complex_obs and table.name == complex_obs.TABLE:  # OpenMRS's purgeObs removes the file
                name = complex_obs.file_name(current.get(complex_obs.COLUMN))
                if name is not None and complex_obs.refusal(name) is None:
                    complex_files.purge(cur, self.s, message["site"], name)
            if not table.is_subclass:
                self.ids.forget(ident, uuid)
            batch.touched.pop((table.name, key), None)
            self._applied_at(cur, batch, table, uuid, position, message["site"])
            return Outcome(item.message_id, "applied", table.name, uuid)
        data = message["data"] or {}
        if self.settings.complex_obs and table.name == complex_obs.TABLE:
            refused = complex_files.check_obs(cur, self.s, message["site"], uuid, data, current)
            if refused is not None:
                raise MessageError(refused)
        if only is not None:
            unknown = sorted(set(only) - set(data))
            if unknown:
                raise MessageError(reasons.reason("merge_unknown", columns=", ".join(unknown), table=table.name))
            data = {c: data[c] for c in only}
        values = self._values(cur, item, table, data, batch, defer=current is None)
        if key is None:  # the entity (or its parent) may have become a placeholder while converting
            key = self.ids.lookup(cur, ident, uuid)
            if key is None and table.is_subclass:
                key = self._resolve_parent(cur, ident, uuid, batch)
            current = self.rows.current(table, key) if key is not None and not isinstance(key, DeferredKey) \
                else None
            if current is not None and any(isinstance(v, DeferredKey) for v in values.values()):
                values = self._values(cur, item, table, data, batch, defer=False)  # an update needs real keys
        if current is not None:
            if not force and message["op"] == READ and (table.name, uuid) not in batch.ours:
                adopted = self._adopt(cur, item, table, key, current, values, position, batch)
                if adopted is not None:
                    return adopted
            verdict = Verdict() if force else self._judge(cur, table, uuid, current, message, values, batch)
            self._sent_as_central(cur, table, key, message["site"], verdict)
            if verdict.park:
                return self._conflict(cur, item, verdict, current, batch)
            if verdict.skip:
                return self._skipped(item, verdict, batch)
            if values:
                cur.execute(self.statements.get(("update", table.name, tuple(values)), lambda: sql(
                    "UPDATE {} SET {} WHERE {} = %s", quote(table.name), join(sql("{} = %s", quote(c)) for c in values),
                    quote(table.key))), [*values.values(), key])
        else:
            row = dict(values)
            if table.is_subclass:
                row[table.key] = key
            else:
                row["uuid"] = uuid
            if self._grouping:
                self.inserts.hold(cur, batch, table, row, uuid, message["site"], key, 2 * len(item.raw) + 16 * len(row))
                batch.owners.setdefault((table.name, uuid), message["site"])
                batch.ours.add((table.name, uuid))
                self._applied_at(cur, batch, table, uuid, position)
                return Outcome(item.message_id, "applied", table.name, uuid)
            cur.execute(self.statements.get(("insert", table.name, tuple(row)), lambda: sql(
                "INSERT INTO {} ({}) VALUES ({})", quote(table.name), columns(row), placeholders(len(row)))),
                list(row.values()))
            if not table.is_subclass:
                key = cur.lastrowid
                self.ids.remember(ident, uuid, key)
        batch.touched[(table.name, key)] = (uuid, message["site"])
        batch.owners.setdefault((table.name, uuid), self._synced_entry(cur, table.name, uuid).owner or message["site"])
        batch.ours.add((table.name, uuid))
        self._applied_at(cur, batch, table, uuid, position)
        return Outcome(item.message_id, "applied", table.name, uuid)

    def _values(self, cur: Any, item: Parsed, table: SyncedTable, data: dict[str, Any], batch: Batch, *,
                defer: bool) -> dict[str, Any]:
        """The message's central values; a new row held back (`defer`) may reference held rows by DeferredKey,
        any other statement needs them written first."""
        message = item.message or {}
        if not self.inserts.held:
            return self.convert.values(cur, table, data, message["site"])
        if not defer or not self._grouping:
            if self.inserts.holds_any(item.refs if item.refs is not None else self.convert.references(table, data)):
                self.inserts.flush(cur, batch)
            return self.convert.values(cur, table, data, message["site"])
        self.convert.held = self.inserts.deferred
        try:
            return self.convert.values(cur, table, data, message["site"])
        except HeldRow:
            self.convert.held = None
            self.inserts.flush(cur, batch)
            return self.convert.values(cur, table, data, message["site"])
        finally:
            self.convert.held = None

    def _resolve_parent(self, cur: Any, ident: str, uuid: str, batch: Batch) -> Any:
        """Key of a new subclass row: its parent's (a placeholder parent when none exists)."""
        if self._grouping and self.inserts.held:
            self.convert.held = self.inserts.deferred
            try:
                return self.convert.resolve(cur, ident, uuid, allow_placeholder=True)
            except HeldRow:
                self.inserts.flush(cur, batch)
            finally:
                self.convert.held = None
        return self.convert.resolve(cur, ident, uuid, allow_placeholder=True)

    def _adopt(self, cur: Any, item: Parsed, table: SyncedTable, key: Any, current: dict[str, Any],
               values: dict[str, Any], position: SourcePosition | None, batch: Batch) -> Outcome | None:
        """A snapshot row of a site registered with --adopt (receiver/adopt.py); None: judged as any other."""
        message = item.message or {}
        site, uuid = self.sites.get(message["site"]), message["uuid"]
        if site is None or not site.adopt:
            return None
        if self._built_ins is None:
            self._built_ins = adopt.built_in_uuids(cur)
        synced = self._synced_entry(cur, table.name, uuid)
        if not adopt.candidate(table, uuid, current, written_before=synced.owner is not None,
                               built_in=self._built_ins) or self.held_rows.holds(cur, site, table, key):
            return None  # central's own (held before the site's data was loaded, or sent by another site as such)
        differing = adopt.differences(table, current, values, site.identifier)
        if differing:
            shown = ", ".join(differing[:8]) + (" …" if len(differing) > 8 else "")
            return self._conflict(cur, item, Verdict(park=True, reason=reasons.reason(
                "adopting", site=site.identifier, columns=shown)),
                                  current, batch)
        suffixed = adopt.central_form(table, current, values)
        if suffixed:  # central's form of the site's username / provider identifier: its next edit is an update
            cur.execute(self.statements.get(("update", table.name, tuple(suffixed)), lambda: sql(
                "UPDATE {} SET {} WHERE {} = %s", quote(table.name),
                join(sql("{} = %s", quote(c)) for c in suffixed), quote(table.key))), [*suffixed.values(), key])
        batch.touched[(table.name, key)] = (uuid, site.identifier)
        batch.owners[(table.name, uuid)] = site.identifier
        batch.ours.add((table.name, uuid))
        self._applied_at(cur, batch, table, uuid, position)
        batch.skip(site.identifier, adopt.ADOPTED, item.message_id, table.name)
        return Outcome(item.message_id, adopt.ADOPTED, table.name, uuid, reasons.reason("adopted"))

    def _sent_as_central(self, cur: Any, table: SyncedTable, key: Any, sender: str, verdict: Verdict) -> None:
        """A site sent a row judged central's own: no adopting site may take it from now on (adopt_held.py)."""
        if getattr(verdict.reason, "code", None) != "central_own":
            return
        for site in self.sites.values():
            if site.adopt and site.identifier != sender:
                self.held_rows.add(cur, site, table, key)

    def _check_owner(self, cur: Any, table: SyncedTable, uuid: str, site: str, batch: Batch) -> None:
        """A site changes only its own rows: one another site created is refused (error queue), naming both."""
        owner = batch.owners.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).owner
        if owner is None or owner in (site, CENTRAL_OWNER) or self.settings.cross_site_changes == "allow":
            return
        raise MessageError(reasons.reason("other_site_row", table=table.name, uuid=uuid, owner=owner, site=site))

    def _check_case(self, cur: Any, item: Parsed, table: SyncedTable, current: dict[str, Any], batch: Batch) -> None:
        """A uuid spelled in another letter case than central's row (e.g. central's `admin` in upper case) names the
        same row: it never gets a twin, and only the row's own site may send it so; central's own row is refused
        (error queue, counted per site as `uuid_case`). Another site's row is refused by _check_owner already."""
        message = item.message or {}
        stored, sent = current.get("uuid"), item.sent_uuid or message["uuid"]
        if not isinstance(stored, str) or stored == sent or is_placeholder(current):
            return
        owner = batch.owners.get((table.name, message["uuid"])) or self._synced_entry(
            cur, table.name, message["uuid"]).owner
        if owner not in (None, CENTRAL_OWNER):
            return
        batch.skip(message["site"], "uuid_case", item.message_id, table.name)
        raise MessageError(reasons.reason("uuid_case", table=table.name, uuid=message["uuid"], sent=sent[:40],
                                          stored=stored))

    def _applied_at(self, cur: Any, batch: Batch, table: SyncedTable, uuid: str, position: SourcePosition | None,
                    removed_by: str | None = None) -> None:
        """Remember where the change just applied came from; a delete (`removed_by` its site) leaves a tombstone."""
        if position is not None:
            last = batch.positions.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).position
            batch.positions[(table.name, uuid)] = position.since(last)
        if removed_by is not None:
            batch.removed[(table.name, uuid)] = removed_by
        else:
            batch.removed.pop((table.name, uuid), None)

    def _synced_entry(self, cur: Any, table: str, uuid: str) -> bookkeeping.Synced:
        """What entity_hash holds for this entity (UNKNOWN if dbsync never wrote it)."""
        if self._synced is not None and (table, uuid) in self._synced:
            return self._synced[(table, uuid)]
        return bookkeeping.fetch_synced(cur, self.s, table, [uuid])[(table, uuid)]

    def _prefetch_rows(self, cur: Any, parsed: list[Parsed], *, lock: bool = True) -> None:
        """Current rows of the batch's entities that exist at central, locked until the batch commits (a central
        edit can no longer slip in between the judge and the write), and the entity_hash entries of all of them
        (tombstones included): one query per table each. Without `lock` (the replay message by message) each row
        is locked when its message reads it, inside the message's savepoint, so a row another transaction holds
        parks that message alone."""
        keys: dict[str, dict[Any, str]] = {}
        uuids_of: dict[str, set[str]] = {}
        for item in parsed:
            if item.message is None or item.table is None or not isinstance(item.message.get("uuid"), str):
                continue
            uuids_of.setdefault(item.table.name, set()).add(item.message["uuid"])
            key = self.ids.get(item.table.identity.table, item.message["uuid"])
            if key is not None:
                keys.setdefault(item.table.name, {})[key] = item.message["uuid"]
        if lock:
            self.rows.lock(keys)
        self._synced = {}
        for name, uuid_set in uuids_of.items():
            self._synced.update(bookkeeping.fetch_synced(cur, self.s, name, sorted(uuid_set)))

    def _judge(self, cur: Any, table: SyncedTable, uuid: str, current: dict[str, Any], message: dict[str, Any],
               values: dict[str, Any] | None, batch: Batch) -> Verdict:
        if (table.name, uuid) in batch.ours:
            return Verdict()
        synced = self._synced_entry(cur, table.name, uuid)
        incoming_time = None
        ts_ms = (message.get("source") or {}).get("ts_ms")
        if isinstance(ts_ms, int | float):
            incoming_time = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(self.convert.tz).replace(
                tzinfo=None)
        verdict = judge(table, current, synced.hash, message, values, incoming_time, self.settings.conflict_policy,
                        last_site=synced.position.site if synced.position is not None else None, owner=synced.owner,
                        central_rows=self.settings.central_rows, central_now=self._central_now(cur),
                        tolerance=self.settings.future_tolerance_seconds)
        if verdict.future is not None:  # a site clock ahead: counted per site (status), logged once per site
            site = str(message.get("site"))
            batch.skip(site, FUTURE_DATED, str(message.get("id") or ""), table.name)
            if site not in self._future_logged:
                self._future_logged |= {site}
                log.warning("site %s sends changes dated in central's future (%s: %s ahead of central's clock; site "
                            "clock ahead?): they never beat a central edit, and are counted in `dbsync status`",
                            site, message.get("id"), amount(verdict.future))
        return verdict

    def _central_now(self, cur: Any) -> dt.datetime:
        """Central's clock now, naive in central's time zone: read once a minute, carried on by this host's
        monotonic clock in between."""
        mono = time.monotonic()
        if self._clock is None or mono - self._clock[1] > 60:
            cur.execute("SELECT UTC_TIMESTAMP(6)")
            (utc_now,) = cur.fetchone()
            self._clock = (utc_now, mono)
        utc_now, at = self._clock
        return (utc_now + dt.timedelta(seconds=mono - at)).replace(tzinfo=dt.UTC).astimezone(
            self.convert.tz).replace(tzinfo=None)

    @staticmethod
    def _skipped(item: Parsed, verdict: Verdict, batch: Batch) -> Outcome:
        """Not applied by the rule (stale, central's own row): counted per site, reason and table, never silent."""
        message = item.message or {}
        assert verdict.skip is not None and item.table is not None
        batch.skip(message.get("site"), verdict.skip, item.message_id, item.table.name)
        return Outcome(item.message_id, verdict.skip, item.table.name, message.get("uuid"), verdict.reason)

    # ---- parking -------------------------------------------------------------------------------------------
    def _park(self, cur: Any, item: Parsed, reason: str, batch: Batch, kind: str = "retry", *,
              queue_kind: str | None = None, cause: str | None = None) -> Outcome:
        """`kind` is the outcome; `queue_kind` the entry's (retry_rules: its backoff), derived from it by default;
        `cause` names what can fix it (state.fix_changed makes it due at once). Due at the next retry pass."""
        message = item.message or {}
        # a message that can never apply (kind "error") holds nothing up; a retry keeps its entity's later messages
        ek = entity_key(self.model, item.table, message.get("uuid")) if item.table and kind != "error" else None
        uuid = message.get("uuid")
        cur.execute(
            sql("INSERT INTO {}.receiver_retry_queue (message_id, site, table_name, entity_key, reason, "
                "date_created, broker_user, header_site, kind, cause, entity_uuid, reason_code, reason_args) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", self.s),
            (item.message_id[:255], str(message.get("site") or item.site or "")[:100] or None,
             item.table.name if item.table else None, ek, reason[:2000], now(),
             None if item.broker_user is None else item.broker_user[:100],
             None if item.header_site is None else item.header_site[:100],
             queue_kind or queue_kind_of(kind), None if cause is None else cause[:160],
             uuid[:38] if isinstance(uuid, str) else None, *reasons.columns(reason)),
        )
        cur.execute(sql("INSERT INTO {}.receiver_retry_body (id, body) VALUES (%s, %s)", self.s),
                    (cur.lastrowid, item.raw))
        if ek is not None:
            self.blocked.add(ek)
        batch.handled.append(item.message_id)
        return Outcome(item.message_id, kind, item.table.name if item.table else None, message.get("uuid"), reason,
                       parked=(queue_kind or queue_kind_of(kind), cause))

    def _conflict(self, cur: Any, item: Parsed, verdict: Verdict, current: dict[str, Any], batch: Batch) -> Outcome:
        message = item.message
        assert message is not None and item.table is not None
        ek = entity_key(self.model, item.table, message["uuid"])
        assert ek is not None  # a parsed message has a table and a uuid
        cur.execute(
            sql("INSERT INTO {}.receiver_conflict_queue (message_id, site, table_name, entity_uuid, entity_key, "
                "body, central_row, reason, date_created, reason_code, reason_args) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", self.s),
            (item.message_id, message["site"], item.table.name, message["uuid"], ek, item.raw,
             dumps({c: v for c, v in current.items() if c != HASH}), verdict.reason, now(),
             *reasons.columns(verdict.reason)),
        )
        self.blocked.add(ek)
        batch.handled.append(item.message_id)
        return Outcome(item.message_id, "conflict", item.table.name, message["uuid"], verdict.reason)

    # ---- batch bookkeeping ---------------------------------------------------------------------------------
    def _handled_ids(self, cur: Any, ids: list[str]) -> dict[str, bytes | None]:
        """Handled message ids among `ids` → the digest of what they said (None: handled before version 5)."""
        found: dict[str, bytes | None] = {}
        for part in chunks(sorted(set(ids))):
            cur.execute(sql("SELECT message_id, digest FROM {}.applied_message WHERE message_id IN ({})", self.s,
                            placeholders(len(part))), part)
            found.update((row[0], bytes(row[1]) if row[1] is not None else None) for row in cur.fetchall())
        return found

    def _prefetch(self, cur: Any, parsed: list[Parsed]) -> None:
        wanted: dict[str, set[str]] = {}
        for item in parsed:
            if item.message is None or item.table is None:
                continue
            wanted.setdefault(item.table.identity.table, set()).add(item.message["uuid"])
            item.refs = list(self.convert.references(item.table, item.message.get("data") or {}))
            for ident, uuid in item.refs:
                wanted.setdefault(ident, set()).add(uuid)
        for ident, uuids in wanted.items():
            self.ids.prefetch(cur, ident, uuids)

    def _hashes(self, table: str, keys: list[Any]) -> Iterator[tuple[Any, str]]:
        """(key, hash) of central rows, as the server computes them."""
        return self.rows.by_key(table, keys, whole=False)


def apply(records: Iterable[dict[str, Any]], settings: ApplySettings, model: SchemaModel) -> Iterator[dict[str, Any]]:
    applier = Applier(settings, model)
    try:
        applier.claim()
        yield from applier.run(records)
    finally:
        applier.close()

