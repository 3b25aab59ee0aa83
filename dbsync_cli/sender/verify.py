"""`dbsync verify` at the site: prove that central holds what this site holds, row by row, over the broker.

1. Every synced table is read once (by primary key, a page at a time) and each row digested in the canonical form
   (`openmrs.canonical`); rows are summed per uuid-prefix bucket. Only the buckets cross the broker.
2. Central answers with the buckets that differ; only their rows' digests are sent next, and central classifies
   each row (matched, missing, different, extra, placeholder, not this site's).
3. A row that differs is read again after `settle_seconds` and asked about again: a difference counts only when
   the site's and central's digests stayed the same over two rounds, so rows that change while verify runs (sync
   goes on) are re-checked, not reported. Rows still changing after `rounds` re-checks are reported as changing.
4. With `repair`, the missing and different rows are sent again as ordinary sync messages (enrich + publish,
   every receiver rule applies: a row edited at central is parked as a conflict, central's own rows are refused)
   and the extra rows are deleted at central by ordinary delete messages.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pymysql.cursors
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dbsync_cli import control, logs, wire
from dbsync_cli.broker import settings_from_config
from dbsync_cli.config import Config
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.canonical import Buckets, prefix_length, row_digest
from dbsync_cli.sender.binlog import current_position
from dbsync_cli.sender.checkpoint import record_dropped
from dbsync_cli.sender.drops import is_dropped
from dbsync_cli.sender.enrich import Enricher
from dbsync_cli.sender.publish import Publisher
from dbsync_cli.sender.settings import enrich_settings, load_model, publish_settings
from dbsync_cli.sender.verify_progress import VERIFY_MAX_AGE_SECONDS, State, VerifyProgress
from dbsync_cli.sql import Sql, chunks, placeholders, quote, sql

log = logging.getLogger("dbsync.verify")

PAGE = 1000
ROWS_PER_REQUEST = 20_000
#: what a row is, after comparison; "edited_at_central" is a `different` row central changed too
DIFFERENCE_KINDS = ("missing", "different", "extra", "placeholders", "not_owned", "changing")
#: the kinds that are differences (exit 1) and that repair mends: a row central or another site owns (the
#: built-in admin and daemon users every site has, say) is reported, never changed; a changing one is re-checked
DIFFERENCES = ("missing", "different", "extra", "placeholders")


@dataclass
class TableReport:
    site_rows: int = 0
    central_rows: int = 0
    kinds: dict[str, str] = field(default_factory=dict)  # uuid → kind, differences only
    edited: set[str] = field(default_factory=set)

    def counts(self) -> dict[str, int]:
        found = {k: 0 for k in DIFFERENCE_KINDS}
        for kind in self.kinds.values():
            found[kind] += 1
        at_site = sum(n for k, n in found.items() if k != "extra")
        return {"site_rows": self.site_rows, "central_rows": self.central_rows,
                "matched": max(0, self.site_rows - at_site), **found, "edited_at_central": len(self.edited)}


@dataclass
class VerifyReport:
    run: str
    tables: dict[str, TableReport]
    repaired: dict[str, int] = field(default_factory=dict)  # rows sent again / deletes sent
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(1 for t in self.tables.values() for k in t.kinds.values() if k in DIFFERENCES)

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run, "differences": self.differences, "seconds": round(self.seconds, 1),
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "repaired": self.repaired,
                "tables": {name: {**t.counts(), "rows": dict(sorted(t.kinds.items()))}
                           for name, t in self.tables.items()}}


class SiteRows:
    """This site's rows in canonical digests, read through the enricher (the rows as a message would carry them)."""

    def __init__(self, enricher: Enricher) -> None:
        self.enricher = enricher
        self.conn = enricher.conn

    def count(self, table: SyncedTable) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql("SELECT COUNT(*) FROM {}", quote(table.name)))
            found = cur.fetchone()
        total = int(found[0]) if found else 0
        self.conn.commit()
        return total

    def _digests(self, table: SyncedTable, rows: dict[Any, dict[str, Any]]) -> list[tuple[Any, str, str]]:
        # keyed by the canonical uuid, as central keys its rows (the server matches either case)
        return [(key, wire.canonical_uuid(uuid), row_digest(table, uuid, data))
                for key, uuid, data in self.enricher.wire_rows(table, rows)]

    def _select(self, table: SyncedTable, where: Sql, args: list[Any]) -> dict[Any, dict[str, Any]]:
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql("SELECT * FROM {} WHERE {}", quote(table.name), where), args)
            rows = {row[table.key]: row for row in cur.fetchall()}
        self.conn.commit()  # never hold a read view across pages: later rounds must see later rows
        return rows

    def pages(self, table: SyncedTable) -> Iterator[list[tuple[Any, str, str]]]:
        after: Any = None
        key = quote(table.key)
        while True:
            if after is None:
                rows = self._select(table, sql("1 = 1 ORDER BY {} LIMIT %s", key), [PAGE])
            else:
                rows = self._select(table, sql("{} > %s ORDER BY {} LIMIT %s", key, key), [after, PAGE])
            if not rows:
                return
            yield self._digests(table, rows)
            after = max(rows)

    def _uuid_filter(self, table: SyncedTable, condition: Sql) -> Sql:
        """`WHERE` text selecting rows by their identity uuid (a subclass row's is its parent's)."""
        if not table.is_subclass:
            return sql("{} {}", quote("uuid"), condition)
        ident = table.identity
        return sql("{} IN (SELECT {} FROM {} WHERE {} {})", quote(table.key), quote(ident.key), quote(ident.table),
                   quote("uuid"), condition)

    def in_prefix(self, table: SyncedTable, prefix: str) -> dict[str, str]:
        rows = self._select(table, self._uuid_filter(table, sql("LIKE %s")), [f"{prefix}%"])
        return {uuid: digest for _key, uuid, digest in self._digests(table, rows)}

    def by_uuid(self, table: SyncedTable, uuids: list[str]) -> dict[str, tuple[Any, str]]:
        found: dict[str, tuple[Any, str]] = {}
        for part in chunks(uuids):
            rows = self._select(table, self._uuid_filter(table, sql("IN ({})", placeholders(len(part)))), part)
            found.update({uuid: (key, digest) for key, uuid, digest in self._digests(table, rows)})
        return found


class Verifier:
    def __init__(self, cfg: Config, model: SchemaModel, enricher: Enricher, client: control.ControlClient,
                 *, timeout: float, rounds: int, settle_seconds: float, saved: VerifyProgress | None = None) -> None:
        self.cfg = cfg
        self.site = cfg["sender.id"]
        self.model = model
        self.rows = SiteRows(enricher)
        self.enricher = enricher
        self.client = client
        self.timeout = timeout
        self.rounds = rounds
        self.settle = settle_seconds
        self.saved = saved  # what an interrupted run finished (verify_progress.py): resumed, not done again
        self.run_id = saved.start(self.site) if saved else f"{self.site}:{uuidlib.uuid4().hex[:20]}"

    def _call(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.call(kind, {"run": self.run_id, **body}, self.timeout)

    def verify(self, tables: list[str], *, repair: bool, progress: bool) -> VerifyReport:
        started = time.monotonic()
        report = VerifyReport(self.run_id, {t: TableReport() for t in tables})
        narrowed = self._buckets(tables, report, progress, repair)
        states: dict[str, dict[str, State]] = {}
        for name in tables:
            states[name] = self._first_rows(name, narrowed[name], report.tables[name])
        repaired = {name: self.saved.repaired(name) for name in tables} if self.saved else {}
        if self.saved and self.saved.resuming:  # kept answers may be old: the rows are read and asked about again
            for name in tables:
                if states[name] and repaired.get(name) is None:
                    self._ask_again(name, states[name], report.tables[name])
        self._recheck(states, report)
        if repair:
            report.repaired = self._repair_tables(report, repaired)
        self._call("verify-done", {"state": "repaired" if repair else "finished", "tables": {
            name: {"counts": t.counts(), "differences": {**t.kinds, **{u: "edited_at_central" for u in t.edited}}}
            for name, t in report.tables.items()}})
        report.bytes_sent, report.bytes_received = self.client.bytes_sent, self.client.bytes_received
        report.seconds = time.monotonic() - started
        return report

    def _buckets(self, tables: list[str], report: VerifyReport, show: bool, repair: bool) -> dict[str, list[str]]:
        """Each table's differing buckets (narrowed), from central's answer to the table's buckets. Each table's
        buckets are sent as soon as they are computed and the answer to the one before is awaited then: central
        digests one table while the site reads the next, and each answer is saved as it comes."""
        narrowed: dict[str, list[str]] = {}
        for name in tables:
            kept = self.saved.answer(name) if self.saved else None
            if kept is not None:
                report.tables[name].site_rows, report.tables[name].central_rows = kept["site_rows"], kept["central_rows"]
                narrowed[name] = list(kept["prefixes"])
        todo = [t for t in tables if t not in narrowed]
        if self.saved and self.saved.resuming:
            log.info("verify: resuming run %s: %d of %d table(s) compared already", self.run_id,
                     len(tables) - len(todo), len(tables))
        waiting: list[tuple[str, Buckets, str]] = []
        totals = {t: self.rows.count(self.model.synced[t]) for t in todo}
        console = logs.stderr_console()
        with Progress(TextColumn("[bold]verify {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not (show and console.is_terminal)) as bar:
            task = bar.add_task("rows", total=sum(totals.values()))
            for name in todo:
                table = self.model.synced[name]
                buckets = Buckets(prefix_length(totals[name]))
                for page in self.rows.pages(table):
                    for _key, uuid, digest in page:
                        buckets.add(uuid, digest)
                    bar.advance(task, len(page))
                report.tables[name].site_rows = buckets.rows
                waiting.append((name, buckets, self.client.submit("verify-buckets", {
                    "run": self.run_id, "repair": repair, "tables": {
                        name: {"length": buckets.length, "buckets": buckets.as_wire(), "rows": buckets.rows}}})))
                if len(waiting) > 1:
                    narrowed.update(self._answered(*waiting.pop(0), report.tables))
        for waited in waiting:
            narrowed.update(self._answered(*waited, report.tables))
        return narrowed

    def _answered(self, name: str, buckets: Buckets, request: str,
                  reports: dict[str, TableReport]) -> dict[str, list[str]]:
        reply = self.client.reply(request, self.timeout)["tables"].get(name, {})
        reports[name].central_rows = int(reply.get("central_rows") or 0)
        differing = list(reply.get("differing") or [])
        narrowed = buckets.differing_subs(differing, reply.get("sub") or {}) if differing else []
        if self.saved:
            self.saved.save_answer(name, buckets.rows, reports[name].central_rows, narrowed)
        log.info("verify: %s compared: %d row(s) here, %d at central, %d bucket(s) differ", name, buckets.rows,
                 reports[name].central_rows, len(narrowed))
        return {name: narrowed}

    def _ask(self, name: str, rows: dict[str, str | None], prefixes: list[str], out: TableReport,
             states: dict[str, tuple[str, str | None, str | None]]) -> None:
        reply = self._call("verify-rows", {"tables": {name: {"prefixes": prefixes, "rows": rows}}})["tables"][name]
        central = reply.get("central") or {}
        asked = set(rows)
        for uuid in asked:
            states.pop(uuid, None)
        for uuid, kind in (reply.get("kinds") or {}).items():
            states[uuid] = (kind, rows.get(uuid), central.get(uuid))
        out.edited = (out.edited - asked - set(reply.get("kinds") or {})) | set(reply.get("edited_at_central") or [])

    def _first_rows(self, name: str, prefixes: list[str], out: TableReport) -> dict[str, State]:
        """Row digests of the differing buckets, a request per ROWS_PER_REQUEST rows (each answer saved: a
        resumed run asks only about the buckets not answered yet)."""
        table = self.model.synced[name]
        done, states, out.edited = self.saved.rows(name) if self.saved else (set(), {}, set())
        rows: dict[str, str | None] = {}
        asked: list[str] = []
        for prefix in (p for p in prefixes if p not in done):
            rows.update(self.rows.in_prefix(table, prefix))
            asked.append(prefix)
            if len(rows) >= ROWS_PER_REQUEST:
                self._ask(name, rows, asked, out, states)
                done.update(asked)
                self._save_rows(name, done, states, out)
                rows, asked = {}, []
        if asked:
            self._ask(name, rows, asked, out, states)
            done.update(asked)
            self._save_rows(name, done, states, out)
        return states

    def _save_rows(self, name: str, done: set[str], states: dict[str, State], out: TableReport) -> None:
        if self.saved:
            self.saved.save_rows(name, done, states, out.edited)

    def _ask_again(self, name: str, states: dict[str, State], out: TableReport) -> None:
        """Read a resumed table's differing rows again and ask central about them again: a kept answer is from
        before the interruption (a row reported extra then may be back at the site now)."""
        table = self.model.synced[name]
        for part in chunks(sorted(states), ROWS_PER_REQUEST):
            now = self.rows.by_uuid(table, part)
            self._ask(name, {u: now[u][1] if u in now else None for u in part}, [], out, states)

    def _recheck(self, states: dict[str, dict[str, State]], report: VerifyReport) -> None:
        """Ask again about every difference until it holds still over two rounds."""
        unsettled = {name: set(s) if self.rounds else set() for name, s in states.items()}  # 0: report at once
        for round_number in range(1, self.rounds + 1):
            if not any(unsettled.values()):
                break
            log.info("verify: %d row(s) differ; checking them again in %.0f s (round %d of %d)",
                     sum(map(len, unsettled.values())), self.settle, round_number, self.rounds)
            time.sleep(self.settle)
            for name, uuids in unsettled.items():
                if not uuids:
                    continue
                table = self.model.synced[name]
                before = {u: states[name][u] for u in uuids}
                for part in chunks(sorted(uuids), ROWS_PER_REQUEST):
                    now = self.rows.by_uuid(table, part)
                    self._ask(name, {u: now[u][1] if u in now else None for u in part}, [], report.tables[name],
                              states[name])
                unsettled[name] = {u for u in uuids if u in states[name] and states[name][u] != before[u]}
        for name, s in states.items():
            report.tables[name].kinds = {u: ("changing" if u in unsettled[name] else k) for u, (k, _m, _c) in s.items()}

    # ---- repair ----------------------------------------------------------------------------------------------
    def _repair_tables(self, report: VerifyReport, repaired: dict[str, dict[str, int] | None]) -> dict[str, int]:
        """Repair table by table, each saved once the broker confirmed its messages (a resumed run does not send
        a repaired table's rows again)."""
        totals = {"rows_sent": 0, "deletes_sent": 0}
        for name, table_report in report.tables.items():
            figures = repaired.get(name)
            if figures is None:
                mend = any(k in ("missing", "different", "placeholders", "extra") for k in table_report.kinds.values())
                figures = (self._repair(VerifyReport(report.run, {name: table_report})) if mend
                           else dict.fromkeys(totals, 0))
                if self.saved:
                    self.saved.save_repaired(name, {k: figures.get(k, 0) for k in totals})
            for k in totals:
                totals[k] += figures.get(k, 0)
        return totals

    def _repair(self, report: VerifyReport) -> dict[str, int]:
        """Send the missing, different and placeholder rows again and delete the extra ones, as sync messages."""
        position = current_position(self.enricher.conn)
        source = {"snapshot": True, "file": position.file, "pos": position.pos, "row": -1,
                  "repair": self.run_id.split(":", 1)[1]}
        events: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        sent = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        for name, table_report in report.tables.items():
            table = self.model.synced[name]
            again = sorted(u for u, k in table_report.kinds.items() if k in ("missing", "different", "placeholders"))
            for key, _digest in self.rows.by_uuid(table, again).values():
                events.append({"op": wire.READ, "db": self.model.database, "table": name, "before": None,
                               "after": {table.key: key}, "source": source})
            for uuid in sorted(u for u, k in table_report.kinds.items() if k == "extra"):
                deletes.append(wire.message(site=self.site, table=name, op=wire.DELETE, uuid=uuid,
                                            source=source, key=uuid, data=None, sent=sent))
        messages = list(self.enricher.run(events)) + deletes
        publisher = Publisher(publish_settings(self.cfg, threading.Event()), lambda _position: None,
                              on_dropped=lambda found: record_dropped(self.cfg.home, found))
        confirmed = sum(1 for _ in publisher.run(messages))
        messages = [m for m in messages if not is_dropped(m)]  # rows enrich could not send: counted, not sent
        log.info("verify --repair: %d row(s) sent again, %d delete(s) sent (%d confirmed by the broker)",
                 len(messages) - len(deletes), len(deletes), confirmed)
        return {"rows_sent": len(messages) - len(deletes), "deletes_sent": len(deletes)}


def verify(cfg: Config, tables: list[str] | None = None, *, repair: bool = False, progress: bool = True,
           timeout: float = 1800, rounds: int = 3, settle_seconds: float = 5, restart: bool = False,
           saved: VerifyProgress | None = None) -> VerifyReport:
    """Verify (and with `repair`, mend) this site's synced tables against central; the sender may run meanwhile.

    An interrupted run of the same tables (and repair) is resumed unless `restart`; `saved` is the caller's own
    progress (a catch-up's), which the caller forgets once it is done with it."""
    model = load_model(cfg)
    names = list(model.synced) if not tables else [model.table(t).name for t in tables]
    own = saved is None
    if saved is None:
        saved = VerifyProgress(cfg.home, "verify", {"tables": names, "repair": repair},
                               max_age=VERIFY_MAX_AGE_SECONDS, restart=restart)
    enricher = Enricher(enrich_settings(cfg), model)
    client = control.ControlClient(settings_from_config(cfg), cfg["broker.destination"], cfg["sender.id"])
    try:
        verifier = Verifier(cfg, model, enricher, client, timeout=timeout, rounds=rounds,
                            settle_seconds=settle_seconds, saved=saved)
        report = verifier.verify(names, repair=repair, progress=progress)
        if own:
            saved.clear()
        return report
    finally:
        client.close()
        enricher.close()
        if own:
            saved.close()
