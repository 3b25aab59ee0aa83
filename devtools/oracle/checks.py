"""The four invariants of a soak run, each proved set-based (one query per table and database) and printed as one
verdict line: ``ok`` or ``VIOLATED: <count> — <first examples by table/uuid>``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.oracle.db import DbConn, fetch, q
from devtools.oracle.rows import Reader, Row

#: receiver skip reasons that never explain a difference of a site's own row: a redelivery, an older change, an
#: adopted equal row, and changes to central's own rows (those are invariant 3's, compared to the snapshot)
#: and the sender's drops of a change whose row is gone from the site since (nothing of it is left to send), and
#: the copies of a delivery the inbox dropped while the first waited there (duplicate_delivery)
BENIGN_SKIPS = frozenset({"duplicate", "duplicate_delivery", "stale", "adopted", "central_owned", "row_deleted"})
EXAMPLES = 5


@dataclass
class Verdict:
    number: int
    name: str
    violations: list[str] = field(default_factory=list)
    count: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.count == 0

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.violations) < EXAMPLES:
            self.violations.append(example)

    def line(self) -> str:
        head = f"invariant {self.number} ({self.name}): "
        if self.ok:
            return head + "ok" + (f" ({self.note})" if self.note else "")
        return head + f"VIOLATED: {self.count} — " + "; ".join(self.violations)


@dataclass
class OracleInput:
    seed: int
    sites: dict[str, DbConn]
    site_timezones: dict[str, str]
    central: DbConn
    central_timezone: str
    state_schema: str
    tables: list[str]
    snapshot: Path  # snapshot_central_rows() taken before the run
    journal: Path | None = None  # the central editors' NDJSON journal
    #: NDJSON of the uuids the hostile frames carried (sent with a real site's credentials: to central they are that
    #: site's writes, so rows of those uuids are written by a site user, not by nobody)
    hostile: Path | None = None
    sender_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # `dbsync status --json` per site
    receiver_status: dict[str, Any] = field(default_factory=dict)


# ---- reading the evidence -------------------------------------------------------------------------------------

def hostile_uuids(path: Path | None) -> set[str]:
    """The uuids (lower case) the hostile frames carried, from the soak's NDJSON list of them."""
    if path is None or not path.exists():
        return set()
    return {str(json.loads(line)["uuid"]).lower() for line in path.read_text().splitlines() if line.strip()}


def journal_entries(path: Path | None) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(table, uuid) the central editors changed, and those they created, from their NDJSON journal."""
    edited: set[tuple[str, str]] = set()
    created: set[tuple[str, str]] = set()
    if path is None or not path.exists():
        return edited, created
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        table, uuid = entry.get("table"), entry.get("uuid")
        if not table or not uuid:
            continue
        key = (str(table), str(uuid).lower())
        edited.add(key)
        action = str(entry.get("action") or entry.get("op") or entry.get("kind") or "").lower()
        if action in ("create", "created", "insert", "c"):
            created.add(key)
    return edited, created


def _ints(value: Any) -> int:
    """Sum of the counts in a status fragment: an int, or a (nested) mapping of reason → count."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return sum(_ints(v) for k, v in value.items() if k not in BENIGN_SKIPS)
    return 0


def _data(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("data", status) if isinstance(status.get("data"), dict) else status


def receiver_counts(status: dict[str, Any]) -> dict[str, int]:
    """Per site: the receiver status's per-reason counts that can leave a row different (skips other than benign
    ones, retry queue entries)."""
    data = _data(status)
    out: dict[str, int] = {}
    for site in data.get("sites") or []:
        out[site.get("identifier")] = _ints(site.get("skipped") or {})
    retry = data.get("retry_queue") or {}
    by_site = retry.get("by_site") or {}
    if isinstance(by_site, dict):
        for site, n in by_site.items():
            out[site] = out.get(site, 0) + _ints(n)
    elif isinstance(by_site, list):
        for item in by_site:
            out[item.get("site")] = out.get(item.get("site"), 0) + _ints(item.get("count") or item.get("size") or 0)
    return out


def sender_counts(status: dict[str, Any]) -> int:
    """What a sender's status says it did not send: refused re-sync requests, transactions passed at a failover,
    and any per-reason `dropped`/`skipped`/`refused` counts."""
    data = _data(status)
    total = 0
    for key in ("dropped", "skipped", "refused", "not_sent"):
        total += _ints(data.get(key) or 0)
    failover = data.get("failover") or {}
    if isinstance(failover, dict):
        total += _ints(failover.get("not_sent") or 0)
    refused = data.get("resync_refused") or {}
    if isinstance(refused, dict):
        total += _ints(refused.get("count") or 0)
    return total


# ---- the oracle -----------------------------------------------------------------------------------------------

class Oracle:
    def __init__(self, inp: OracleInput, say: Callable[[str], None] = print) -> None:
        self.inp, self.say = inp, say
        self.hostile: set[str] = set()

    def _state(self) -> dict[str, Any]:
        s = q(self.inp.state_schema)
        conn = self.inp.central.connect()
        try:
            conflicts = {(str(t), str(u).lower()): (str(site), int(r)) for t, u, site, r in fetch(
                conn, f"SELECT table_name, entity_uuid, site, resolved FROM {s}.receiver_conflict_queue")}
            conflict_uuids = {u for (_t, u) in conflicts}
            retry: dict[str, tuple[str, str]] = {}
            for site, key, reason in fetch(conn, f"SELECT site, entity_key, reason FROM {s}.receiver_retry_queue"):
                if key and ":" in key:
                    retry[str(key).split(":", 1)[1].lower()] = (str(site), str(reason)[:80])
            owners = {(str(t), str(u).lower()): o for t, u, o in fetch(
                conn, f"SELECT table_name, entity_uuid, owner FROM {s}.entity_hash WHERE hash IS NOT NULL")}
            skips: dict[str, int] = {}
            for site, reason, n in fetch(conn, f"SELECT site, reason, SUM(count) FROM {s}.receiver_skipped "
                                               "GROUP BY site, reason"):
                if reason not in BENIGN_SKIPS:
                    skips[str(site)] = skips.get(str(site), 0) + int(n)
            per_site_conflicts: dict[str, int] = {}
            for site, n in fetch(conn, f"SELECT site, COUNT(*) FROM {s}.receiver_conflict_queue WHERE resolved = 0 "
                                       "GROUP BY site"):
                per_site_conflicts[str(site)] = int(n)
        finally:
            conn.close()
        return {"conflicts": conflict_uuids, "retry": retry, "owners": owners, "skips": skips,
                "site_conflicts": per_site_conflicts}

    def run(self) -> list[Verdict]:
        inp = self.inp
        self.say(f"seed {inp.seed}")
        baseline: dict[str, dict[str, Row]] = json.loads(inp.snapshot.read_text()) if inp.snapshot.exists() else {}
        edited, created = journal_entries(inp.journal)
        self.hostile = hostile_uuids(inp.hostile)
        state = self._state()
        central = Reader(inp.central, inp.central_timezone)
        try:
            central_rows = {t: central.rows(t) for t in inp.tables}
            duplicates = {t: central.duplicate_uuids(t) for t in inp.tables}
            placeholders = self._placeholders(central, inp.tables)
        finally:
            central.close()
        site_rows: dict[str, dict[str, dict[str, Row]]] = {}
        for site, db in inp.sites.items():
            reader = Reader(db, inp.site_timezones.get(site, "UTC"), inp.central_timezone)
            try:
                site_rows[site] = {t: reader.rows(t, site=site) for t in inp.tables}
            finally:
                reader.close()
        verdicts = [
            self.site_rows_at_central(site_rows, central_rows, baseline, edited, state),
            self.nothing_unwritten(site_rows, central_rows, baseline, created, state, duplicates, placeholders),
            self.central_rows_by_central(site_rows, central_rows, baseline, edited, state),
            self.all_counted(site_rows, central_rows, baseline, edited, state),
        ]
        for v in verdicts:
            self.say(v.line())
        return verdicts

    @staticmethod
    def _placeholders(central: Reader, tables: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for t in tables:
            info = central.catalog.tables.get(t)
            if info is None or not info.has_uuid:
                continue
            for column in ("void_reason", "retire_reason"):
                if column in info.columns:
                    out |= {str(u).lower() for (u,) in fetch(
                        central.conn, f"SELECT `uuid` FROM {q(t)} WHERE {q(column)} LIKE '[placeholder%'")}
        return out

    # 1 ---------------------------------------------------------------------------------------------------------
    def _unequal(self, site_rows: dict[str, dict[str, dict[str, Row]]], central_rows: dict[str, dict[str, Row]],
                 baseline: dict[str, dict[str, Row]], edited: set[tuple[str, str]]) \
            -> dict[str, list[tuple[str, str, str]]]:
        """Per site: (table, uuid, what differs) of its own rows not equal at central, central edits left out."""
        out: dict[str, list[tuple[str, str, str]]] = {}
        for site, tables in site_rows.items():
            diffs: list[tuple[str, str, str]] = []
            for table, rows in tables.items():
                base = baseline.get(table, {})
                at_central = central_rows.get(table, {})
                for uuid, row in rows.items():
                    if uuid in base or (table, uuid) in edited:
                        continue
                    have = at_central.get(uuid)
                    if have == row:
                        continue
                    if have is None:
                        what = "missing at central"
                    else:
                        cols = [c for c in row if row.get(c) != have.get(c)]
                        what = ", ".join(f"{c}: site {row.get(c)!r} central {have.get(c)!r}" for c in cols[:3])
                    diffs.append((table, uuid, what))
            out[site] = diffs
        return out

    def site_rows_at_central(self, site_rows: Any, central_rows: Any, baseline: Any, edited: Any,
                             state: dict[str, Any]) -> Verdict:
        v = Verdict(1, "every site row is at central, column by column")
        unequal = self._unequal(site_rows, central_rows, baseline, edited)
        explained = 0
        by_skip = 0
        for site, diffs in unequal.items():
            left = []
            for table, uuid, what in diffs:
                if uuid in state["conflicts"] or uuid in state["retry"]:
                    explained += 1
                else:
                    left.append((table, uuid, what))
            budget = state["skips"].get(site, 0)
            if len(left) <= budget:
                by_skip += len(left)
                continue
            for table, uuid, what in left:
                v.add(f"{site} {table} {uuid}: {what}")
        v.note = (f"{sum(len(t[x]) for t in site_rows.values() for x in t):,} site rows; {explained} differences "
                  f"explained by a conflict/retry entry, {by_skip} by counted skips")
        return v

    # 2 ---------------------------------------------------------------------------------------------------------
    def nothing_unwritten(self, site_rows: Any, central_rows: dict[str, dict[str, Row]], baseline: Any,
                          created: set[tuple[str, str]], state: dict[str, Any], duplicates: dict[str, list[Any]],
                          placeholders: set[str]) -> Verdict:
        v = Verdict(2, "nothing at central that no site or central user wrote; uuids unique")
        hostile = 0
        for table, rows in central_rows.items():
            known: set[str] = set(baseline.get(table, {}))
            for tables in site_rows.values():
                known |= set(tables.get(table, {}))
            for uuid in rows:
                if uuid in known or (table, uuid) in created:
                    continue
                if uuid in self.hostile:  # a hostile frame's valid part, sent with a site's own login
                    hostile += 1
                    continue
                if uuid in state["conflicts"] or uuid in state["retry"]:
                    continue
                kind = ("a placeholder never filled (or a filler left behind)" if uuid in placeholders
                        else "in no site, not central's own")
                v.add(f"{table} {uuid}: {kind}")
        for table, dups in duplicates.items():
            for uuid, n in dups:
                v.add(f"{table} {uuid}: {n} rows share this uuid")
        if hostile:
            v.note = f"{hostile} row(s) written by hostile frames with a site's own login"
        return v

    # 3 ---------------------------------------------------------------------------------------------------------
    def central_rows_by_central(self, site_rows: Any, central_rows: dict[str, dict[str, Row]],
                                baseline: dict[str, dict[str, Row]], edited: set[tuple[str, str]],
                                state: dict[str, Any]) -> Verdict:
        v = Verdict(3, "central's own rows changed by central alone; no site changed another's")
        for table, rows in baseline.items():
            now = central_rows.get(table, {})
            for uuid, before in rows.items():
                if (table, uuid) in edited:
                    continue
                after = now.get(uuid)
                if after is None:
                    v.add(f"{table} {uuid}: central's own row was deleted")
                elif after != before:
                    cols = [c for c in before if before.get(c) != after.get(c)]
                    v.add(f"{table} {uuid}: central's own row changed ("
                          + ", ".join(f"{c}: {before.get(c)!r} → {after.get(c)!r}" for c in cols[:3]) + ")")
        sites = set(site_rows)
        for (table, uuid), owner in state["owners"].items():
            if owner not in sites or uuid in baseline.get(table, {}):
                continue
            holders = [s for s in sites if uuid in site_rows[s].get(table, {})]
            if holders and owner not in holders:
                v.add(f"{table} {uuid}: owned by {owner} at central but a row of {', '.join(holders)}")
        return v

    # 4 ---------------------------------------------------------------------------------------------------------
    def all_counted(self, site_rows: Any, central_rows: Any, baseline: Any, edited: Any,
                    state: dict[str, Any]) -> Verdict:
        v = Verdict(4, "every row not equal at central is counted with a reason")
        unequal = self._unequal(site_rows, central_rows, baseline, edited)
        received = receiver_counts(self.inp.receiver_status)
        total_counted = 0
        for site, diffs in unequal.items():
            counted = (received.get(site, 0) + state["site_conflicts"].get(site, 0)
                       + sender_counts(self.inp.sender_status.get(site, {})))
            total_counted += counted
            if len(diffs) > counted:
                table, uuid, what = diffs[0]
                v.add(f"{site}: {len(diffs)} rows not equal at central but the statuses count {counted} "
                      f"(first: {table} {uuid}: {what})")
        v.note = f"statuses count {total_counted} rows/messages not applied"
        return v
