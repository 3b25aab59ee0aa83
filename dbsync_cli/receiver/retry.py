"""The retry queue: re-apply parked messages in arrival order, entity by entity.

An entity whose head entry still fails keeps the rest of its entries waiting (order per entity is preserved);
an entity with an unresolved conflict is skipped until it is resolved.
"""

from __future__ import annotations

import logging
from typing import Any

import pymysql

from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, Outcome, now
from dbsync_cli.receiver.message import Parsed, entity_key
from dbsync_cli.sql import sql

log = logging.getLogger("dbsync.retry")

FAILED = ("retry", "error", "waiting")


def retry_pending(applier: Applier, limit: int = 5000) -> list[Outcome]:
    s = applier.s
    conn = applier.conn
    outcomes: list[Outcome] = []
    applier.refresh_sites()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, message_id, site, body FROM {}.receiver_retry_queue ORDER BY id LIMIT %s", s),
                    (limit,))
        rows = cur.fetchall()
        cur.execute(sql("SELECT entity_key FROM {}.receiver_conflict_queue WHERE resolved = 0", s))
        in_conflict = {r[0] for r in cur.fetchall()}
        stuck: set[str] = set()
        for entry_id, message_id, site, body in rows:
            item = applier.parse_stored(bytes(body), message_id, site)
            ek = entity_key(applier.model, item.table, item.message["uuid"]) if item.message else None
            if ek is not None and (ek in in_conflict or ek in stuck):
                continue
            batch = Batch()
            cur.execute("SAVEPOINT retry_entry")
            try:
                outcome = _attempt(applier, cur, item, batch)
            except pymysql.MySQLError as exc:
                outcome = Outcome(message_id, "retry", reason=f"apply failed: {exc.args[-1]}")
            if outcome.outcome in FAILED:
                cur.execute("ROLLBACK TO SAVEPOINT retry_entry")
                applier.rolled_back()
                cur.execute(sql("UPDATE {}.receiver_retry_queue SET attempts = attempts + 1, reason = %s, "
                                "date_last_attempt = %s WHERE id = %s", s),
                            ((outcome.reason or "")[:2000], now(), entry_id))
                if ek is not None:
                    stuck.add(ek)
            else:
                applier.finish_batch(cur, batch)
                cur.execute(sql("DELETE FROM {}.receiver_retry_queue WHERE id = %s", s), (entry_id,))
            outcomes.append(outcome)
    conn.commit()
    applier.reload_blocked()
    applied = sum(1 for o in outcomes if o.outcome not in FAILED)
    if outcomes:
        log.info("retry queue: %d re-applied, %d still waiting", applied, len(outcomes) - applied)
    return outcomes


def _attempt(applier: Applier, cur: Any, item: Parsed, batch: Batch) -> Outcome:
    if item.error is not None:
        return Outcome(item.message_id, "error", reason=item.error)
    return applier.apply_message(cur, item, batch, from_queue=True)
