"""The retry queue for operators (`dbsync retry list|show|drop`, the console): entries and their bodies.

The body lives in receiver_retry_body (written once when the entry is parked, deleted with it), so a listing never
reads bodies and an attempt never rewrites one.
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

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "message_id": self.message_id, "site": self.site, "table": self.table,
                "entity": self.entity, "reason": self.reason, "attempts": self.attempts,
                "date_created": self.date_created.isoformat(sep=" "),
                "date_last_attempt": self.date_last_attempt.isoformat(sep=" ") if self.date_last_attempt else None,
                "kind": self.kind,
                "next_attempt": self.next_attempt.isoformat(sep=" ") if self.next_attempt else None}


_COLUMNS = sql("q.id, q.message_id, q.site, q.table_name, q.entity_key, q.reason, q.attempts, q.date_created, "
               "q.date_last_attempt, q.kind, q.next_attempt, q.reason_code, q.reason_args")


def _entry_of(row: tuple[Any, ...], body: bytes = b"") -> RetryEntry:
    shown = reasons.shown(row[11], row[12], row[5])  # in the reader's language (a code), else as stored
    return RetryEntry(row[0], row[1], row[2], row[3], row[4], shown, int(row[6]), row[7], row[8], body, row[9],
                      row[10])


def list_entries(conn: Any, schema: str, *, site: str | None = None, limit: int = 1000) -> list[RetryEntry]:
    """Entries oldest first (at most `limit`), of one site or all; without their bodies."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        if site is None:
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue q ORDER BY q.id LIMIT %s", _COLUMNS, s),
                        (limit,))
        else:
            cur.execute(sql("SELECT {} FROM {}.receiver_retry_queue q WHERE q.site = %s ORDER BY q.id LIMIT %s",
                            _COLUMNS, s), (site, limit))
        return [_entry_of(row) for row in cur.fetchall()]


def get_entry(conn: Any, schema: str, number: int) -> RetryEntry:
    """Entry `number` with its body (empty: a delivery consume could not store)."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT {}, b.body FROM {}.receiver_retry_queue q LEFT JOIN {}.receiver_retry_body b "
                        "ON b.id = q.id WHERE q.id = %s", _COLUMNS, s, s), (number,))
        row = cur.fetchone()
    if row is None:
        raise StateError(_("retry entry {number} does not exist").format(number=number))
    return _entry_of(row, bytes(row[13] or b""))


def delete_entries(cur: Any, s: Sql, ids: list[int]) -> None:
    """Remove entries and their bodies (inside the caller's transaction)."""
    if not ids:
        return
    marks = placeholders(len(ids))
    cur.execute(sql("DELETE FROM {}.receiver_retry_body WHERE id IN ({})", s, marks), ids)
    cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id IN ({})", s, marks), ids)
