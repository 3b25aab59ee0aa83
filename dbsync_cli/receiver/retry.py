"""The retry queue: re-apply parked messages in arrival order, entity by entity.

An entity whose head entry still fails keeps the rest of its entries waiting (order per entity is preserved);
an entity with an unresolved conflict is skipped until it is resolved.
"""

from __future__ import annotations

import logging
from typing import Any

import pymysql

from dbsync_cli.receiver import state
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, Outcome, now
from dbsync_cli.receiver.message import parse_raw

log = logging.getLogger("dbsync.retry")

FAILED = ("retry", "error", "waiting")


def retry_pending(applier: Applier, limit: int = 5000) -> list[Outcome]:
    s = applier.s
    conn = applier.conn
    outcomes: list[Outcome] = []
    applier.sites = state.sites(conn, applier.settings.state_schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, message_id, site, body FROM {s}.receiver_retry_queue ORDER BY id LIMIT %s",  # noqa: S608
                    (limit,))
        rows = cur.fetchall()
        cur.execute(f"SELECT entity_key FROM {s}.receiver_conflict_queue WHERE resolved = 0")  # noqa: S608
        in_conflict = {r[0] for r in cur.fetchall()}
        stuck: set[str] = set()
        for entry_id, message_id, site, body in rows:
            item = parse_raw(bytes(body), message_id, site, applier.model, applier.settings.max_message_bytes)
            ek = f"{item.table.identity.table}:{item.message['uuid']}" if item.table and item.message else None
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
                applier.ids.clear()
                cur.execute(f"UPDATE {s}.receiver_retry_queue SET attempts = attempts + 1, reason = %s, "  # noqa: S608
                            "date_last_attempt = %s WHERE id = %s", ((outcome.reason or "")[:2000], now(), entry_id))
                if ek is not None:
                    stuck.add(ek)
            else:
                applier._finish(cur, batch)
                cur.execute(f"DELETE FROM {s}.receiver_retry_queue WHERE id = %s", (entry_id,))  # noqa: S608
            outcomes.append(outcome)
    conn.commit()
    applier._load_blocked()
    applied = sum(1 for o in outcomes if o.outcome not in FAILED)
    if outcomes:
        log.info("retry queue: %d re-applied, %d still waiting", applied, len(outcomes) - applied)
    return outcomes


def _attempt(applier: Applier, cur: Any, item: Any, batch: Batch) -> Outcome:
    if item.error is not None:
        return Outcome(item.message_id, "error", reason=item.error)
    return applier._one(cur, item, batch, from_retry=True)
