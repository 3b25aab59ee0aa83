"""The retry queue for operators (`dbsync retry list|show|drop`, the console): entries and their bodies.

The body lives in receiver_retry_body (written once when the entry is parked, deleted with it), so a listing never
reads bodies and an attempt never rewrites one. An entry whose cause backs off (its representative failed: see
receiver/retry.py) shows `waiting for <cause>`, the cause's tries and its next attempt; `attempts` counts the
entry's own tries only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from dbsync_cli.i18n import _
from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.state import StateError, schema_name
from dbsync_cli.sql import Sql, placeholders, sql


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
    kind: str = "transient"
    next_attempt: dt.datetime | None = None
    waiting_for: str | None = None  # its cause, when another entry of it is tried for it and the cause backs off

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "message_id": self.message_id, "site": self.site, "table": self.table,
                "entity": self.entity, "reason": self.reason, "attempts": self.attempts,
                "date_created": self.date_created.isoformat(sep=" "),
                "date_last_attempt": self.date_last_attempt.isoformat(sep=" ") if self.date_last_attempt else None,
                "kind": self.kind,
                "next_attempt": self.next_attempt.isoformat(sep=" ") if self.next_attempt else None,
                "waiting_for": self.waiting_for}


_COLUMNS = sql("q.id, q.message_id, q.site, q.table_name, q.entity_key, q.reason, q.attempts, q.date_created, "
               "q.date_last_attempt, q.kind, q.next_attempt, q.reason_code, q.reason_args, c.cause, c.attempts, "
               "c.entry_id, c.next_attempt")
#: an entry's cause's schedule beside it (its next attempt is the cause's)
_CAUSE = "LEFT JOIN {s}.receiver_retry_cause c ON c.cause = q.cause"


def _entry_of(row: tuple[Any, ...], body: bytes = b"") -> RetryEntry:
    shown = reasons.shown(row[11], row[12], row[5])  # in the reader's language (a code), else as stored
    cause, tries, representative, cause_next = row[13:17]
    waiting = cause if cause is not None and representative != row[0] else None
    if waiting is not None:
        shown = _("waiting for {cause} (tried {tries} time(s) through entry {entry}; next {next})").format(
            cause=cause, tries=tries, entry=representative,
            next=cause_next.isoformat(sep=" ", timespec="seconds") if cause_next else "-") + ": " + shown
    return RetryEntry(row[0], row[1], row[2], row[3], row[4], shown, int(row[6]), row[7], row[8], body, row[9],
                      cause_next if cause is not None else row[10], waiting)


def list_entries(conn: Any, schema: str, *, site: str | None = None, limit: int = 1000) -> list[RetryEntry]:
    """Entries oldest first (at most `limit`), of one site or all; without their bodies."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        if site is None:
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue q {} ORDER BY q.id LIMIT %s", _COLUMNS, s,
                            sql(_CAUSE, s=s)), (limit,))
        else:
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue q {} WHERE q.site = %s ORDER BY q.id LIMIT %s",
                            _COLUMNS, s, sql(_CAUSE, s=s)), (site, limit))
        return [_entry_of(row) for row in cur.fetchall()]


def get_entry(conn: Any, schema: str, number: int) -> RetryEntry:
    """Entry `number` with its body (empty: a delivery consume could not store)."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT {}, b.body FROM {}.receiver_retry_queue q LEFT JOIN {}.receiver_retry_body b "
                        "ON b.id = q.id {} WHERE q.id = %s", _COLUMNS, s, s, sql(_CAUSE, s=s)), (number,))
        row = cur.fetchone()
    if row is None:
        raise StateError(_("retry entry {number} does not exist").format(number=number))
    return _entry_of(row, bytes(row[17] or b""))


def annotate_waiting(conn: Any, schema: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Listed entries (dicts with "id", "reason", "next_attempt") told which wait for a cause that backs off: the
    cause, its tries and next attempt say it (counted, never a silent attempts 0)."""
    if not rows:
        return rows
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT q.id, c.cause, c.attempts, c.entry_id, c.next_attempt FROM {}.receiver_retry_queue q "
                        "JOIN {}.receiver_retry_cause c ON c.cause = q.cause WHERE q.id IN ({})", s, s,
                        placeholders(len(rows))), [r["id"] for r in rows])
        found = {int(r[0]): r[1:] for r in cur.fetchall()}
    conn.commit()
    for row in rows:
        cause, tries, representative, cause_next = found.get(int(row["id"]), (None, 0, None, None))
        row["waiting_for"] = cause if cause is not None and representative != row["id"] else None
        if cause is not None:
            row["next_attempt"] = cause_next.isoformat(sep=" ") if cause_next else None
        # the note stands beside the entry's own reason (scripts read `reason`; people read both)
        row["waiting"] = None if row["waiting_for"] is None else _(
            "waiting for {cause} (tried {tries} time(s) through entry {entry}; next {next})").format(
                cause=cause, tries=tries, entry=representative,
                next=cause_next.isoformat(sep=" ", timespec="seconds") if cause_next else "-")
    return rows


def delete_entries(cur: Any, s: Sql, ids: list[int]) -> None:
    """Remove entries and their bodies (inside the caller's transaction)."""
    if not ids:
        return
    marks = placeholders(len(ids))
    cur.execute(sql("DELETE FROM {}.receiver_retry_body WHERE id IN ({})", s, marks), ids)
    cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id IN ({})", s, marks), ids)
