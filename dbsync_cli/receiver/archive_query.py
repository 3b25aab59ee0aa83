"""The archive of what was synced, read side: `dbsync archive list|show` and the console's history panels and
search page. Every filter is an indexed column (the row's uuid, its people, the message id, the time), so "the
history of this row" or "everything of this patient" is one indexed query, never a scan of bodies."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

import orjson

from dbsync_cli.i18n import _
from dbsync_cli.reason_codes import N_
from dbsync_cli.receiver import archive, reasons
from dbsync_cli.receiver.selection import SelectionError, parse_age
from dbsync_cli.receiver.state import StateError, schema_name
from dbsync_cli.sql import Sql, join, quote, sql
from dbsync_cli.wire import canonical_uuid

#: the outcomes a row can have (Outcome.outcome, and the events an operator's action adds)
OUTCOMES = (N_("applied"), N_("stale"), N_("central_owned"), N_("adopted"), N_("superseded"), N_("conflict"),
            N_("waiting"), N_("retry"), N_("error"), N_("dropped"), N_("resolved"))
DEFAULT_LIMIT = 200

_COLUMNS = sql("id, date_handled, message_id, site, table_name, op, entity_uuid, patient_uuid, patient2_uuid, outcome, "
               "reason, reason_code, reason_args, actor, part IS NOT NULL")


@dataclass
class Filters:
    """What `archive list` and the console's search page select by; None: any."""
    uuid: str | None = None
    patient: str | None = None
    site: str | None = None
    table: str | None = None
    outcome: str | None = None
    message_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = DEFAULT_LIMIT

    def where(self) -> tuple[Sql, list[Any]]:
        parts: list[Sql] = []
        args: list[Any] = []
        for column, value in (("entity_uuid", self.uuid and canonical_uuid(self.uuid)), ("site", self.site),
                              ("table_name", self.table), ("outcome", self.outcome), ("message_id", self.message_id)):
            if value:
                parts.append(sql("{} = %s", quote(column)))
                args.append(value)
        if self.patient:
            parts.append(sql("(patient_uuid = %s OR patient2_uuid = %s)"))
            args += [canonical_uuid(self.patient)] * 2
        # a time range names its days too: only those day partitions are read (no index on the time itself)
        if self.since is not None:
            parts.append(sql("day >= %s AND date_handled >= %s"))
            args += [self.since.date(), self.since]
        if self.until is not None:
            parts.append(sql("day <= %s AND date_handled < %s"))
            args += [self.until.date(), self.until]
        return (join(parts, " AND ") if parts else sql("1 = 1")), args


def parse_when(text: str) -> dt.datetime:
    """A time for --since/--until, UTC: an ISO date or date and time, or an age back from now (30m, 2h, 3d, 1w)."""
    try:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None) - parse_age(text)
    except SelectionError:
        pass
    try:
        return dt.datetime.fromisoformat(text.replace("T", " ").removesuffix("Z"))
    except ValueError:
        raise StateError(_("{text!r} is no time: give a date (2026-12-07), a date and time (2026-12-07 14:30) or an "
                           "age (30m, 2h, 3d, 1w)").format(text=text)) from None


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    (number, when, message_id, site, table, op, uuid, patient, patient2, outcome, reason, code, args, actor,
     has_body) = row
    return {"id": int(number), "date": when.isoformat(sep=" "), "message_id": message_id, "site": site,
            "table": table, "op": op, "uuid": uuid, "patient": patient, "patient2": patient2, "outcome": outcome,
            "reason": reasons.shown(code, args, reason) if reason else None, "by": actor or "receiver",
            "body": bool(has_body)}


def list_rows(conn: Any, schema: str, filters: Filters) -> list[dict[str, Any]]:
    """The newest `filters.limit` archive rows matching, in the order they were written (oldest first)."""
    s = schema_name(schema)
    where, args = filters.where()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT {} FROM {}.archive WHERE {} ORDER BY id DESC LIMIT %s", _COLUMNS, s, where),
                    [*args, max(1, filters.limit)])
        rows = [_row(r) for r in cur.fetchall()]
    conn.commit()
    return rows[::-1]


def history(conn: Any, schema: str, uuid: str, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Everything the archive holds of one row (by its uuid), oldest first: the console's "history of this row"."""
    return list_rows(conn, schema, Filters(uuid=uuid, limit=limit))


def show(conn: Any, schema: str, number: int) -> dict[str, Any]:
    """Archive row `number`, its message's wire form (decoded) and every outcome of that message, oldest first."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT {} FROM {}.archive WHERE id = %s", _COLUMNS, s), (number,))
        found = cur.fetchone()
        if found is None:
            conn.commit()
            raise StateError(_("archive entry {number} does not exist (pruned, or never written)").format(
                number=number))
        row = _row(found)
        cur.execute(sql("SELECT {} FROM {}.archive WHERE message_id = %s ORDER BY id", _COLUMNS, s),
                    (row["message_id"],))
        row["history"] = [_row(r) for r in cur.fetchall()]
        cur.execute(sql("SELECT a.part, b.body FROM {}.archive a JOIN {}.archive_blob b ON b.id = a.blob_id AND "
                        "b.day = a.day WHERE a.message_id = %s AND a.part IS NOT NULL ORDER BY a.id LIMIT 1", s, s),
                    (row["message_id"],))
        body = cur.fetchone()
    conn.commit()
    row["message"] = _decoded(body)
    return row


def _decoded(found: tuple[Any, ...] | None) -> Any:
    """The wire form as JSON (text when it is not JSON: a malformed message is archived as it came)."""
    if found is None or found[1] is None:
        return None
    raw = next(itertools.islice(archive.unpack(bytes(found[1])), int(found[0]), None), None)
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
