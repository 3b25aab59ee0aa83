"""Verify and repair by file, for a clinic with no network (sync by file: sender/export.py, receiver/verify_answer.py).

Online, verify is a conversation (buckets, then the rows of the buckets that differ, then checks again); by file a
round trip takes days, so it is one question and one answer:

1. `dbsync verify --to REQUEST` at the site: every synced table's bucket sums and every row's digest, grouped by
   bucket, signed with the site's key. The digests cover the columns both sides had at the last answer (central's
   column lists come back with it; until then the site's own).
2. `dbsync import REQUEST --answer-to ANSWER` at central: classifies every row as online verify does (missing,
   different, extra, placeholder, not the site's, edited at central, added at central), stores the result (`verify
   --status`, `dbsync status`) and writes the answer.
3. `dbsync verify --from ANSWER [--repair --to BUNDLE]` at the site: the report; a row that changed at the site since
   the question is reported as changing (the next export carries it). With --repair, the missing, different and
   placeholder rows and deletes of the extra ones go into a signed bundle of ordinary sync messages for `dbsync
   import`, where every receiver rule applies (a row edited at central is parked, central's rows are refused). Rows
   added at central are reported only: deleting central's own rows takes an online `verify --repair --delete-added`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid as uuidlib
from pathlib import Path
from typing import Any

from dbsync_cli import bundle, complex_obs, signing, wire
from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.openmrs.canonical import Buckets, prefix_length
from dbsync_cli.sender.checkpoint import CheckpointStore
from dbsync_cli.sender.enrich import Enricher
from dbsync_cli.sender.export import part_path, write_messages
from dbsync_cli.sender.settings import enrich_settings, load_model
from dbsync_cli.sender.verify import ROWS_PER_REQUEST, SiteRows, Verifier
from dbsync_cli.sender.verify_repair import Repair
from dbsync_cli.verify_report import DIFFERENCE_KINDS, TableReport, VerifyReport

log = logging.getLogger("dbsync.verify")

VERIFY_BY_FILE = "verify_by_file"  # the last question asked by file, and the columns both sides had at the last answer
KINDS = frozenset(DIFFERENCE_KINDS)
#: what a frame of an answer may inflate to
MAX_FRAME_JSON = 256 * 1024 * 1024


def request(cfg: Config, path: Path) -> dict[str, Any]:
    """Write the question (step 1); returns its run id, tables and rows."""
    model = load_model(cfg)
    enricher = Enricher(enrich_settings(cfg), model)
    store = CheckpointStore(cfg.home)
    try:
        rows = SiteRows(enricher, complex_obs.folder(cfg["sender.complex_obs_dir"]))
        asked = store.load(VERIFY_BY_FILE) or {}
        rows.columns.update({t: c for t, c in (asked.get("columns") or {}).items() if t in model.synced})
        run = f"{cfg['sender.id']}:{uuidlib.uuid4().hex[:20]}"
        part = part_path(path.resolve())
        writer = bundle.BundleWriter(part)
        counts: dict[str, int] = {}
        try:
            for name, table in model.synced.items():
                buckets = Buckets(prefix_length(rows.count(table)))
                for page in rows.pages(table):
                    for _key, uuid, digest in page:
                        buckets.add(uuid, digest)
                writer.frame(*bundle.json_frame({"table": name, "length": buckets.length, "rows": buckets.rows,
                                                 "buckets": buckets.as_wire(),
                                                 "columns": rows.columns.get(name) or table.data_columns}, name))
                chunk: dict[str, str] = {}
                prefixes: list[str] = []
                for prefix in sorted(buckets.sums):
                    chunk.update(rows.in_prefix(table, prefix))
                    prefixes.append(prefix)
                    if len(chunk) >= ROWS_PER_REQUEST:
                        writer.frame(*bundle.json_frame({"table": name, "prefixes": prefixes, "rows": chunk}, name))
                        chunk, prefixes = {}, []
                if prefixes:
                    writer.frame(*bundle.json_frame({"table": name, "prefixes": prefixes, "rows": chunk}, name))
                counts[name] = buckets.rows
            writer.finish(signing.site_key(cfg.home), {
                "kind": "verify-request", "site": cfg["sender.id"], "bundle": run, "run": run,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "tables": counts})
        except BaseException:
            writer.close()
            raise
        part.replace(path.resolve())
        store.save({**asked, "run": run, "file": str(path.resolve()),
                    "asked": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, VERIFY_BY_FILE)
        return {"run": run, "file": str(path), "tables": counts}
    finally:
        store.close()
        enricher.close()


def answered(cfg: Config, path: Path, *, repair_to: Path | None = None) -> VerifyReport:
    """Read central's answer (step 3): the report, and with `repair_to` the repair bundle."""
    found = bundle.manifest(path, MAX_FRAME_JSON)
    store = CheckpointStore(cfg.home)
    try:
        asked = store.load(VERIFY_BY_FILE) or {}
    finally:
        store.close()
    central_key = cfg.get("sender.central_public_key")
    if not central_key:
        raise bundle.BundleError(_("sender.central_public_key is not set: an answer by file is read only when it is "
                                   "signed by central's key (dbsync sites central-key prints it at central)"))
    bundle.check(found, central_key, path, who=_("central"))
    if found.get("kind") != "verify-answer" or found.get("site") != cfg["sender.id"]:
        raise bundle.BundleError(_("{path}: not central's answer to a question of site {site!r}").format(
            path=path, site=cfg["sender.id"]))
    if found.get("run") != asked.get("run"):
        raise bundle.BundleError(_("{path}: answers question {run}, not this site's last one ({last}): ask again "
                                   "with dbsync verify --to FILE").format(path=path, run=found.get("run"),
                                                                         last=asked.get("run") or "-"))
    model = load_model(cfg)
    enricher = Enricher(enrich_settings(cfg), model)
    try:
        verifier = Verifier(cfg, model, enricher, None, timeout=0, rounds=0, settle_seconds=0)  # type: ignore[arg-type]
        verifier.run_id = str(found["run"])
        verifier.rows.columns.update({t: c for t, c in (asked.get("columns") or {}).items() if t in model.synced})
        report = VerifyReport(verifier.run_id, {})
        columns: dict[str, list[str]] = {}
        for frame in bundle.frames(path, MAX_FRAME_JSON):
            body = bundle.json_of(frame, MAX_FRAME_JSON, path)
            name = body.get("table") if isinstance(body, dict) else None
            if not isinstance(name, str) or name not in model.synced:
                continue
            out = report.tables.setdefault(name, TableReport())
            _read_table(verifier, name, body, out)
            if isinstance(body.get("compared"), list):
                columns[name] = [c for c in body["compared"] if isinstance(c, str)]
        store = CheckpointStore(cfg.home)
        try:  # the next question digests the columns both sides have now
            kept = {**(asked.get("columns") or {}), **columns}
            store.save({**asked, "columns": kept, "answered": found.get("created")}, VERIFY_BY_FILE)
        finally:
            store.close()
        if repair_to is not None:
            report.repaired = _repair(cfg, verifier, report, repair_to)
        return report
    finally:
        enricher.close()


def _read_table(verifier: Verifier, name: str, body: dict[str, Any], out: TableReport) -> None:
    """One table's part of the answer into `out`; a difference whose row changed here since the question is
    `changing` (the site's digest then is in the answer)."""
    out.site_rows = int(body.get("site_rows") or 0)
    out.central_rows = int(body.get("central_rows") or 0)
    out.site_only = list(body.get("site_only") or [])
    out.central_only = list(body.get("central_only") or [])
    kinds = {wire.canonical_uuid(u): k for u, k in (body.get("kinds") or {}).items()
             if isinstance(u, str) and k in KINDS}
    then = {wire.canonical_uuid(u): d for u, d in (body.get("site") or {}).items() if isinstance(u, str)}
    out.edited |= {wire.canonical_uuid(u) for u in body.get("edited") or [] if isinstance(u, str)}
    table = verifier.model.synced[name]
    uuids = sorted(u for u, k in kinds.items() if k != "added_at_central")
    for start in range(0, len(uuids), ROWS_PER_REQUEST):
        part = uuids[start:start + ROWS_PER_REQUEST]
        now = verifier.rows.by_uuid(table, part)
        for uuid in part:
            current = now[uuid][1] if uuid in now else None
            if current != then.get(uuid):
                kinds[uuid] = "changing"
    out.kinds.update(kinds)  # a table's answer may come in several frames


def _repair(cfg: Config, verifier: Verifier, report: VerifyReport, path: Path) -> dict[str, Any]:
    """The repair's sync messages into a bundle; extra rows the site holds after all are not deleted."""
    for name, out in report.tables.items():
        extra = sorted(u for u, k in out.kinds.items() if k == "extra")
        held = verifier.rows.by_uuid(verifier.model.synced[name], extra) if extra else {}
        for uuid in held:  # the site has it now: never delete it at central
            out.kinds[uuid] = "changing"
    rows, deletes = Repair(verifier, report).messages()
    written, envelopes = write_messages(cfg, path.resolve(), rows + deletes, {
        "bundle": f"{verifier.run_id}:repair:{uuidlib.uuid4().hex[:8]}",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "from": None, "to": None,
        "repair": verifier.run_id})
    added = sum(1 for t in report.tables.values() for k in t.kinds.values() if k == "added_at_central")
    log.info("verify --repair by file: %d row(s) and %d delete(s) written to %s", written - len(deletes),
             len(deletes), path)
    return {"rows_sent": written - len(deletes), "deletes_sent": len(deletes), "envelopes": envelopes,
            "file": str(path), **({"added_kept": added} if added else {})}
