"""Which retry entries or conflicts a bulk action means: `--site`, `--table`, `--reason`, `--kind`, `--older-than`.

One place turns an operator's filter into SQL, so `dbsync retry again|drop`, `dbsync conflicts resolve` and the
console's filter form count and act on exactly the same rows. Filters read the queues' own columns only (never a
message body: a listing of 20,000 entries must not read 20,000 bodies). A selection confirmed by an operator
carries `upto`, the highest id counted then (an action never touches an entry that arrived after the count), and
`pin`, a fingerprint of the ids counted: an action on a set that changed since (an entry's kind or reason changed,
one resolved or dropped) is refused, nothing changed, rather than acting on what the operator did not count.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from typing import Any

from dbsync_cli.i18n import _
from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.batch import now
from dbsync_cli.receiver.state import StateError, schema_name
from dbsync_cli.sql import Sql, join, sql

QUEUES = ("retry", "conflicts")
#: receiver_retry_queue.kind
RETRY_KINDS = ("transient", "permanent", "waiting")
#: a conflict's kind, read off the start of its stored reason (conflict.py and apply.py write these)
CONFLICT_KINDS: dict[str, tuple[str, ...]] = {
    "edited": ("row edited centrally%",),
    "future": ("dated % in central's future%",),
    "central": ("central's own row%",),
    "adopting": ("adopting site %",),
    "recreated": ("row re-created at central%",),
}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class SelectionError(ValueError):
    """A filter an operator typed that cannot be used (one line naming it)."""


class SelectionChanged(SelectionError, StateError):
    """The entries a confirmed selection matches are not the ones the operator counted: nothing was changed."""


def parse_age(text: str) -> dt.timedelta:
    """'90m', '2h', '3d', '1w' → a duration."""
    found = _AGE.match(text or "")
    if not found:
        raise SelectionError(_("--older-than {value!r}: give a number and a unit, e.g. 30m, 2h, 3d, 1w").format(
            value=text))
    return dt.timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2).lower()])


def kinds(queue: str) -> tuple[str, ...]:
    return RETRY_KINDS if queue == "retry" else tuple(CONFLICT_KINDS)


@dataclass(frozen=True)
class Selection:
    """Entries of one queue matching every filter given (a filter left None matches all)."""

    queue: str = "retry"
    site: str | None = None
    table: str | None = None
    reason: str | None = None  # a substring of the stored reason, case-insensitive
    kind: str | None = None
    older_than: dt.timedelta | None = None
    upto: int | None = None  # the highest id the operator's count saw
    pin: str | None = None  # fingerprint() of the ids the operator counted

    def __post_init__(self) -> None:
        if self.queue not in QUEUES:
            raise SelectionError(f"unknown queue {self.queue!r}")
        if self.kind is not None and self.kind not in kinds(self.queue):
            raise SelectionError(_("--kind {kind!r}: choose one of {kinds}").format(
                kind=self.kind, kinds=", ".join(kinds(self.queue))))

    @property
    def filtered(self) -> bool:
        """True when at least one filter narrows the selection (a bulk action needs one)."""
        return any(v not in (None, "") for v in (self.site, self.table, self.reason, self.kind, self.older_than))

    def describe(self) -> str:
        """The filters in the words of the command line, for counts, confirmations and the audit log."""
        parts = [f"--site {self.site}" if self.site else "", f"--table {self.table}" if self.table else "",
                 f"--reason {self.reason!r}" if self.reason else "", f"--kind {self.kind}" if self.kind else "",
                 f"--older-than {_age_text(self.older_than)}" if self.older_than is not None else ""]
        return " ".join(p for p in parts if p) or _("(no filter: all)")

    def args(self) -> dict[str, Any]:
        """JSON-safe, for a request handed to the running receiver."""
        return {"queue": self.queue, "site": self.site, "table": self.table, "reason": self.reason,
                "kind": self.kind, "upto": self.upto, "pin": self.pin,
                "older_than": self.older_than.total_seconds() if self.older_than is not None else None}

    @classmethod
    def of(cls, args: dict[str, Any]) -> Selection:
        age = args.get("older_than")
        return cls(queue=str(args.get("queue") or "retry"), site=args.get("site") or None,
                   table=args.get("table") or None, reason=args.get("reason") or None,
                   kind=args.get("kind") or None, upto=args.get("upto"), pin=args.get("pin") or None,
                   older_than=dt.timedelta(seconds=float(age)) if age is not None else None)

    def where(self) -> tuple[Sql, list[Any]]:
        """The WHERE clause (with its parameters) of the queue's table."""
        clauses = [sql("resolved = 0")] if self.queue == "conflicts" else []
        params: list[Any] = []
        if self.site:
            clauses.append(sql("site = %s"))
            params.append(self.site)
        if self.table:
            clauses.append(sql("table_name = %s"))
            params.append(self.table)
        if self.reason:
            clauses.append(sql("reason LIKE %s"))
            params.append("%" + _like_escape(self.reason) + "%")
        if self.kind and self.queue == "retry":
            clauses.append(sql("kind = %s"))
            params.append(self.kind)
        elif self.kind:
            patterns = CONFLICT_KINDS[self.kind]
            clauses.append(sql("({})", join([sql("reason LIKE %s")] * len(patterns), " OR ")))
            params.extend(patterns)
        if self.older_than is not None:
            clauses.append(sql("date_created < %s"))
            params.append(now() - self.older_than)
        if self.upto is not None:
            clauses.append(sql("id <= %s"))
            params.append(int(self.upto))
        return (sql(" WHERE {}", join(clauses, " AND ")) if clauses else sql("")), params

    def table_sql(self, schema: str) -> Sql:
        return sql("{}.receiver_retry_queue" if self.queue == "retry" else "{}.receiver_conflict_queue",
                   schema_name(schema))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _age_text(age: dt.timedelta) -> str:
    seconds = age.total_seconds()
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def count(conn: Any, schema: str, selection: Selection) -> tuple[int, int | None]:
    """How many entries match, and the highest id among them (what `upto` pins once the operator confirmed)."""
    where, params = selection.where()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*), MAX(id) FROM {}{}", selection.table_sql(schema), where), params)
        found, highest = cur.fetchone() or (0, None)
    conn.commit()
    return int(found), int(highest) if highest is not None else None


def fingerprint(conn: Any, schema: str, selection: Selection) -> tuple[int, int | None, str]:
    """(count, highest id, fingerprint of the matching ids): equal fingerprints, the same set of entries."""
    where, params = selection.where()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*), MAX(id), COALESCE(SUM(id), 0), COALESCE(BIT_XOR(CRC32(id)), 0) FROM {}{}",
                        selection.table_sql(schema), where), params)
        found, highest, total, mixed = cur.fetchone() or (0, None, 0, 0)
    conn.commit()
    return int(found), int(highest) if highest is not None else None, f"{int(found)}:{int(total)}:{int(mixed)}"


def pinned(conn: Any, schema: str, selection: Selection) -> tuple[int, Selection]:
    """The count, and the selection pinned to exactly what was counted (its highest id and their fingerprint)."""
    found, highest, pin = fingerprint(conn, schema, replace(selection, upto=None, pin=None))
    return found, replace(selection, upto=highest if highest is not None else 0, pin=pin)


def still_pinned(conn: Any, schema: str, selection: Selection) -> int:
    """How many entries the selection matches now, refusing (SelectionChanged) when they are not the ones counted
    (the caller holds the applier lock: nothing else changes them while it acts)."""
    found, _highest, pin = fingerprint(conn, schema, selection)
    if selection.pin is not None and pin != selection.pin:
        counted = selection.pin.split(":", 1)[0]
        raise SelectionChanged(_("the entries selected ({filters}) changed since they were counted ({counted} then, "
                                 "{found} now): nothing was changed; count and confirm again").format(
            filters=selection.describe(), counted=counted, found=found))
    return found


def ids(conn: Any, schema: str, selection: Selection, *, after: int = 0, limit: int = 1000) -> list[int]:
    """Matching ids above `after`, oldest first, at most `limit` (callers page with `after`)."""
    where, params = selection.where()
    where = sql("{} AND id > %s", where) if where else sql(" WHERE id > %s")
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id FROM {}{} ORDER BY id LIMIT %s", selection.table_sql(schema), where),
                    [*params, after, limit])
        found = [int(row[0]) for row in cur.fetchall()]
    conn.commit()
    return found


def retry_rows(conn: Any, schema: str, selection: Selection, limit: int = 1000) -> list[dict[str, Any]]:
    """Retry entries oldest first without their bodies: what `dbsync retry list` and the console show."""
    where, params = selection.where()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, message_id, site, table_name, entity_key, reason, attempts, date_created, "
                        "date_last_attempt, kind, next_attempt, reason_code, reason_args FROM {}{} ORDER BY id LIMIT %s",
                        selection.table_sql(schema), where), [*params, limit])
        rows = cur.fetchall()
    conn.commit()
    from dbsync_cli.receiver.retry_queue import annotate_waiting  # entries waiting for a cause say so

    return annotate_waiting(conn, schema, [
        {"id": r[0], "message_id": r[1], "site": r[2], "table": r[3], "entity": r[4],
         "reason": reasons.shown(r[11], r[12], r[5]), "attempts": int(r[6]), "date_created": r[7].isoformat(sep=" "),
         "date_last_attempt": r[8].isoformat(sep=" ") if r[8] else None, "kind": r[9],
         "next_attempt": r[10].isoformat(sep=" ") if r[10] else None} for r in rows])


def conflict_rows(conn: Any, schema: str, selection: Selection, limit: int = 1000) -> list[dict[str, Any]]:
    """Unresolved conflicts oldest first without their bodies (the console's list)."""
    where, params = selection.where()
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, message_id, site, table_name, entity_uuid, reason, date_created, resolved, "
                        "resolution, reason_code, reason_args FROM {}{} ORDER BY id LIMIT %s",
                        selection.table_sql(schema), where),
                    [*params, limit])
        rows = cur.fetchall()
    conn.commit()
    return [{"id": r[0], "message_id": r[1], "site": r[2], "table": r[3], "uuid": r[4],
             "reason": reasons.shown(r[9], r[10], r[5]), "date_created": r[6].isoformat(sep=" "), "resolved": bool(r[7]), "resolution": r[8]} for r in rows]
