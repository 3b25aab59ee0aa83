"""Apply's judgement of one message: who owns the entity, what was synced last (entity_hash), central's row as
read and locked for the batch, central's clock; the conflict rule itself is conflict.py."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.receiver import bookkeeping, reasons
from dbsync_cli.receiver.apply_base import ApplierBase
from dbsync_cli.receiver.batch import Batch
from dbsync_cli.receiver.conflict import FUTURE_DATED, Verdict, amount, judge
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.message import Parsed
from dbsync_cli.receiver.placeholder import is_placeholder
from dbsync_cli.receiver.resolve import (
    MessageError,
)
from dbsync_cli.receiver.state import CENTRAL_OWNER

log = logging.getLogger("dbsync.apply")


class Judging(ApplierBase):
    """The conflict rule, ownership and per-entity order: what central holds and what was synced, against a message."""

    def _check_owner(self, cur: Any, table: SyncedTable, uuid: str, site: str, batch: Batch) -> None:
        """A site changes only its own rows: one another site created is refused (error queue), naming both."""
        owner = batch.owners.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).owner
        if owner is None or owner in (site, CENTRAL_OWNER) or self.settings.cross_site_changes == "allow":
            return
        raise MessageError(reasons.reason("other_site_row", table=table.name, uuid=uuid, owner=owner, site=site))

    def _check_case(self, cur: Any, item: Parsed, table: SyncedTable, current: dict[str, Any], batch: Batch) -> None:
        """A uuid spelled in another letter case than central's row (e.g. central's `admin` in upper case) names the
        same row: it never gets a twin, and only the row's own site may send it so; central's own row is refused
        (error queue, counted per site as `uuid_case`). Another site's row is refused by _check_owner already."""
        message = item.message or {}
        stored, sent = current.get("uuid"), item.sent_uuid or message["uuid"]
        if not isinstance(stored, str) or stored == sent or is_placeholder(current):
            return
        owner = batch.owners.get((table.name, message["uuid"])) or self._synced_entry(
            cur, table.name, message["uuid"]).owner
        if owner not in (None, CENTRAL_OWNER):
            return
        batch.skip(message["site"], "uuid_case", item.message_id, table.name)
        raise MessageError(reasons.reason("uuid_case", table=table.name, uuid=message["uuid"], sent=sent[:40],
                                          stored=stored))

    def _applied_at(self, cur: Any, batch: Batch, table: SyncedTable, uuid: str, position: SourcePosition | None,
                    removed_by: str | None = None) -> None:
        """Remember where the change just applied came from; a delete (`removed_by` its site) leaves a tombstone."""
        if position is not None:
            last = batch.positions.get((table.name, uuid)) or self._synced_entry(cur, table.name, uuid).position
            batch.positions[(table.name, uuid)] = position.since(last)
        if removed_by is not None:
            batch.removed[(table.name, uuid)] = removed_by
        else:
            batch.removed.pop((table.name, uuid), None)

    def _synced_entry(self, cur: Any, table: str, uuid: str) -> bookkeeping.Synced:
        """What entity_hash holds for this entity (UNKNOWN if dbsync never wrote it)."""
        if self._synced is not None and (table, uuid) in self._synced:
            return self._synced[(table, uuid)]
        return bookkeeping.fetch_synced(cur, self.s, table, [uuid])[(table, uuid)]

    def _prefetch_rows(self, cur: Any, parsed: list[Parsed], *, lock: bool = True) -> None:
        """Current rows of the batch's entities that exist at central, locked until the batch commits (a central
        edit can no longer slip in between the judge and the write), and the entity_hash entries of all of them
        (tombstones included): one query per table each. Without `lock` (the replay message by message) each row
        is locked when its message reads it, inside the message's savepoint, so a row another transaction holds
        parks that message alone."""
        keys: dict[str, dict[Any, str]] = {}
        uuids_of: dict[str, set[str]] = {}
        for item in parsed:
            if item.message is None or item.table is None or not isinstance(item.message.get("uuid"), str):
                continue
            uuids_of.setdefault(item.table.name, set()).add(item.message["uuid"])
            key = self.ids.get(item.table.identity.table, item.message["uuid"])
            if key is not None:
                keys.setdefault(item.table.name, {})[key] = item.message["uuid"]
        if lock:
            self.rows.lock(keys)
        self._synced = {}
        for name, uuid_set in uuids_of.items():
            self._synced.update(bookkeeping.fetch_synced(cur, self.s, name, sorted(uuid_set)))

    def _judge(self, cur: Any, table: SyncedTable, uuid: str, current: dict[str, Any], message: dict[str, Any],
               values: dict[str, Any] | None, batch: Batch) -> Verdict:
        if (table.name, uuid) in batch.ours:
            return Verdict()
        synced = self._synced_entry(cur, table.name, uuid)
        incoming_time = None
        ts_ms = (message.get("source") or {}).get("ts_ms")
        if isinstance(ts_ms, int | float):
            incoming_time = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(self.convert.tz).replace(
                tzinfo=None)
        verdict = judge(table, current, synced.hash, message, values, incoming_time, self.settings.conflict_policy,
                        last_site=synced.position.site if synced.position is not None else None, owner=synced.owner,
                        central_rows=self.settings.central_rows, central_now=self._central_now(cur),
                        tolerance=self.settings.future_tolerance_seconds)
        if verdict.future is not None:  # a site clock ahead: counted per site (status), logged once per site
            site = str(message.get("site"))
            batch.skip(site, FUTURE_DATED, str(message.get("id") or ""), table.name)
            if site not in self._future_logged:
                self._future_logged |= {site}
                log.warning("site %s sends changes dated in central's future (%s: %s ahead of central's clock; site "
                            "clock ahead?): they never beat a central edit, and are counted in `dbsync status`",
                            site, message.get("id"), amount(verdict.future))
        return verdict

    def _central_now(self, cur: Any) -> dt.datetime:
        """Central's clock now, naive in central's time zone: read once a minute, carried on by this host's
        monotonic clock in between."""
        mono = time.monotonic()
        if self._clock is None or mono - self._clock[1] > 60:
            cur.execute("SELECT UTC_TIMESTAMP(6)")
            (utc_now,) = cur.fetchone()
            self._clock = (utc_now, mono)
        utc_now, at = self._clock
        return (utc_now + dt.timedelta(seconds=mono - at)).replace(tzinfo=dt.UTC).astimezone(
            self.convert.tz).replace(tzinfo=None)
