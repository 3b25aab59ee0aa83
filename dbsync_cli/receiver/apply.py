"""Apply: sync messages → the central OpenMRS database, idempotently.

One transaction per batch holds the changes, their entity hashes, the handled message ids, the site status, the
REST-call queue entries and the inbox deletions: a crash anywhere re-applies a whole batch or nothing. A message
that fails goes to the retry queue inside the same transaction (the batch is replayed one savepoint per message
when that happens), so one bad message never stops the others. Messages for an entity with a pending retry entry
or an unresolved conflict wait behind it, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from dbsync_cli.faults import operator_fault
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.patients import Links
from dbsync_cli.receiver import archive, bookkeeping, reasons, state
from dbsync_cli.receiver.adopt_held import HeldRows
from dbsync_cli.receiver.apply_base import ApplySettings
from dbsync_cli.receiver.apply_row import RowApply
from dbsync_cli.receiver.batch import ArchiveEntry, Batch, Outcome, failure_reason, log_outcomes, now
from dbsync_cli.receiver.current_rows import (
    LOCK_RETRIES,
    CurrentRows,
    backoff,
    deadlock,
)
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.inserts import GROUP_BYTES, GroupedInserts, consecutive_keys
from dbsync_cli.receiver.message import Parsed, expand, expand_raw, parse_raw
from dbsync_cli.receiver.resolve import (
    Converter,
    UuidToId,
)
from dbsync_cli.receiver.set_apply import SetApply, insert_returning_works, json_table_works
from dbsync_cli.receiver.worker_locks import AlreadyApplying, refuse_beside_workers
from dbsync_cli.retrying import pause
from dbsync_cli.sql import StatementCache, chunks, placeholders, quote, sql
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.wire import is_heartbeat

log = logging.getLogger("dbsync.apply")


#: how long a starting applier waits for the lock (a killed predecessor's session may take a moment to end)
LOCK_WAIT_SECONDS = 30


class Applier(RowApply):

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
            returning = settings.insert_returning and insert_returning_works(cur)
        # The rows a batch judges, read and locked up front (current_rows.py); entity_hash entries read for a whole
        # batch up front (None outside a batch): entity_hash only changes in finish_batch.
        self.rows = CurrentRows(self.conn, model, self.statements)
        self.set_path = SetApply(model, self.ids, self.convert.value, self.s, consecutive=consecutive,
                                 rest_enabled=settings.rest_enabled, complex_obs=settings.complex_obs,
                                 peek=self.rows.peek,
                                 central_now=self._central_now, tolerance=settings.future_tolerance_seconds,
                                 max_bytes=min(GROUP_BYTES, int(packet) // 2), returning=returning) if set_based else None
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

    def apply_batch(self, records: list[dict[str, Any]], expanded: list[list[Parsed]] | None = None) -> list[Outcome]:
        """Apply the messages of `records`, a transaction per `batch_messages` messages they really hold (the row
        counts the inbox read them by come from the senders' headers), whole deliveries in each; `expanded`: each
        record's messages, parsed already (inbox_reader.py)."""
        outcomes: list[Outcome] = []
        batch: list[Parsed] = []
        for index, record in enumerate(records):
            items = expanded[index] if expanded is not None else self.expand(record)
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

