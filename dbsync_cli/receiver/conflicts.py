"""Listing, showing and resolving parked conflicts; resolving releases the messages waiting behind them."""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
from dataclasses import dataclass
from typing import Any

import orjson
import pymysql.cursors

from dbsync_cli import wire
from dbsync_cli.i18n import _
from dbsync_cli.receiver import archive, reasons, state
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.batch import Batch, now
from dbsync_cli.receiver.bookkeeping import set_owner
from dbsync_cli.receiver.conflict import canonical, select_with_hash
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.receiver.resolve import MessageError
from dbsync_cli.receiver.retry import retry_pending
from dbsync_cli.receiver.state import CENTRAL_OWNER, schema_name
from dbsync_cli.sql import Sql, placeholders, quote, sql

MODES = ("keep-central", "take-incoming", "merge", "manual")

log = logging.getLogger("dbsync.conflicts")


def who() -> str:
    """The operator, for the audit line."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


class ConflictError(Exception):
    """One line for the operator."""


@dataclass
class Conflict:
    id: int
    message_id: str
    site: str
    table: str
    uuid: str
    reason: str
    date_created: dt.datetime
    resolved: bool
    resolution: str | None
    body: bytes
    central_row: bytes | None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "site": self.site, "table": self.table, "uuid": self.uuid, "reason": self.reason,
                "date_created": self.date_created.isoformat(sep=" "), "resolved": self.resolved,
                "resolution": self.resolution, "message_id": self.message_id}


_SELECT = ("SELECT id, message_id, site, table_name, entity_uuid, reason, date_created, resolved, resolution, "
           "body, central_row, reason_code, reason_args FROM {}.receiver_conflict_queue")


def list_conflicts(conn: Any, schema: str, include_resolved: bool = False) -> list[Conflict]:
    """Conflicts of the state schema `schema` (its configured name), oldest first."""
    where = sql("") if include_resolved else sql(" WHERE resolved = 0")
    with conn.cursor() as cur:
        cur.execute(sql(_SELECT + "{} ORDER BY id", schema_name(schema), where))
        return [_conflict(row) for row in cur.fetchall()]


def central_owned_skips(conn: Any, schema: str) -> list[dict[str, Any]]:
    """Sites' changes to central's own rows that were left unchanged (receiver.central_rows = "skip"), per site and
    table: what an operator would otherwise have resolved with --keep-central, one conflict per row and site."""
    found = state.skipped_by_table(conn, schema, reason="central_owned")
    return [{"site": site, "table": table, "count": count} for (site, _reason, table), count in found.items()]


def get_conflict(conn: Any, schema: str, number: int) -> Conflict:
    with conn.cursor() as cur:
        cur.execute(sql(_SELECT + " WHERE id = %s", schema_name(schema)), (number,))
        row = cur.fetchone()
    if row is None:
        raise ConflictError(_("conflict {number} does not exist").format(number=number))
    return _conflict(row)


def _conflict(row: tuple[Any, ...]) -> Conflict:
    shown = reasons.shown(row[11], row[12], row[5])  # in the reader's language (a code), else as stored
    return Conflict(row[0], row[1], row[2], row[3], row[4], shown, row[6], bool(row[7]), row[8], bytes(row[9]),
                    bytes(row[10]) if row[10] is not None else None)


def diff(applier: Applier, conflict: Conflict) -> list[tuple[str, Any, Any, bool]]:
    """(column, central now, incoming, differs) for every incoming column; references shown as uuids."""
    message = orjson.loads(conflict.body)
    table = applier.model.synced[conflict.table]
    current = _current_row(applier, table.name, conflict.uuid) or {}
    rows = []
    for column, incoming in (message.get("data") or {}).items():
        central = current.get(column)
        ref = table.references.get(column)
        if ref is not None and ref.identity is not None and central is not None:
            central = _uuid_of(applier, ref.identity.table, central)
            shown_in = incoming.get("uuid") if isinstance(incoming, dict) else incoming
        else:
            try:
                converted = applier.convert.value(table.info.columns[column].data_type, incoming, table.name, column)
            except MessageError:
                converted = incoming
            shown_in = converted
        rows.append((column, central, shown_in, canonical(central) != canonical(shown_in)))
    return rows


def _uuid_of(applier: Applier, table: str, key: Any) -> Any:
    pk = applier.model.tables[table].primary_key[0]
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT uuid FROM {} WHERE {} = %s", quote(table), quote(pk)), (key,))
        row = cur.fetchone()
    return row[0] if row else key


def _current_row(applier: Applier, table_name: str, uuid: str) -> dict[str, Any] | None:
    table = applier.model.synced[table_name]
    ident = table.identity
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT {} FROM {} WHERE uuid = %s", quote(ident.key), quote(ident.table)), (uuid,))
        found = cur.fetchone()
    if found is None:
        return None
    with applier.conn.cursor(pymysql.cursors.DictCursor) as dcur:
        dcur.execute(sql("{} WHERE {} = %s", select_with_hash(table), quote(table.key)), (found[0],))
        return dcur.fetchone()


def _rebaseline(applier: Applier, cur: Any, conflict: Conflict) -> None:
    """Central's row (or its absence: a tombstone) becomes the sync baseline, at the parked message's source
    position, so a late redelivery older than the decision cannot undo it."""
    table = applier.model.synced[conflict.table]
    current = _current_row(applier, table.name, conflict.uuid)
    message = orjson.loads(conflict.body)
    position = SourcePosition.of(message) if isinstance(message, dict) else None
    owner = applier.owner(cur, table.name, conflict.uuid)
    central_owned = current is not None and owner in (None, CENTRAL_OWNER)
    applier.rebaseline(cur, table, conflict.uuid, conflict.site, position,
                       current[table.key] if current is not None else None,
                       owner=CENTRAL_OWNER if central_owned else None)


def entity_keys(conn: Any, s: Sql, numbers: list[int]) -> dict[int, str]:
    """Conflict → the entity its messages wait behind (the retry queue's entity_key)."""
    if not numbers:
        return {}
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, entity_key FROM {}.receiver_conflict_queue WHERE id IN ({}) AND entity_key IS "
                        "NOT NULL", s, placeholders(len(numbers))), numbers)
        found = {int(number): str(key) for number, key in cur.fetchall()}
    conn.commit()
    return found


def resolve(applier: Applier, number: int, mode: str, merge_columns: list[str] | None = None, *,
            release: bool = True) -> str:
    """Resolve conflict `number`; returns a one-line summary. Waiting messages are retried afterwards (unless
    `release` is off: a bulk resolve, receiver/bulk.py, retries once for all)."""
    if mode not in MODES:
        raise ConflictError(_("unknown resolution {mode!r}").format(mode=mode))
    s = applier.s
    conflict = get_conflict(applier.conn, applier.settings.state_schema, number)
    if conflict.resolved:
        raise ConflictError(_("conflict {number} is already resolved ({resolution})").format(
            number=number, resolution=_(conflict.resolution) if conflict.resolution else "-"))
    applier.refresh_sites()
    with applier.conn.cursor() as cur:
        if mode in ("take-incoming", "merge"):
            item = applier.parse_stored(conflict.body, conflict.message_id, conflict.site)
            if item.error is not None:
                raise ConflictError(_("conflict {number}: stored message is invalid: {error}").format(
                    number=number, error=reasons.said(item.error)))
            if mode == "merge" and (item.message or {}).get("op") == wire.DELETE:
                raise ConflictError(_("conflict {number}: --merge does not apply to a delete").format(number=number))
            batch = Batch()
            owner = applier.owner(cur, conflict.table, conflict.uuid)
            outcome = applier.apply_message(cur, item, batch, from_queue=True, force=True,
                                            only=merge_columns if mode == "merge" else None)
            if outcome.outcome != "applied":
                applier.conn.rollback()
                applier.rolled_back()  # placeholders it made are gone: the (long-lived) applier must forget them
                raise ConflictError(_("conflict {number}: applying the incoming change failed: {reason}").format(
                    number=number, reason=reasons.said(outcome.reason)))
            applier.finish_batch(cur, batch)
            if owner in (None, CENTRAL_OWNER):  # only take-incoming hands central's row to the site; merge keeps it
                set_owner(cur, s, conflict.table, conflict.uuid,
                          conflict.site if mode == "take-incoming" else CENTRAL_OWNER)
        else:
            _rebaseline(applier, cur, conflict)
        cur.execute(sql("UPDATE {}.receiver_conflict_queue SET resolved = 1, resolution = %s, date_resolved = %s "
                        "WHERE id = %s", s), (mode, now(), number))
        resolved = Batch()
        applier.archived(resolved, archive.event(conflict.message_id, "resolved", site=conflict.site,
                                                 table=conflict.table, uuid=conflict.uuid,
                                                 reason=reasons.reason("resolved_as", mode=mode),
                                                 actor=applier.actor or who()))
        applier.write_archive(cur, resolved)
    applier.conn.commit()
    log.info("conflict %d (%s %s %s from %s) resolved %s by %s", number, conflict.table, conflict.uuid,
             conflict.message_id, conflict.site, mode, applier.actor or who())
    applier.reload_blocked()
    if not release:
        return _("conflict {number} resolved ({mode})").format(number=number, mode=_(mode))
    waiting = entity_keys(applier.conn, s, [number])  # its entity's entries, whether due or not
    released = retry_pending(applier, entities=set(waiting.values()))
    done = sum(1 for o in released if o.outcome not in ("retry", "error", "waiting"))
    return _("conflict {number} resolved ({mode}); {done} waiting message(s) applied").format(
        number=number, mode=_(mode), done=done)
