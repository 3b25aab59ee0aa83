"""Apply's parking: a message skipped, parked for a retry or as an error, or held as a conflict, counted per site
and reason in the batch (never silent)."""

from __future__ import annotations

import logging
from typing import Any

from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.apply_base import ApplierBase
from dbsync_cli.receiver.batch import Batch, Outcome, now
from dbsync_cli.receiver.conflict import HASH, Verdict
from dbsync_cli.receiver.message import Parsed, entity_key
from dbsync_cli.receiver.retry_rules import queue_kind_of
from dbsync_cli.sql import sql
from dbsync_cli.wire import dumps

log = logging.getLogger("dbsync.apply")


class Parking(ApplierBase):
    """Messages apply does not apply now: skipped, parked in the retry or error queue, or in the conflict queue."""

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
