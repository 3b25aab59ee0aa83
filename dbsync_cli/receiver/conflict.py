"""The conflict rule: a central row is *edited centrally* when its hash differs from the hash stored when dbsync
last wrote it. An incoming change for such a row is parked when central's latest of date_changed / date_voided /
date_retired is after the incoming one's (policy "newer", the EIP rule) or always (policy "any"). A placeholder is
never a conflict. A change dated in central's future (past a tolerance: a site server whose clock runs ahead)
never beats a central edit: it is parked naming how far ahead it is dated, whatever the dates say. A row central had before any site changed it (admin, daemon, shared users and providers) is
central's own: no site changes it, whatever was resolved for another site; the change is skipped and counted
(`central_rows = "skip"`) or parked for an operator (`"park"`).

The hash is computed by the central server (SHA2 over every column, QUOTE()d so that NULL and 'NULL' differ), so
that apply records the hashes of a whole batch without reading its rows back into Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dbsync_cli import wire
from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.openmrs.rules import CHANGE_DATE_COLUMNS
from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.placeholder import is_placeholder
from dbsync_cli.receiver.state import CENTRAL_OWNER
from dbsync_cli.sql import Sql, StatementCache, join, quote, sql

HASH = "dbsync_row_hash"  # the alias under which a row read with `select_with_hash` carries its hash


@dataclass
class Verdict:
    park: bool = False
    skip: str | None = None  # why it is not applied, counted per site and table: stale | central_owned
    reason: str | None = None
    future: float | None = None  # seconds the incoming change is dated in central's future, past the tolerance


CENTRAL_ROWS = ("skip", "park")
FUTURE_DATED = "future_dated"  # the per-site count (receiver_skipped) of changes dated in central's future


def canonical(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, dt.timedelta):
        return wire.format_time(value)  # as the wire carries TIME ("07:05:00", not str()'s "7:05:00")
    if isinstance(value, dt.date | Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_STATEMENTS = StatementCache()


def hash_sql(table: SyncedTable) -> Sql:
    """SQL for the hash of a row exactly as stored at central (columns from the introspected schema only): it only
    has to tell whether the row changed since dbsync wrote it. Needs the session time zone apply uses (+00:00)."""
    def build() -> Sql:
        quoted = join(sql("QUOTE({})", quote(column)) for column in sorted(table.info.columns))
        return sql("SHA2(CONCAT_WS(',', {}), 256)", quoted)

    return _STATEMENTS.get(("hash", table.name, tuple(table.info.columns)), build)


def select_with_hash(table: SyncedTable) -> Sql:
    """`SELECT` of whole rows plus their hash (under HASH); append the WHERE clause."""
    return _STATEMENTS.get(("select", table.name, tuple(table.info.columns)),
                           lambda: sql("SELECT *, {} AS {} FROM {}", hash_sql(table), quote(HASH), quote(table.name)))


def _latest(values: dict[str, Any]) -> dt.datetime | None:
    dates = [v for c in CHANGE_DATE_COLUMNS if isinstance(v := values.get(c), dt.datetime)]
    return max(dates) if dates else None


def future_seconds(incoming: dt.datetime | None, central_now: dt.datetime | None, tolerance: float) -> float | None:
    """How many seconds `incoming` is dated after central's clock (both naive, in central's time zone) when that is
    past `tolerance`; None otherwise (or when either is unknown)."""
    if incoming is None or central_now is None:
        return None
    ahead = (incoming - central_now).total_seconds()
    return ahead if ahead > tolerance else None


def amount(seconds: float) -> str:
    """45 s, 10 min, 2.5 h, 3.0 d (stored reasons stay English)."""
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def future_reason(ahead: float, message: dict[str, Any], central_latest: dt.datetime | None,
                  incoming_latest: dt.datetime | None) -> reasons.Reason:
    """The conflict reason of a change dated in central's future, with the sender's own measurement if it sent one."""
    skew_ms = (message.get("source") or {}).get("skew_ms")
    measured = isinstance(skew_ms, int) and abs(skew_ms) >= 1000
    code = "future" + ("_at" if central_latest is not None else "") + ("_measured" if measured else "")
    extra = {"site": message.get("site"), "skew": amount(skew_ms / 1000),
             "direction": "ahead" if skew_ms >= 0 else "behind"} if isinstance(skew_ms, int) and measured else {}
    return reasons.reason(code, ahead=amount(ahead), central=central_latest, incoming=incoming_latest, **extra)


def _resent(message: dict[str, Any]) -> bool:
    """A row `verify --repair` sent again (its source names the run), not a change. A `resync` (source
    `resync-…`) is an operator's explicit request for the site's row and is judged as a change."""
    repair = (message.get("source") or {}).get("repair")
    return isinstance(repair, str) and not repair.startswith("resync-")


def judge(table: SyncedTable, current: dict[str, Any], stored_hash: str | None, message: dict[str, Any],
          values: dict[str, Any] | None, incoming_time: dt.datetime | None, policy: str, *,
          last_site: str | None = None, owner: str | None = None, central_rows: str = "skip",
          central_now: dt.datetime | None = None, tolerance: float = 120) -> Verdict:
    """Decide for an incoming change to an existing central row (read with `select_with_hash`; values: converted
    data, None for a delete; `last_site`: the site whose change dbsync applied last to this row; `owner`: the
    entity's owner in entity_hash, None when dbsync never wrote it).

    A row dbsync never wrote (and that is no placeholder) or one an operator kept as central's is central's own.

    Dates decide only between central's edits and a site's, or between two sites: two changes of the same site are
    ordered by its binlog (the order guard), so a backdated change (a clinic clock corrected backwards, an un-void
    dated in the past) of a row central never touched is applied.

    `central_now`: central's clock (naive, central's time zone); an incoming change dated more than `tolerance`
    seconds after it never beats a central edit (parked, naming the skew); every verdict says how far in the
    future it was dated (`future`), so that apply counts such changes per site."""
    central_latest = _latest(current)
    incoming_latest = _latest(values) if values is not None else incoming_time
    future = future_seconds(incoming_latest, central_now, tolerance)
    if is_placeholder(current):
        return Verdict(future=future)
    if owner is None or owner == CENTRAL_OWNER:
        reason = reasons.reason("central_own")
        return Verdict(park=True, reason=reason, future=future) if central_rows == "park" else Verdict(
            skip="central_owned", reason=reason, future=future)
    if stored_hash is None:  # dbsync deleted it, and it exists again: re-created at central since
        if values is not None and all(canonical(current.get(c)) == canonical(v) for c, v in values.items()):
            return Verdict(future=future)
        return Verdict(park=True, reason=reasons.reason("recreated"), future=future)
    if stored_hash == current[HASH]:
        other_site = last_site is not None and last_site != message.get("site")
        if other_site and values is not None and central_latest and incoming_latest and incoming_latest < central_latest:
            return Verdict(skip="stale", reason=reasons.reason("stale", incoming=incoming_latest, central=central_latest),
                           future=future)
        return Verdict(future=future)
    if future is not None:  # whatever the dates say: a clock ahead must not let a site's change win
        return Verdict(park=True, reason=future_reason(future, message, central_latest, incoming_latest),
                       future=future)
    if policy == "any":
        return Verdict(park=True, reason=reasons.reason("edited_centrally"))
    if _resent(message) and not (central_latest and incoming_latest and incoming_latest > central_latest):
        # a row verify --repair sent again is the site's row as it stands, not a change made after
        # central's edit: the dates show which is newer only when the site's is later. An undated central edit
        # (obs, concept_numeric, a hand-made fix) or one that left the dates alone is kept, parked
        return Verdict(park=True, reason=reasons.reason("edited_resent"))
    if central_latest is not None and (incoming_latest is None or central_latest > incoming_latest):
        return Verdict(park=True, reason=reasons.reason("edited_after", central=central_latest,
                                                        incoming=incoming_latest or "undated"))
    return Verdict()
