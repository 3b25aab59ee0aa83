"""Retry entries a newer message has made moot: the row they would change was applied since, by a change sent
later. They close themselves, counted per site as "superseded" (never silent), so a queue of refused messages
whose rows `verify --repair` has mended stops keeping status CRITICAL."""

from __future__ import annotations

import logging
from collections.abc import Collection

from dbsync_cli.receiver import archive, reasons
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, Outcome
from dbsync_cli.receiver.guard import COLUMNS, SourcePosition
from dbsync_cli.receiver.retry_queue import delete_entries
from dbsync_cli.sql import join, quote, sql

log = logging.getLogger("dbsync.retry")

SUPERSEDED = "superseded"
LIMIT = 1000  # candidates looked at per pass (their bodies are read)


def newer(message_position: SourcePosition | None, applied: SourcePosition | None) -> bool:
    """True when the change applied last (`applied`) was made after the parked message's."""
    if message_position is None or applied is None:
        return False
    if message_position.older_than(applied):
        return True
    return (message_position.site == applied.site and message_position.sent is not None
            and applied.sent is not None and applied.sent > message_position.sent)


def superseded_entries(applier: Applier, after: int = 0, limit: int = LIMIT,
                       sites: Collection[str | None] | None = None) -> tuple[list[Outcome], int]:
    """Close the entries whose row a later change of the same site has been applied to since they were parked;
    their outcomes, and the id the next call goes on after (the candidates are walked across passes, so those
    that stay never hide the ones further down). An entry refused for its broker user is evidence (someone sent
    as another site) and never closes itself."""
    s = applier.s
    src = join([quote("e", c) for c in COLUMNS])
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT q.id, q.message_id, q.site, q.broker_user, q.header_site, q.table_name, b.body, {} "
                        "FROM {}.receiver_retry_queue q JOIN {}.entity_hash e ON e.table_name = q.table_name AND "
                        "e.entity_uuid = q.entity_uuid JOIN {}.receiver_retry_body b ON b.id = q.id "
                        "LEFT JOIN {}.site_info i ON i.identifier = q.site "
                        "WHERE q.id > %s AND e.date_synced > q.date_created AND e.src_site = q.site "
                        "AND NOT (i.broker_user IS NOT NULL AND q.broker_user IS NOT NULL "
                        "AND q.broker_user <> i.broker_user) ORDER BY q.id LIMIT %s", src, s, s, s, s),
                    (after, limit))
        candidates = cur.fetchall()
    applier.conn.commit()
    next_after = int(candidates[-1][0]) if len(candidates) >= limit else 0  # the end: from the start again
    batch, closed, ids = Batch(), [], []
    for row in candidates:
        entry_id, message_id, site, broker_user, header_site, table, body = row[:7]
        if sites is not None and site not in sites:  # a receiver worker closes only its own sites' entries
            continue
        item = applier.parse_stored(bytes(body), message_id, site, broker_user, header_site)
        if item.message is None or not newer(SourcePosition.of(item.message), SourcePosition.from_row(row[7:])):
            continue
        batch.skip(str(item.message.get("site") or site or "?"), SUPERSEDED, message_id, table)
        closed.append(Outcome(message_id, SUPERSEDED, table, item.message.get("uuid"),
                              reasons.reason("superseded")))
        applier.archived(batch, archive.event(message_id, SUPERSEDED, site=site, table=table,
                                              uuid=item.message.get("uuid"), reason=closed[-1].reason,
                                              actor=applier.actor or archive.RETRY_ACTOR))
        ids.append(int(entry_id))
    if ids:
        with applier.conn.cursor() as cur:
            delete_entries(cur, s, ids)
            applier.finish_batch(cur, batch)
        applier.conn.commit()
        log.info("retry queue: %d entries closed: a newer change of their row was applied since (superseded)",
                 len(ids))
    return closed, next_after
