"""The inbox: deliveries stored on the central server before they are acknowledged, until apply handles them.

``INSERT IGNORE`` on the unique message id makes a redelivered duplicate a no-op; apply deletes the rows it
handled in the same transaction as their changes. A delivery whose id is in the inbox with *other* content is no
redelivery: it is kept beside the first (under its id and a digest of its body) and apply judges each, as it
judges one id seen again after the first was applied. A row is one delivery: one message, or a v2 envelope of
`n_rows`. Apply takes live changes before the rows of initial loads (`snapshot`), so that one clinic's first load
never holds up another clinic's edits; the order guard keeps an entity right when its live change overtakes its
snapshot row.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from dbsync_cli import wire
from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.state import schema_name
from dbsync_cli.sql import Sql, join, placeholders, quote, sql

log = logging.getLogger("dbsync.consume")

MAX_SITE = 100  # inbox.site VARCHAR(100)
MAX_ID = 255  # inbox.message_id VARCHAR(255)


@dataclass(frozen=True)
class Delivery:
    """What consume stores of one broker message."""

    message_id: str
    site: str | None  # the dbsync-site header
    body: bytes
    broker_user: str  # "" when the broker stamped none
    rows: int = 1  # messages in it (the dbsync-rows header of an envelope)
    snapshot: bool = False  # the dbsync-snapshot header


@dataclass(frozen=True)
class InboxRow:
    id: int
    message_id: str
    site: str | None  # the dbsync-site header
    body: bytes
    broker_user: str | None = None  # the user Artemis authenticated the sender as ("" when it stamped none)
    rows: int = 1  # messages it holds (a v2 envelope holds several)

    def record(self, *, text: bool = True) -> dict[str, Any]:
        """The NDJSON record: the body as text when it is UTF-8 (and `text`), else ``{"$b64": …}``."""
        body: Any
        try:
            body = self.body.decode("utf-8") if text else wire.b64(self.body)
        except UnicodeDecodeError:
            body = wire.b64(self.body)
        return {"inbox": self.id, "message_id": self.message_id, "site": self.site,
                "broker_user": self.broker_user, "body": body}


DUPLICATE_DELIVERY = "duplicate_delivery"  # receiver_skipped reason: a copy of a delivery still in the inbox


def store(db: Any, schema: str, deliveries: list[Delivery], worker: int | None = None) -> list[InboxRow]:
    """One batch of deliveries in one transaction; returns the new rows (a redelivery adds none). `worker`: the
    slot of the receiver worker storing them (--worker), whose apply takes their site first (worker_sites.py).
    Each redelivery dropped here is counted per site (`DUPLICATE_DELIVERY`, shown by `dbsync status`) in the same
    transaction, so a copy is counted once however often consume is killed around it."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows: list[InboxRow] = []
    copies: dict[str, tuple[int, str]] = {}  # site → (copies dropped, the last one's id)
    statement = sql("INSERT IGNORE INTO {}.inbox (message_id, site, body, date_received, broker_user, n_rows, "
                    "snapshot, worker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", schema_name(schema))
    stored_body = sql("SELECT body FROM {}.inbox WHERE message_id = %s", schema_name(schema))
    try:
        with db.cursor() as cur:
            for d in deliveries:
                values = (d.site[:MAX_SITE] if d.site else None, d.body, now, d.broker_user[:100], d.rows,
                          int(d.snapshot), worker)
                row_id = d.message_id
                cur.execute(statement, (row_id, *values))
                if cur.rowcount == 0:  # the id is in the inbox: a redelivery, unless the content differs
                    cur.execute(stored_body, (row_id,))  # (the duplicate key check locked that row)
                    found = cur.fetchone()
                    if found is not None and bytes(found[0]) == d.body:
                        _count_copy(copies, d)
                        continue
                    if found is not None:
                        row_id = other_content_id(d.message_id, d.body)
                    cur.execute(statement, (row_id, *values))
                    if cur.rowcount == 0:
                        _count_copy(copies, d)
                        continue  # that other content is in the inbox already: a redelivery of it
                    log.warning("delivery %s arrived with other content than the one in the inbox under its id: "
                                "kept beside it (as %s); apply judges each", d.message_id, row_id)
                rows.append(InboxRow(int(cur.lastrowid), row_id, d.site, d.body, d.broker_user[:100], d.rows))
            if copies:
                cur.executemany(
                    sql("INSERT INTO {}.receiver_skipped (site, reason, table_name, count, last_message_id, "
                        "last_date) VALUES (%s, %s, '', %s, %s, %s) ON DUPLICATE KEY UPDATE count = count + "
                        "VALUES(count), last_message_id = VALUES(last_message_id), last_date = VALUES(last_date)",
                        schema_name(schema)),
                    [(site, DUPLICATE_DELIVERY, n, last[:MAX_ID], now) for site, (n, last) in sorted(copies.items())])
        db.commit()
    except BaseException:
        with contextlib.suppress(Exception):  # the connection may be gone; the error raised says why
            db.rollback()
        raise
    return rows


def _count_copy(copies: dict[str, tuple[int, str]], d: Delivery) -> None:
    site = d.site[:MAX_SITE] if d.site else ""  # '' for a delivery without a site header
    copies[site] = (copies.get(site, (0, ""))[0] + 1, d.message_id)


def park_broken(db: Any, schema: str, message_id: str, site: str | None, broker_user: str | None,
                reason: str) -> None:
    """A delivery consume cannot store in the inbox (its frame was cut short and its body lost, or it is over the
    size limit): an entry of the retry queue with its one-line reason and no body, so it is counted and seen, never
    applied. A redelivery (consume stopped between this commit and the ACK) adds no second entry."""
    # no receiver_retry_body row: the retry pass passes it by without a write
    statement = sql("INSERT INTO {0}.receiver_retry_queue (message_id, site, reason, date_created, broker_user, kind, "
                    "reason_code, reason_args) "
                    "SELECT %s, %s, %s, %s, %s, 'permanent', %s, %s FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM "
                    "{0}.receiver_retry_queue q WHERE q.message_id = %s AND NOT EXISTS (SELECT 1 FROM "
                    "{0}.receiver_retry_body b WHERE b.id = q.id))", schema_name(schema))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        with db.cursor() as cur:
            cur.execute(statement, (message_id[:255], site[:MAX_SITE] if site else None, reason[:2000], now,
                                    broker_user[:100] if broker_user else None, *reasons.columns(reason),
                                    message_id[:255]))
        db.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            db.rollback()
        raise


def site_filter(sites: Collection[str | None] | None, column: str = "site") -> tuple[Sql, list[Any]]:
    """` WHERE <column> IN (…)` for `sites` (None in them: rows without a site), or nothing for None."""
    if sites is None:
        return sql(""), []
    named = sorted(site for site in sites if site is not None)
    tests = ([sql("{} IN ({})", quote(column), placeholders(len(named)))] if named else []) + (
        [sql("{} IS NULL", quote(column))] if None in sites else [])
    return sql(" WHERE ({})", join(tests, " OR ") if tests else sql("FALSE")), named


def other_content_id(message_id: str, body: bytes) -> str:
    """The inbox id of a delivery whose id is taken by one with other content: its id and a digest of its body."""
    return f"{message_id[:MAX_ID - 17]}~{hashlib.blake2b(body, digest_size=8).hexdigest()}"


def present(conn: Any, schema: str, ids: Collection[int]) -> set[int]:
    """Which of inbox rows `ids` are still there (read ahead, then something else deleted them)."""
    if not ids:
        return set()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id FROM {}.inbox WHERE id IN ({})", schema_name(schema), placeholders(len(ids))),
                    sorted(ids))
        return {int(r[0]) for r in cur.fetchall()}


def pending_rows(conn: Any, schema: str, after_id: int = 0, limit: int = 200) -> list[InboxRow]:
    """Inbox rows after ``after_id``, in id order. Rows whose id apply recorded as handled are included: apply
    decides (a duplicate, or the same id with other content) and deletes them, as the combined receiver does."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, message_id, site, body, broker_user, n_rows FROM {s}.inbox WHERE id > %s "
                        "ORDER BY id LIMIT %s", s=s), (after_id, limit))
        rows = [InboxRow(int(r[0]), r[1], r[2], bytes(r[3]), r[4], int(r[5])) for r in cur.fetchall()]
    conn.commit()  # end the read snapshot so the next page sees rows committed since
    return rows


def oldest(conn: Any, schema: str, limit: int, *, besides: Collection[int] = (),
           sites: Collection[str | None] | None = None) -> list[dict[str, Any]]:
    """The next inbox rows for apply, live changes first, holding about `limit` messages (at least one row) as
    apply's records (apply deletes what it handled in the same transaction); `besides`: rows apply holds now;
    `sites`: only theirs (a receiver worker's, None standing for rows without a site header)."""
    s = schema_name(schema)
    conn.commit()
    if sites is not None and not sites:
        return []
    where, params = site_filter(sites)
    with conn.cursor() as cur:
        if besides:
            where = sql("{} {} id NOT IN ({})", where, sql("AND") if where else sql("WHERE"),
                        placeholders(len(besides)))
        cur.execute(sql("SELECT id, n_rows FROM {}.inbox{} ORDER BY snapshot, id LIMIT %s", s, where),
                    [*params, *sorted(besides), max(1, limit)])
        wanted: list[int] = []
        total = 0
        for row_id, n_rows in cur.fetchall():
            if wanted and total + n_rows > limit:
                break
            wanted.append(int(row_id))
            total += n_rows
        rows = []
        if wanted:
            cur.execute(sql("SELECT id, message_id, site, body, broker_user FROM {}.inbox WHERE id IN ({}) "
                            "ORDER BY snapshot, id", s, placeholders(len(wanted))), wanted)
            rows = [InboxRow(int(r[0]), r[1], r[2], bytes(r[3]), r[4]) for r in cur.fetchall()]
    conn.commit()
    return [row.record(text=False) for row in rows]
