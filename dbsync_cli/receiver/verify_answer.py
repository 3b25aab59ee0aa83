"""`dbsync import REQUEST --answer-to ANSWER` at central: a site's verify question by file (sender/verify_file.py).

The question holds every row digest of the site, grouped by bucket, so central answers it in one go with the
requests online verify makes (`VerifyHandler`: the same rules, the same stored result): the buckets first (which
registers the run and finds the rows added at central), then the rows of every bucket the site has, then the
buckets only central has (their rows of the site are extra). The answer names each difference with the site's
digest at the time of the question, so the site can tell a row that changed since (`changing`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbsync_cli import bundle, complex_obs, signing, wire
from dbsync_cli.config import Config
from dbsync_cli.receiver.bundle_import import checked
from dbsync_cli.receiver.run import load_model
from dbsync_cli.receiver.verify import RequestError, VerifyHandler
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.verify_report import TableReport

log = logging.getLogger("dbsync.verify")

MAX_FRAME_JSON = 256 * 1024 * 1024
ROWS_PER_FRAME = 50_000  # differences per frame of an answer


@dataclass
class _Table:
    """One table of the question, as it is answered."""

    name: str
    omit: list[str]
    site_only: list[str]
    compared: list[str]  # the columns both sides have: the site's next question digests these
    differing: list[str]
    report: TableReport
    site_digests: dict[str, str | None] = field(default_factory=dict)
    covered: set[str] = field(default_factory=set)


def answer(cfg: Config, question: Path, answer_path: Path) -> dict[str, Any]:
    """Answer a site's question; returns the figures per table (and writes `answer_path`)."""
    try:
        return _answer(cfg, question, answer_path)
    except RequestError as exc:  # a question central will not answer (its shape): one line, like a damaged file
        raise bundle.BundleError(f"{question}: {exc}") from None


def _answer(cfg: Config, question: Path, answer_path: Path) -> dict[str, Any]:
    with checked(cfg, question, "verify-request") as (found, private, site, conn):
        model = load_model(cfg)
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
        handler = VerifyHandler(conn, cfg["central_db.state_schema"], model, parse_timezone(cfg["receiver.timezone"]),
                                complex_obs.folder(cfg["receiver.complex_obs_dir"]))
        run = str(found.get("run"))
        tables: dict[str, _Table] = {}
        current: _Table | None = None
        for frame in bundle.frames(private, MAX_FRAME_JSON):
            body = bundle.json_of(frame, MAX_FRAME_JSON, question)
            name = body.get("table") if isinstance(body, dict) else None
            if not isinstance(name, str) or name not in model.synced:
                continue  # a table central does not sync: nothing to compare
            if "buckets" in body:
                if current is not None:
                    _finish(handler, run, site.identifier, current)
                current = tables[name] = _head(handler, run, site.identifier, model.synced[name].data_columns, body)
            elif current is not None and current.name == name and not current.site_only:
                _rows(handler, run, site.identifier, current, body)
        if current is not None:
            _finish(handler, run, site.identifier, current)
        handler.handle("verify-done", {"run": run, "state": "finished", "tables": {
            t.name: {"counts": t.report.counts(), "differences": {
                **t.report.kinds, **{u: "edited_at_central" for u in t.report.edited}},
                "columns": {"site_only": t.site_only, "central_only": t.report.central_only}}
            for t in tables.values()}}, site.identifier)
    _write(cfg, answer_path, found, tables)
    return {"run": run, "site": site.identifier, "file": str(answer_path), "tables": {
        t.name: t.report.counts() for t in tables.values()}}


def _head(handler: VerifyHandler, run: str, site: str, central_columns: list[str], body: dict[str, Any]) -> _Table:
    """A table's buckets: the run registered, the buckets that differ, the rows added at central."""
    name = str(body["table"])
    site_columns = [c for c in body.get("columns") or [] if isinstance(c, str)]
    omit = sorted(set(central_columns) - set(site_columns))
    site_only = sorted(set(site_columns) - set(central_columns))
    reply = handler.handle("verify-buckets", {"run": run, "repair": False, "tables": {name: {
        "length": body.get("length"), "buckets": body.get("buckets"), "rows": body.get("rows"),
        **({"omit": omit} if omit else {})}}}, site)["tables"][name]
    report = TableReport(site_rows=int(body.get("rows") or 0), central_rows=int(reply.get("central_rows") or 0),
                         site_only=site_only, central_only=omit)
    report.kinds.update({wire.canonical_uuid(u): "added_at_central" for u in reply.get("added") or []})
    compared = sorted(set(site_columns) & set(central_columns))
    if site_only:  # central cannot digest what it lacks: not compared now (not stored as matched either)
        report.site_rows = 0
        log.warning("verify by file: %s: the site has column(s) central lacks (%s): compared by the next question",
                    name, ", ".join(site_only))
    return _Table(name, omit, site_only, compared, list(reply.get("differing") or []), report)


def _rows(handler: VerifyHandler, run: str, site: str, table: _Table, body: dict[str, Any]) -> None:
    prefixes = [p for p in body.get("prefixes") or [] if isinstance(p, str)]
    rows = body.get("rows")
    _ask(handler, run, site, table, prefixes, rows if isinstance(rows, dict) else {})


def _ask(handler: VerifyHandler, run: str, site: str, table: _Table, prefixes: list[str],
         rows: dict[str, Any]) -> None:
    reply = handler.handle("verify-rows", {"run": run, "tables": {table.name: {
        "prefixes": prefixes, "rows": rows, **({"omit": table.omit} if table.omit else {})}}}, site)["tables"][
        table.name]
    table.covered.update(prefixes)
    sent = {wire.canonical_uuid(u): d for u, d in rows.items()}
    for uuid, kind in (reply.get("kinds") or {}).items():
        key = wire.canonical_uuid(uuid)
        table.report.kinds[key] = kind
        table.site_digests[key] = sent.get(key)
    table.report.edited |= {wire.canonical_uuid(u) for u in reply.get("edited_at_central") or []}


def _finish(handler: VerifyHandler, run: str, site: str, table: _Table) -> None:
    """The buckets only central has: its rows of the site there are extra."""
    if table.site_only:
        return
    uncovered = [p for p in table.differing if p not in table.covered]
    for start in range(0, len(uncovered), 256):
        _ask(handler, run, site, table, uncovered[start:start + 256], {})


def _write(cfg: Config, path: Path, question: dict[str, Any], tables: dict[str, _Table]) -> None:
    part = path.with_name(path.name + ".part")
    writer = bundle.BundleWriter(part)
    try:
        for t in tables.values():
            report = t.report
            kinds = sorted(report.kinds.items())
            for start in range(0, max(1, len(kinds)), ROWS_PER_FRAME):  # a table's answer in frames of bounded size
                chunk = dict(kinds[start:start + ROWS_PER_FRAME])
                writer.frame(*bundle.json_frame({
                    "table": t.name, "site_rows": report.site_rows, "central_rows": report.central_rows,
                    "site_only": t.site_only, "central_only": report.central_only, "compared": t.compared,
                    "kinds": chunk, "site": {u: t.site_digests.get(u) for u in chunk if u in t.site_digests},
                    "edited": sorted(u for u in report.edited if u in chunk)}, t.name))
        writer.finish(signing.site_key(cfg.home), {
            "kind": "verify-answer", "site": question.get("site"), "run": question.get("run"),
            "bundle": f"{question.get('run')}:answer", "created": dt.datetime.now(dt.UTC).isoformat(
                timespec="seconds")})
    except BaseException:
        writer.close()
        raise
    part.replace(path)
