"""The retry queue: re-apply parked messages in arrival order, entity by entity, without standing in the way.

An entity whose head entry still fails (or is not due) keeps the rest of its entries waiting (order per entity is
preserved); an entity with an unresolved conflict is skipped until it is resolved. A pass walks the queue by id in
short rounds (RetryLane.round: a bounded time each, one transaction), so the receiver applies live messages between
them. Only due entries are tried (retry_rules: backoff by kind); an entry not due is passed by without a write, and
a body is never rewritten (it lives in receiver_retry_body). An entry whose row a newer message has applied since
closes itself, counted as "superseded".

Entries that share a cause (ref:<uuid>, site:<id>, central) are scheduled per cause: a pass tries one of them (the
representative); when it fails for that cause, the cause's one row in receiver_retry_cause moves to its next
attempt and the cause's other entries are neither tried nor written (counted as waiting for it). When the
representative applies, or what fixes the cause changes (state.fix_changed, a referenced row applied or found at
central), the row goes and the cause's entries are due. Entries without a cause keep their own schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Collection, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson
import pymysql

from dbsync_cli.faults import operator_fault
from dbsync_cli.i18n import _
from dbsync_cli.receiver import reasons, state
from dbsync_cli.receiver import retry_rules as rules
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, Outcome, failure_reason, now
from dbsync_cli.receiver.current_rows import deadlock
from dbsync_cli.receiver.message import Parsed
from dbsync_cli.receiver.retry_queue import RetryEntry, delete_entries, get_entry, list_entries
from dbsync_cli.receiver.superseded import SUPERSEDED, superseded_entries
from dbsync_cli.sql import quote, sql

__all__ = ["FAILED", "SUPERSEDED", "RetryEntry", "RetryLane", "drive", "drop_entry", "get_entry", "list_entries",
           "pass_steps", "retry_pending"]

log = logging.getLogger("dbsync.retry")
T = TypeVar("T")

FAILED = ("retry", "error", "waiting")
PAGE = 200
ROUND_SECONDS = 0.25  # the longest a round keeps live messages waiting (one entry's attempt may overrun it)
DEFAULT_INTERVAL = 60.0
REF_CHECKS = 100  # causes waiting for a row looked up at central per round (one indexed query each)

_COLUMNS = sql("id, message_id, site, broker_user, header_site, entity_key, kind, attempts, next_attempt, cause, "
               "reason")


@dataclass
class _Pass:
    """One walk over the queue, possibly spread over many rounds."""
    cutoff: dt.datetime  # entries due by then are tried
    everything: bool  # try entries not due too (an operator's `apply --retry`)
    in_conflict: set[str]
    after: int = 0
    causes: dict[str, int] = field(default_factory=dict)  # cause → attempts of its schedule (receiver_retry_cause)
    backed_off: set[str] = field(default_factory=set)  # causes not due in this pass
    failed: set[str] = field(default_factory=set)  # causes whose representative failed in this pass
    waiting: Counter[str] = field(default_factory=Counter)  # entries not tried: their cause failed (per cause)
    entities: set[str] | None = None  # only these entities' entries (what waited behind entries just dropped)
    stuck: dict[str, int] = field(default_factory=dict)  # entity key → the entry it waits behind
    outcomes: list[Outcome] = field(default_factory=list)
    applied_by_site: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)


class RetryLane:
    """The retry queue's own lane in the apply loop: a pass every `interval` seconds (at once after a fix),
    carried out in rounds of at most `round_seconds` between live batches."""

    def __init__(self, applier: Applier, interval: float = DEFAULT_INTERVAL, *, round_seconds: float = ROUND_SECONDS,
                 page: int = PAGE):
        self.applier, self.interval, self.round_seconds, self.page = applier, interval, round_seconds, page
        self.current: _Pass | None = None
        self.last_start = -float("inf")
        self.again = False  # something was fixed during a pass: start another right after it
        self.waiting_refs: set[str] = set()  # ref:<uuid> causes backed off (their row not at central yet)
        self.ref_tables: dict[str, str] = {}  # such a cause → the table its row belongs to
        self.refs_checked: set[str] = set()  # looked up at central since the lookups last went round
        self.superseded_after = 0  # where the next pass goes on looking for superseded entries
        self.sites: Collection[str | None] | None = None  # a receiver worker's: only their entries are tried

    # ---- what the apply loop calls ----------------------------------------------------------------------
    def busy(self) -> bool:
        return self.current is not None

    def round(self, everything: bool = False) -> list[Outcome]:
        """One bounded round: start a pass when due, go on with it; returns the outcomes of a pass that ended."""
        if self.current is None:
            if not (self.again or time.monotonic() - self.last_start >= self.interval):
                return []
            self._start(everything)
        current = self.current
        assert current is not None
        self._refresh(current)
        deadline = time.monotonic() + self.round_seconds
        while time.monotonic() < deadline:
            if not self._page(current, deadline):
                self._finish(current)
                self.current = None
                return current.outcomes
        return []

    def note_applied(self, uuids: Iterable[str | None]) -> int:
        """Rows just applied: entries waiting for one of them become due now (their cause's one row goes).
        Returns how many entries."""
        if not self.waiting_refs:
            return 0
        causes = sorted({c for c in (rules.reference_cause(u) for u in uuids) if c in self.waiting_refs})
        if not causes:
            return 0
        with self.applier.conn.cursor() as cur:
            made_due = self._causes_due(cur, causes)
        self.applier.conn.commit()
        return made_due

    def _causes_due(self, cur: Any, causes: list[str]) -> int:
        """What fixes `causes` happened: their schedules go (the causes are due); how many entries they hold."""
        marks = sql(", ".join(["%s"] * len(causes)))
        cur.execute(sql("DELETE FROM {}.receiver_retry_cause WHERE cause IN ({})", self.applier.s, marks), causes)
        cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_queue WHERE cause IN ({})", self.applier.s, marks),
                    causes)
        (made_due,) = cur.fetchone() or (0,)
        self.waiting_refs -= set(causes)
        if self.current is not None:
            self.current.backed_off -= set(causes)
        self.again = True  # entries the pass walked by are tried by the next one, right after it
        return int(made_due)

    def _refresh(self, current: _Pass) -> None:
        """Every round: the unresolved conflicts (a live batch between two rounds may have made one), the causes
        waiting for a row, and whether some of those rows are at central now (created there, applied by a
        resolution or an operator): one indexed look-up per cause, at most REF_CHECKS a round."""
        applier, s = self.applier, self.applier.s
        with applier.conn.cursor() as cur:
            cur.execute(sql("SELECT entity_key FROM {}.receiver_conflict_queue WHERE resolved = 0", s))
            current.in_conflict = {r[0] for r in cur.fetchall()}
            cur.execute(sql("SELECT cause, ref_table FROM {}.receiver_retry_cause WHERE cause LIKE 'ref:%%' AND "
                            "next_attempt > %s", s), (current.cutoff,))
            self.ref_tables = {str(c): str(t) for c, t in cur.fetchall() if t}
            self.waiting_refs = set(self.ref_tables) | {c for c in current.failed if c.startswith("ref:")}
            unchecked = sorted(set(self.ref_tables) - self.refs_checked)
            if not unchecked:
                self.refs_checked.clear()
                unchecked = sorted(self.ref_tables)
            arrived = [cause for cause in unchecked[:REF_CHECKS] if self._row_exists(cur, cause)]
            self.refs_checked.update(unchecked[:REF_CHECKS])
            if arrived:
                made_due = self._causes_due(cur, arrived)
                log.info("retry queue: %d referenced row(s) found at central; %d entries due", len(arrived), made_due)
        applier.conn.commit()

    def _row_exists(self, cur: Any, cause: str) -> bool:
        table = self.applier.model.tables.get(self.ref_tables.get(cause, ""))
        if table is None or "uuid" not in table.columns:
            return False
        cur.execute(sql("SELECT 1 FROM {} WHERE uuid = %s LIMIT 1", quote(table.name)), (cause[4:],))
        return cur.fetchone() is not None

    # ---- a pass --------------------------------------------------------------------------------------------
    def _start(self, everything: bool, entities: set[str] | None = None) -> None:
        applier, s = self.applier, self.applier.s
        applier.refresh_sites()
        closed: list[Outcome] = []
        if entities is None:
            closed, self.superseded_after = superseded_entries(applier, self.superseded_after, sites=self.sites)
        with applier.conn.cursor() as cur:
            cur.execute("SELECT UTC_TIMESTAMP(3)")
            (cutoff,) = cur.fetchone() or (now(),)
            cur.execute(sql("SELECT cause, attempts, next_attempt FROM {}.receiver_retry_cause", s))
            schedules = cur.fetchall()
        applier.conn.commit()
        backed_off = set() if everything else {str(c) for c, _a, at in schedules if not rules.due(at, cutoff)}
        self.current = _Pass(cutoff, everything, set(), causes={str(c): int(a) for c, a, _at in schedules},
                             backed_off=backed_off, entities=entities, outcomes=closed)
        self.last_start, self.again = time.monotonic(), False

    def _page(self, current: _Pass, deadline: float) -> bool:
        """Entries after the cursor until `deadline`; False when the queue is walked."""
        applier, s = self.applier, self.applier.s
        with applier.conn.cursor() as cur:
            # not due and nothing waits behind it (no entity): not even read
            # (an entry with a cause is read: its cause decides; one behind an entity: its entity may be stuck)
            due = sql("") if current.everything else sql(
                " AND (next_attempt IS NULL OR next_attempt <= %s OR entity_key IS NOT NULL OR cause IS NOT NULL)")
            if current.entities is not None:
                due = sql("{} AND entity_key IS NOT NULL", due)
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue WHERE id > %s{} ORDER BY id LIMIT %s",
                            _COLUMNS, s, due),
                        (current.after, self.page) if current.everything else (current.after, current.cutoff,
                                                                               self.page))
            rows = cur.fetchall()
            for row in rows:
                outcome = self._entry(cur, current, row)
                current.after = row[0]
                if outcome is not None:
                    current.outcomes.append(outcome)
                    if outcome.outcome not in FAILED:
                        current.applied_by_site[row[2] or "?"] += 1
                if time.monotonic() >= deadline:
                    break
        applier.conn.commit()
        return bool(rows)

    def _finish(self, current: _Pass) -> None:
        self.applier.reload_blocked()
        applied = sum(1 for o in current.outcomes if o.outcome not in FAILED)
        if current.outcomes or current.waiting:
            with self.applier.conn.cursor() as cur:
                cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_queue", self.applier.s))
                (left,) = cur.fetchone() or (0,)
            self.applier.conn.commit()
            log.info("retry queue: %d tried, %d re-applied (%s), %d waiting for %d cause(s) that failed (%s), %d "
                     "still in the queue (%.1f s)", len(current.outcomes), applied,
                     _per_site(current.applied_by_site), sum(current.waiting.values()), len(current.waiting),
                     _per_site(Counter(dict(current.waiting.most_common(3)))), left,
                     time.monotonic() - current.started)
        self.note_applied(o.uuid for o in current.outcomes if o.outcome == "applied")

    # ---- an entry --------------------------------------------------------------------------------------------
    def _entry(self, cur: Any, current: _Pass, row: tuple[Any, ...]) -> Outcome | None:
        entry_id, message_id, site, broker_user, header_site, ek, kind, attempts, next_at, cause, reason = row
        if self.sites is not None and site not in self.sites:  # another receiver worker's site
            return None
        if current.entities is not None and ek not in current.entities:
            return None
        if ek is not None and ek in current.in_conflict:
            return None
        if ek is not None and ek in current.stuck:
            if attempts == 0:  # tried within one interval: it waits for the entry ahead of it (said once)
                waiting = reasons.reason("waiting_behind_entry", entry=current.stuck[ek], entity=ek)
                cur.execute(sql("UPDATE {}.receiver_retry_queue SET attempts = 1, kind = %s, reason = %s, "
                                "reason_code = %s, reason_args = %s, date_last_attempt = %s WHERE id = %s",
                                self.applier.s), (rules.WAITING, waiting[:2000], *reasons.columns(waiting), now(),
                                                  entry_id))
            return None
        if rules.waits_for_cause(cause, current.failed, current.backed_off):  # its representative failed
            current.waiting[str(cause)] += 1
            if ek is not None:
                current.stuck[ek] = entry_id
            return None
        if cause is None and not current.everything and not rules.due(next_at, current.cutoff):
            if ek is not None:
                current.stuck[ek] = entry_id
            return None
        cur.execute(sql("SELECT body FROM {}.receiver_retry_body WHERE id = %s", self.applier.s), (entry_id,))
        found = cur.fetchone()
        if found is None:  # a delivery cut short at the broker (consume parked it): nothing to apply
            return None
        items = self.applier.expand_stored(bytes(found[0]), message_id, site, broker_user, header_site)
        if len(items) > 1:
            return _unpack(self.applier, cur, entry_id, message_id, items)
        outcome = self._attempt(cur, current, entry_id, items[0], int(attempts), (kind, cause, reason))
        if outcome.outcome in FAILED and ek is not None:
            current.stuck[ek] = entry_id
        return outcome

    def _attempt(self, cur: Any, current: _Pass, entry_id: int, item: Parsed, attempts: int,
                 stored: tuple[str | None, str | None, str | None] = (None, None, None)) -> Outcome:
        """Try one entry; a failure writes its next attempt (the reason, kind and cause only when they changed:
        the statement is logged with its values, and most attempts fail as the one before). A failure with a
        cause moves the cause's schedule instead of the entry's; a success makes its cause due."""
        applier, s = self.applier, self.applier.s
        batch = Batch()
        cur.execute("SAVEPOINT retry_entry")
        try:
            outcome = (Outcome(item.message_id, "error", reason=item.error,
                               parked=(rules.PERMANENT, state.central_cause(item.error))) if item.error is not None
                       else applier.apply_message(cur, item, batch, from_queue=True))
        except pymysql.MySQLError as exc:
            if operator_fault(exc) or deadlock(exc):  # every entry alike, or the pass was rolled back: stop
                raise
            outcome = Outcome(item.message_id, "retry", reason=reasons.reason("apply_failed",
                                                                              error=failure_reason(exc)))
        if outcome.outcome not in FAILED:
            applier.finish_batch(cur, batch)
            delete_entries(cur, s, [entry_id])
            if stored[1] is not None and stored[1] in current.causes:  # it applied: its cause's entries are due
                cur.execute(sql("DELETE FROM {}.receiver_retry_cause WHERE cause = %s", s), (stored[1],))
                current.causes.pop(stored[1], None)
                current.backed_off.discard(stored[1])
            return outcome
        cur.execute("ROLLBACK TO SAVEPOINT retry_entry")
        applier.rolled_back()
        kind, cause = outcome.parked or (rules.queue_kind_of(outcome.outcome), None)
        if kind == rules.WAITING:  # its entity is blocked by another entry now: it waits like one
            kind = rules.TRANSIENT
        stamp = now()
        reason = (outcome.reason or "")[:2000]
        if cause is None:
            due_at = rules.next_attempt(kind, attempts + 1, dt.timedelta(seconds=self.interval), stamp, cause)
        else:
            due_at = self._cause_failed(cur, current, cause, kind, entry_id, outcome.reason, stamp)
        if stored == (kind, cause, reason):
            cur.execute(sql("UPDATE {}.receiver_retry_queue SET attempts = attempts + 1, next_attempt = %s, "
                            "date_last_attempt = %s WHERE id = %s", s), (due_at, stamp, entry_id))
            return outcome
        cur.execute(sql("UPDATE {}.receiver_retry_queue SET attempts = attempts + 1, reason = %s, reason_code = %s, "
                        "reason_args = %s, kind = %s, cause = %s, next_attempt = %s, date_last_attempt = %s "
                        "WHERE id = %s", s),
                    (reason, *reasons.columns(outcome.reason), kind, cause, due_at, stamp,
                     entry_id))
        return outcome

    def _cause_failed(self, cur: Any, current: _Pass, cause: str, kind: str, entry_id: int, reason: str | None,
                      stamp: dt.datetime) -> dt.datetime | None:
        """The representative of `cause` failed for it: the cause's one row moves to its next attempt (the
        cause's other entries are neither tried nor written until then); when that is."""
        again = cause in current.failed  # a pass that tries every entry (an operator's): one step per pass
        tries = current.causes.get(cause, 0) + (0 if again else 1)
        due_at = rules.next_attempt(kind, tries, dt.timedelta(seconds=self.interval), stamp, cause)
        if again:
            return due_at
        table = _ref_table(reason) if cause.startswith("ref:") else None
        cur.execute(sql("INSERT INTO {}.receiver_retry_cause (cause, kind, attempts, entry_id, ref_table, "
                        "next_attempt, date_last_attempt) VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY "
                        "UPDATE kind = VALUES(kind), attempts = VALUES(attempts), entry_id = VALUES(entry_id), "
                        "ref_table = VALUES(ref_table), next_attempt = VALUES(next_attempt), "
                        "date_last_attempt = VALUES(date_last_attempt)", self.applier.s),
                    (cause, kind, tries, entry_id, table, due_at, stamp))
        current.causes[cause] = tries
        current.failed.add(cause)
        if table is not None:
            self.waiting_refs.add(cause)
            self.ref_tables[cause] = table
        return due_at


def _ref_table(reason: str | None) -> str | None:
    """The table of the row a "missing_row" reason waits for (looked up at central each round)."""
    code, args = reasons.columns(reason)
    if code != "missing_row" or not args:
        return None
    table = orjson.loads(args).get("table")
    return str(table)[:64] if table else None


def pass_steps(applier: Applier, *, everything: bool = False, entities: set[str] | None = None,
               interval: float = DEFAULT_INTERVAL, round_seconds: float = ROUND_SECONDS,
               page: int = PAGE) -> Generator[None, None, list[Outcome]]:
    """One whole pass (entries due; `everything`: all, each cause through its representative; `entities`: those
    entities' entries whether due or not) in rounds of `round_seconds`, yielding between rounds: a bulk action the
    running receiver serves goes on between live batches (receiver/actions.ActionLane). Returns the outcomes."""
    if entities is not None and not entities:
        return []
    lane = RetryLane(applier, interval, round_seconds=round_seconds, page=page)
    lane._start(everything or entities is not None, entities)
    outcomes: list[Outcome] = []
    while lane.busy():
        outcomes = lane.round(everything or entities is not None)
        if lane.busy():
            yield
    return outcomes


def drive(steps: Generator[None, None, T]) -> T:
    """Run steps to their end at once (no receiver is waiting with live messages); their result."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return cast(T, end.value)


def retry_pending(applier: Applier, limit: int | None = None, *, only: int | None = None, page: int = PAGE,
                  everything: bool = False, interval: float = DEFAULT_INTERVAL,
                  entities: set[str] | None = None) -> list[Outcome]:
    """One whole pass now (entries due; `everything`: all, each cause through its representative), or entry
    `only` whether due or not, or the entries of `entities` whether due or not (what waited behind entries just
    dropped); its outcomes. For operators' actions and `dbsync apply --retry`; the receiver's loop uses a
    RetryLane."""
    if only is not None:
        lane = RetryLane(applier, interval, page=page)
        lane._start(True)
        current = lane.current
        assert current is not None
        current.outcomes.clear()  # closing superseded entries is the pass's business, not this entry's
        lane._refresh(current)
        with applier.conn.cursor() as cur:
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue WHERE id = %s", _COLUMNS, applier.s),
                        (only,))
            row = cur.fetchone()
            outcome = lane._entry(cur, current, row) if row is not None else None
        applier.conn.commit()
        applier.reload_blocked()
        return [outcome] if outcome is not None else []
    outcomes = drive(pass_steps(applier, everything=everything, entities=entities, interval=interval,
                                round_seconds=3600.0, page=page if limit is None else min(page, limit)))
    return outcomes[:limit] if limit is not None else outcomes


def _per_site(counts: Counter[str]) -> str:
    return ", ".join(f"{site} {n}" for site, n in sorted(counts.items())) or "none"


def _unpack(applier: Applier, cur: Any, entry_id: int, message_id: str, items: list[Parsed]) -> Outcome:
    """An envelope kept whole (parked as one error: over the size limit then, or by a receiver that predates
    envelopes) becomes one entry per message, in order, each tried from the next pass on like any other."""
    batch = Batch()
    for item in items:
        if item.error is not None:
            applier.park(cur, item, item.error, batch, kind="error")
        else:
            applier.park(cur, item, reasons.reason("unpacked_from", envelope=message_id[:80]), batch)
    applier.write_archive(cur, batch)
    delete_entries(cur, applier.s, [entry_id])
    log.info("retry entry %d (envelope %s): unpacked into %d entries", entry_id, message_id, len(items))
    return Outcome(message_id, "retry", reason=reasons.reason("unpacked_into", count=len(items)))


def drop_entry(applier: Applier, number: int) -> str:
    """Remove entry `number` for good (an operator decided it must never apply); later messages it held follow."""
    entry = get_entry(applier.conn, applier.settings.state_schema, number)
    with applier.conn.cursor() as cur:
        applier.archive_dropped(cur, [number])
        delete_entries(cur, applier.s, [number])
    applier.conn.commit()
    log.warning("retry entry %d (%s, %s) dropped by the operator: %s", number, entry.message_id, entry.table,
                entry.reason)
    released = retry_pending(applier, entities={entry.entity}) if entry.entity else []  # whether due or not
    done = sum(1 for o in released if o.outcome not in FAILED)
    return _("retry entry {number} dropped; {done} waiting message(s) applied").format(number=number, done=done)

