"""The retry queue: re-apply parked messages in arrival order, entity by entity.

An entity whose head entry still fails keeps the rest of its entries waiting (order per entity is preserved);
an entity with an unresolved conflict is skipped until it is resolved. A pass walks the whole queue in pages
(keyset by id, one transaction per page), so no number of permanent errors at its head holds up what is behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pymysql

from dbsync_cli.faults import operator_fault
from dbsync_cli.i18n import _
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, Outcome, failure_reason, now
from dbsync_cli.receiver.current_rows import deadlock
from dbsync_cli.receiver.message import Parsed, entity_key
from dbsync_cli.receiver.state import StateError, schema_name
from dbsync_cli.sql import Sql, sql

log = logging.getLogger("dbsync.retry")

FAILED = ("retry", "error", "waiting")
PAGE = 500


def retry_pending(applier: Applier, limit: int | None = None, *, only: int | None = None,
                  page: int = PAGE) -> list[Outcome]:
    """One pass over the queue (or entry `only`); returns the outcomes. Logs progress on a long queue."""
    s = applier.s
    outcomes: list[Outcome] = []
    applier.refresh_sites()
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT entity_key FROM {}.receiver_conflict_queue WHERE resolved = 0", s))
        in_conflict = {r[0] for r in cur.fetchall()}
    applier.conn.commit()
    stuck: set[str] = set()
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_queue", s))
        (queued,) = cur.fetchone() or (0,)
    applier.conn.commit()
    applied_by_site: Counter[str] = Counter()
    after, started, last_log = 0, time.monotonic(), time.monotonic()
    while limit is None or len(outcomes) < limit:
        size = page if limit is None else min(page, limit - len(outcomes))
        with applier.conn.cursor() as cur:
            if only is None:
                cur.execute(sql("SELECT id, message_id, site, body, broker_user, header_site FROM {}.receiver_retry_queue WHERE id > %s "
                                "ORDER BY id LIMIT %s", s), (after, size))
            else:
                cur.execute(sql("SELECT id, message_id, site, body, broker_user, header_site FROM {}.receiver_retry_queue WHERE id = %s", s),
                            (only,))
            rows = cur.fetchall()
            for row in rows:
                outcome = _entry(applier, cur, s, row, in_conflict, stuck)
                if outcome is not None:
                    outcomes.append(outcome)
                    if outcome.outcome not in FAILED:
                        applied_by_site[row[2] or "?"] += 1
        applier.conn.commit()
        if not rows or only is not None:
            break
        after = rows[-1][0]
        if time.monotonic() - last_log >= 5:  # e.g. a site's onboarding: thousands queued before `sites add`
            log.info("retry queue: %d of %d entries tried, %d re-applied (%s) (%.0f/s)", len(outcomes), queued,
                     sum(applied_by_site.values()), _per_site(applied_by_site),
                     len(outcomes) / max(0.001, time.monotonic() - started))
            last_log = time.monotonic()
    applier.reload_blocked()
    applied = sum(1 for o in outcomes if o.outcome not in FAILED)
    with applier.conn.cursor() as cur:  # entries behind a conflict or an earlier entry were not tried: count all
        cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_queue", s))
        (left,) = cur.fetchone() or (0,)
    applier.conn.commit()
    if outcomes or left:
        log.info("retry queue: %d re-applied (%s), %d still in the queue", applied, _per_site(applied_by_site), left)
    return outcomes


def _per_site(counts: Counter[str]) -> str:
    return ", ".join(f"{site} {n}" for site, n in sorted(counts.items())) or "none"


def _entry(applier: Applier, cur: Any, s: Sql, row: tuple[Any, ...], in_conflict: set[str],
           stuck: set[str]) -> Outcome | None:
    entry_id, message_id, site, body, broker_user, header_site = row
    if not body:  # a delivery cut short at the broker (consume parked it): nothing to apply, its reason stays
        return None
    items = applier.expand_stored(bytes(body), message_id, site, broker_user, header_site)
    if len(items) > 1:
        return _unpack(applier, cur, s, entry_id, message_id, items)
    item = items[0]
    ek = entity_key(applier.model, item.table, item.message["uuid"]) if item.message else None
    if ek is not None and (ek in in_conflict or ek in stuck):
        return None
    batch = Batch()
    cur.execute("SAVEPOINT retry_entry")
    try:
        outcome = _attempt(applier, cur, item, batch)
    except pymysql.MySQLError as exc:
        if operator_fault(exc):  # a missing grant fails every entry alike: stop, count no attempt
            raise
        if deadlock(exc):  # the server rolled the pass back (its savepoint too): not the entry's fault
            raise
        outcome = Outcome(message_id, "retry", reason=f"apply failed: {failure_reason(exc)}")
    if outcome.outcome in FAILED:
        cur.execute("ROLLBACK TO SAVEPOINT retry_entry")
        applier.rolled_back()
        cur.execute(sql("UPDATE {}.receiver_retry_queue SET attempts = attempts + 1, reason = %s, "
                        "date_last_attempt = %s WHERE id = %s", s), ((outcome.reason or "")[:2000], now(), entry_id))
        if ek is not None:
            stuck.add(ek)
    else:
        applier.finish_batch(cur, batch)
        cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id = %s", s), (entry_id,))
    return outcome


def _unpack(applier: Applier, cur: Any, s: Sql, entry_id: int, message_id: str, items: list[Parsed]) -> Outcome:
    """An envelope kept whole (parked as one error: over the size limit then, or by a receiver that predates
    envelopes) becomes one entry per message, in order, each tried from the next pass on like any other."""
    batch = Batch()
    for item in items:
        if item.error is not None:
            applier.park(cur, item, item.error, batch, kind="error")
        else:
            applier.park(cur, item, f"unpacked from envelope {message_id[:80]}", batch)
    cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id = %s", s), (entry_id,))
    log.info("retry entry %d (envelope %s): unpacked into %d entries", entry_id, message_id, len(items))
    return Outcome(message_id, "retry", reason=f"unpacked into {len(items)} entries")


def _attempt(applier: Applier, cur: Any, item: Parsed, batch: Batch) -> Outcome:
    if item.error is not None:
        return Outcome(item.message_id, "error", reason=item.error)
    return applier.apply_message(cur, item, batch, from_queue=True)


# ---- the queue for operators (`dbsync retry list|show|drop|again`) ---------------------------------------------
@dataclass
class RetryEntry:
    id: int
    message_id: str
    site: str | None
    table: str | None
    entity: str | None
    reason: str
    attempts: int
    date_created: dt.datetime
    date_last_attempt: dt.datetime | None
    body: bytes

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "message_id": self.message_id, "site": self.site, "table": self.table,
                "entity": self.entity, "reason": self.reason, "attempts": self.attempts,
                "date_created": self.date_created.isoformat(sep=" "),
                "date_last_attempt": self.date_last_attempt.isoformat(sep=" ") if self.date_last_attempt else None,
                "kind": "waits for a retry" if self.entity else "error (never applies as it is)"}


_SELECT = ("SELECT id, message_id, site, table_name, entity_key, reason, attempts, date_created, date_last_attempt, "
           "body FROM {}.receiver_retry_queue")


def _entry_of(row: tuple[Any, ...]) -> RetryEntry:
    return RetryEntry(row[0], row[1], row[2], row[3], row[4], row[5], int(row[6]), row[7], row[8], bytes(row[9]))


def list_entries(conn: Any, schema: str, *, site: str | None = None, limit: int = 1000) -> list[RetryEntry]:
    """Entries oldest first (at most `limit`), of one site or all."""
    with conn.cursor() as cur:
        if site is None:
            cur.execute(sql(_SELECT + " ORDER BY id LIMIT %s", schema_name(schema)), (limit,))
        else:
            cur.execute(sql(_SELECT + " WHERE site = %s ORDER BY id LIMIT %s", schema_name(schema)), (site, limit))
        return [_entry_of(row) for row in cur.fetchall()]


def get_entry(conn: Any, schema: str, number: int) -> RetryEntry:
    with conn.cursor() as cur:
        cur.execute(sql(_SELECT + " WHERE id = %s", schema_name(schema)), (number,))
        row = cur.fetchone()
    if row is None:
        raise StateError(_("retry entry {number} does not exist").format(number=number))
    return _entry_of(row)


def drop_entry(applier: Applier, number: int) -> str:
    """Remove entry `number` for good (an operator decided it must never apply); later messages it held follow."""
    entry = get_entry(applier.conn, applier.settings.state_schema, number)
    with applier.conn.cursor() as cur:
        cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id = %s", applier.s), (number,))
    applier.conn.commit()
    log.warning("retry entry %d (%s, %s) dropped by the operator: %s", number, entry.message_id, entry.table,
                entry.reason)
    released = retry_pending(applier) if entry.entity else []
    done = sum(1 for o in released if o.outcome not in FAILED)
    return _("retry entry {number} dropped; {done} waiting message(s) applied").format(number=number, done=done)
