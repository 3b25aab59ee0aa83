"""What one apply transaction collects: outcomes, written rows, handled ids, status, REST calls — all committed
together with the changes in `Applier._finish`."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import pymysql

from dbsync_cli.receiver.guard import SourcePosition

log = logging.getLogger("dbsync.apply")


@dataclass
class Outcome:
    message_id: str
    outcome: str  # applied | duplicate | stale | central_owned | conflict | waiting | retry | error
    table: str | None = None
    uuid: str | None = None
    reason: str | None = None
    #: a parked message's entry kind and cause (retry_rules), for the retry pass; not part of the record
    parked: tuple[str, str | None] | None = field(default=None, compare=False, repr=False)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and k != "parked"}


@dataclass
class ArchiveEntry:
    """One outcome of one message as the archive keeps it (receiver/archive.py writes them with the batch)."""
    message_id: str
    outcome: str
    site: str | None = None
    table: str | None = None
    op: str | None = None
    uuid: str | None = None
    reason: str | None = None
    actor: str | None = None  # who decided it (None: the receiver applying live)
    raw: bytes | None = None  # the wire form; None: an event of a message archived before (drop, resolve)
    body: str = "always"  # always | unless_kept (a queued message: its first outcome kept its body) | never
    persons: list[str] = field(default_factory=list)  # the people it names itself
    parents: list[str] = field(default_factory=list)  # the rows it hangs off, whose people are its people


@dataclass
class Batch:
    outcomes: list[Outcome] = field(default_factory=list)
    handled: list[str] = field(default_factory=list)
    digests: dict[str, bytes] = field(default_factory=dict)  # message id → what it said (Parsed.digest)
    inbox: list[int] = field(default_factory=list)
    touched: dict[tuple[str, Any], tuple[str, str]] = field(default_factory=dict)  # (table, key) → (uuid, site)
    removed: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, uuid) → site
    positions: dict[tuple[str, str], SourcePosition] = field(default_factory=dict)  # (table, uuid) → last applied
    rest: list[tuple[str, str | None, str]] = field(default_factory=list)
    sites: dict[str, tuple[int, str]] = field(default_factory=dict)  # site → (count, last message id)
    ours: set[tuple[str, str]] = field(default_factory=set)  # entities this batch wrote: no conflict with ourselves
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, uuid) → owner, for rows written here
    # (site, reason, table) → (count, last message id)
    skipped: dict[tuple[str, str, str], tuple[int, str]] = field(default_factory=dict)
    archive: list[ArchiveEntry] = field(default_factory=list)  # outcomes for the archive (empty when it is off)

    def skip(self, site: str | None, reason: str, message_id: str, table: str | None = None) -> None:
        """Count a message apply decided not to apply (duplicate, stale, central_owned): never silent."""
        key = (site or "?", reason, table or "")
        count, _ = self.skipped.get(key, (0, ""))
        self.skipped[key] = (count + 1, message_id)


_VALUE = re.compile(r"""((?:entry|value:?|string value:?)\s+)'(?:[^'\\]|\\.)*'""", re.IGNORECASE)


def failure_reason(exc: BaseException) -> str:
    """Why the server refused a change, without the values it quotes (a duplicate name, an invalid date are
    patient data): `Duplicate entry '…' for key 'uuid'`. Identifiers (column, key names) stay."""
    reason = exc.args[1] if isinstance(exc, pymysql.MySQLError) and len(exc.args) > 1 else str(exc)
    return _VALUE.sub(r"\1'…'", str(reason))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def log_outcomes(outcomes: list[Outcome]) -> None:
    """One line per kind of trouble in a batch (outcome and reason, uuids aside), with a count and an example:
    5,000 messages of a site not registered yet are one WARNING, not 5,000."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.outcome in ("retry", "error", "waiting", "central_owned"):
            key = (outcome.outcome, _UUID.sub("<uuid>", outcome.reason or ""))
            groups.setdefault(key, []).append(outcome)
    for (kind, reason), members in groups.items():
        level = logging.INFO if kind == "central_owned" else logging.WARNING
        first = members[0]
        if len(members) == 1:
            log.log(level, "message %s → %s: %s", first.message_id, kind, first.reason)
        else:
            log.log(level, "%d messages → %s: %s (first %s)", len(members), kind, reason, first.message_id)
