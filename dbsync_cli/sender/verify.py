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
   and the extra rows are deleted at central by ordinary delete messages (verify_repair.py). The repair then waits
   until central applied or parked them and checks them again: the figures it stores are the final ones.

Both sides digest only the columns both have (central names its own where the sets differ, after an upgrade done
on one side first); the others are named once per table. Rows central holds that hang off this site's rows but
no site sent are reported as "added_at_central" (receiver/verify_added.py): central's own, never a difference.
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql.cursors
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dbsync_cli import complex_obs, control, logs, wire
from dbsync_cli.broker import settings_from_config
from dbsync_cli.config import Config
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.canonical import Buckets, columns_digest, prefix_length, row_digest
from dbsync_cli.sender.enrich import Enricher
from dbsync_cli.sender.settings import enrich_settings, load_model
from dbsync_cli.sender.verify_progress import VERIFY_MAX_AGE_SECONDS, State, VerifyProgress
from dbsync_cli.sql import Sql, chunks, placeholders, quote, sql
from dbsync_cli.verify_report import DIFFERENCE_KINDS, DIFFERENCES, TableReport, VerifyReport

log = logging.getLogger("dbsync.verify")

PAGE = 1000
ROWS_PER_REQUEST = 20_000
#: the report's shapes (verify_report.py), named here too
__all__ = ["DIFFERENCE_KINDS", "DIFFERENCES", "SiteRows", "TableReport", "Verifier", "VerifyReport", "verify"]


class SiteRows:
    """This site's rows in canonical digests, read through the enricher (the rows as a message would carry them)."""

    def __init__(self, enricher: Enricher, files: Path | None = None) -> None:
        self.enricher = enricher
        self.files = files  # sender.complex_obs_dir: an obs's digest covers its file's
        self.conn = enricher.conn
        self.columns: dict[str, list[str]] = {}  # table → the columns both sides have, where central lacks some

    def count(self, table: SyncedTable) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql("SELECT COUNT(*) FROM {}", quote(table.name)))
            found = cur.fetchone()
        total = int(found[0]) if found else 0
        self.conn.commit()
        return total

    def _digests(self, table: SyncedTable, rows: dict[Any, dict[str, Any]]) -> list[tuple[Any, str, str]]:
        # keyed by the canonical uuid, as central keys its rows (the server matches either case)
        columns = self.columns.get(table.name)
        files = self.files if table.name == complex_obs.TABLE else None
        return [(key, wire.canonical_uuid(uuid), row_digest(table, uuid, data, columns, complex_obs.digest_for_verify(
            files, data.get(complex_obs.COLUMN))))
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
        self.rows = SiteRows(enricher, complex_obs.folder(cfg["sender.complex_obs_dir"]))
        self.enricher = enricher
        self.client = client
        self.timeout = timeout
        self.rounds = rounds
        self.settle = settle_seconds
        self.saved = saved  # what an interrupted run finished (verify_progress.py): resumed, not done again
        self.run_id = saved.start(self.site) if saved else f"{self.site}:{uuidlib.uuid4().hex[:20]}"
        self.central_only: dict[str, list[str]] = {}

    def call(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.call(kind, {"run": self.run_id, **body}, self.timeout)

    def verify(self, tables: list[str], *, repair: bool, progress: bool,
               confirm: Callable[[dict[str, int]], bool] | None = None) -> VerifyReport:
        """Compare (and with `repair`, mend) these tables; `confirm` is asked before rows added at central are
        deleted (none: never deleted)."""
        from dbsync_cli.sender.verify_repair import Repair

        started = time.monotonic()
        report = VerifyReport(self.run_id, {t: TableReport() for t in tables})
        self._agree_columns(tables, report, repair)
        narrowed, added = self._buckets(tables, report, progress, repair)
        states: dict[str, dict[str, State]] = {}
        for name in tables:
            states[name] = self._first_rows(name, narrowed[name], report.tables[name])
        if self.saved and self.saved.resuming:  # kept answers may be old: the rows are read and asked about again
            for name in tables:
                if states[name]:
                    self._ask_again(name, states[name], report.tables[name])
        self._recheck(states, report)
        for name, uuids in added.items():
            report.tables[name].kinds.update({u: "added_at_central" for u in uuids})
        if repair:
            report.found = {name: t.counts() for name, t in report.tables.items()}
            report.repaired = Repair(self, report).run(confirm)
        self.call("verify-done", {"state": "repaired" if repair else "finished", "tables": {
            name: {"counts": t.counts(), "differences": {**t.kinds, **{u: "edited_at_central" for u in t.edited}},
                   "columns": {"site_only": t.site_only, "central_only": t.central_only}}
            for name, t in report.tables.items()}})
        report.bytes_sent, report.bytes_received = self.client.bytes_sent, self.client.bytes_received
        report.seconds = time.monotonic() - started
        return report

    def _agree_columns(self, tables: list[str], report: VerifyReport, repair: bool) -> None:
        """Ask central which tables it holds with other columns (a digest of each table's set goes, only central's
        differing lists come back), so that both sides digest only the columns both have."""
        digests = {name: columns_digest(self.model.synced[name].data_columns) for name in tables}
        answer = self.call("verify-buckets", {"repair": repair, "tables": {}, "columns": digests})
        for name, theirs in (answer.get("columns") or {}).items():
            if name not in report.tables or not isinstance(theirs, list):
                continue
            mine = self.model.synced[name].data_columns
            out = report.tables[name]
            out.site_only = sorted(set(mine) - set(theirs))
            out.central_only = sorted(set(theirs) - set(mine))
            self.rows.columns[name] = sorted(set(mine) & set(theirs))
            self.central_only[name] = out.central_only
            log.warning("verify: %s compared without the column(s) only one side has: %s", name, ", ".join(
                [f"{c} (only at the site)" for c in out.site_only] + [f"{c} (only at central)" for c in out.central_only]))

    def omit(self, name: str) -> dict[str, Any]:
        """What a request says of a table whose columns differ: central's columns to leave out."""
        return {"omit": self.central_only[name]} if self.central_only.get(name) else {}

    def _buckets(self, tables: list[str], report: VerifyReport, show: bool,
                 repair: bool) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Each table's differing buckets (narrowed), from central's answer to the table's buckets, and the rows
        central added under the site's rows. Each table's buckets are sent as soon as they are computed and the
        answer to the one before is awaited then: central digests one table while the site reads the next, and
        each answer is saved as it comes."""
        narrowed: dict[str, list[str]] = {}
        added: dict[str, list[str]] = {}
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
                        name: {"length": buckets.length, "buckets": buckets.as_wire(), "rows": buckets.rows,
                               **self.omit(name)}}})))
                if len(waiting) > 1:
                    narrowed.update(self._answered(*waiting.pop(0), report.tables, added))
        for waited in waiting:
            narrowed.update(self._answered(*waited, report.tables, added))
        return narrowed, added

    def _answered(self, name: str, buckets: Buckets, request: str, reports: dict[str, TableReport],
                  added: dict[str, list[str]]) -> dict[str, list[str]]:
        reply = self.client.reply(request, self.timeout)["tables"].get(name, {})
        reports[name].central_rows = int(reply.get("central_rows") or 0)
        added[name] = [wire.canonical_uuid(u) for u in reply.get("added") or [] if isinstance(u, str)]
        differing = list(reply.get("differing") or [])
        narrowed = buckets.differing_subs(differing, reply.get("sub") or {}) if differing else []
        if self.saved:
            self.saved.save_answer(name, buckets.rows, reports[name].central_rows, narrowed)
        log.info("verify: %s compared: %d row(s) here, %d at central, %d bucket(s) differ", name, buckets.rows,
                 reports[name].central_rows, len(narrowed))
        return {name: narrowed}

    def ask(self, name: str, rows: dict[str, str | None], prefixes: list[str], out: TableReport,
            states: dict[str, tuple[str, str | None, str | None]], *, queued: bool = False) -> dict[str, Any]:
        """Central's verdict on these rows (or the rows of these prefixes), kept in `states` and `out.edited`;
        with `queued`, the answer names the rows a conflict or the retry queue holds at central too."""
        body = {"prefixes": prefixes, "rows": rows, **self.omit(name), **({"queued": True} if queued else {})}
        reply = self.call("verify-rows", {"tables": {name: body}})["tables"][name]
        central = reply.get("central") or {}
        asked = set(rows)
        for uuid in asked:
            states.pop(uuid, None)
        for uuid, kind in (reply.get("kinds") or {}).items():
            states[uuid] = (kind, rows.get(uuid), central.get(uuid))
        out.edited = (out.edited - asked - set(reply.get("kinds") or {})) | set(reply.get("edited_at_central") or [])
        return dict(reply)

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
                self.ask(name, rows, asked, out, states)
                done.update(asked)
                self._save_rows(name, done, states, out)
                rows, asked = {}, []
        if asked:
            self.ask(name, rows, asked, out, states)
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
            self.ask(name, {u: now[u][1] if u in now else None for u in part}, [], out, states)

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
                    self.ask(name, {u: now[u][1] if u in now else None for u in part}, [], report.tables[name],
                              states[name])
                unsettled[name] = {u for u in uuids if u in states[name] and states[name][u] != before[u]}
        for name, s in states.items():
            report.tables[name].kinds = {u: ("changing" if u in unsettled[name] else k) for u, (k, _m, _c) in s.items()}


def verify(cfg: Config, tables: list[str] | None = None, *, repair: bool = False, progress: bool = True,
           timeout: float = 1800, rounds: int = 3, settle_seconds: float = 5,
           confirm: Callable[[dict[str, int]], bool] | None = None, restart: bool = False,
           saved: VerifyProgress | None = None) -> VerifyReport:
    """Verify (and with `repair`, mend) this site's synced tables against central; the sender may run meanwhile.
    `confirm(counts per table)` decides whether rows added at central are deleted (none: they are not).

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
        report = verifier.verify(names, repair=repair, progress=progress, confirm=confirm)
        if own:
            saved.clear()
        return report
    finally:
        client.close()
        enricher.close()
        if own:
            saved.close()
