"""`dbsync import FILE` at central: a site's bundle (sync by file, `dbsync_cli/bundle.py`) into the inbox.

The file is first copied into the receiver's home while its digest is computed, and only that private copy is
read after the signature was checked against the key recorded for its site (`sites add --public-key`): a file on
a USB stick cannot change between the check and the reading. Its frames are then stored as consume stores broker
deliveries (`Consumer.store`: the same size limits, the same duplicate rule), sent by the key that signed them, so
the running receiver applies them between its other sites' batches with every rule it applies to the broker's.
Nothing is applied twice: a frame already in the inbox is a duplicate delivery, a message already applied is
skipped as a duplicate by apply (counted per site). `bundle_import` records each bundle and how often it came.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbsync_cli import bundle, wire
from dbsync_cli.config import Config
from dbsync_cli.files import private_dir
from dbsync_cli.i18n import _
from dbsync_cli.receiver import state
from dbsync_cli.receiver.central import consume_settings
from dbsync_cli.receiver.consume import Consumer
from dbsync_cli.receiver.trust import signed_user
from dbsync_cli.sql import sql

log = logging.getLogger("dbsync.import")

FRAMES_PER_TRANSACTION = 200
BYTES_PER_TRANSACTION = 16 * 1024 * 1024  # and at most this many bytes of frames (memory, max_allowed_packet)
COPY_HEADROOM_BYTES = 256 * 1024 * 1024  # what the copy of a bundle leaves free in the receiver's home
MAX_BUNDLE_ID = 160  # bundle_import.bundle_id


@dataclass
class ImportReport:
    file: Path
    site: str
    bundle: str
    envelopes: int
    rows: int
    stored: int  # envelopes new in the inbox (the others were there already, or applied before)
    refused: int  # envelopes consume's limits refused (parked with one line, counted per site)
    times: int  # how often this bundle was imported, this time included
    sender: str = ""  # what its rows are stored as sent by (trust.signed_user)
    waiting: int | None = None  # with --wait: envelopes of it still in the inbox when the wait ended
    parked: int = 0  # with --wait: the site's messages parked since the import began (retry queue, conflicts)

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.file), "site": self.site, "bundle": self.bundle, "envelopes": self.envelopes,
                "rows": self.rows, "stored": self.stored, "refused": self.refused, "times": self.times,
                "waiting": self.waiting, "parked": self.parked}


@contextlib.contextmanager
def checked(cfg: Config, path: Path, kind: str) -> Iterator[tuple[dict[str, Any], Path, state.Site, Any]]:
    """A bundle of `kind` whose signature is its site's recorded key: (manifest, the private copy to read, the site,
    a central connection). BundleError (one line) otherwise."""
    settings = consume_settings(cfg)
    read_limit = 4 * settings.max_message_bytes  # a bigger frame is damage; one over the limit is parked
    work = private_dir(cfg.home / "imports")
    try:
        if not path.is_file():
            raise bundle.BundleError(_("{path}: not a file").format(path=path))
        room = shutil.disk_usage(work).free - COPY_HEADROOM_BYTES
        if path.stat().st_size > room:
            raise bundle.BundleError(_("{path}: {size:,} bytes, more than {work} has room for (its copy is checked "
                                       "there): free space there first").format(path=path, size=path.stat().st_size,
                                                                                work=work))
    except OSError as exc:
        raise bundle.BundleError(_("{path}: cannot be read ({error})").format(
            path=path, error=exc.strerror or exc)) from None
    with tempfile.NamedTemporaryFile(dir=work, suffix=".bundle") as copy:
        try:
            with path.open("rb") as source:
                shutil.copyfileobj(source, copy, 1 << 20)
        except OSError as exc:
            raise bundle.BundleError(_("{path}: cannot be read ({error})").format(
                path=path, error=exc.strerror or exc)) from None
        copy.flush()
        private = Path(copy.name)
        found = bundle.manifest(private, read_limit)
        if not isinstance(found.get("bundle"), str) or not 0 < len(found["bundle"]) <= MAX_BUNDLE_ID:
            raise bundle.BundleError(_("{path}: damaged (its manifest names no bundle)").format(path=path))
        site_id = found.get("site")
        conn = settings.db.connect(autocommit=False)
        try:
            site = state.sites(conn, settings.state_schema).get(site_id) if isinstance(site_id, str) else None
            conn.commit()
            if site is None:
                raise bundle.BundleError(_("{path}: made by site {site!r}, which is not registered here (dbsync sites "
                                           "add SITE --public-key …)").format(path=path, site=site_id))
            if not site.public_key:
                raise bundle.BundleError(_("{path}: no public key is recorded for site {site!r} (dbsync sites update "
                                           "{site} --public-key …, with what dbsync export --public-key prints at the "
                                           "site)").format(path=path, site=site.identifier))
            bundle.check(found, site.public_key, path)
            if found.get("kind") != kind:
                raise bundle.BundleError(_("{path}: a bundle of kind {kind!r}, not {wanted!r}").format(
                    path=path, kind=found.get("kind"), wanted=kind))
            yield found, private, site, conn
        finally:
            conn.close()


def import_bundle(cfg: Config, path: Path, *, wait_seconds: float | None = None) -> ImportReport:
    """Check `path`'s signature against its site's recorded key, then store its frames in the inbox."""
    settings = consume_settings(cfg)
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with checked(cfg, path, "changes") as (found, private, site, conn):
        assert site.public_key is not None
        _refuse_forgotten(conn, settings.state_schema, found, path, cfg["receiver.applied_ids_days"])
        report = _store(conn, settings, private, 4 * settings.max_message_bytes, found, site.public_key, path)
    if wait_seconds:
        report.waiting, report.parked = _wait_applied(settings, report, wait_seconds, started)
    return report


def _refuse_forgotten(conn: Any, schema: str, found: dict[str, Any], path: Path, days: int) -> None:
    """A bundle first imported longer ago than central remembers applied message ids (receiver.applied_ids_days):
    its rows would no longer be known as applied, and could bring back rows deleted since."""
    with conn.cursor() as cur:
        cur.execute(sql("SELECT date_first FROM {}.bundle_import WHERE bundle_id = %s", state.schema_name(schema)),
                    (found["bundle"],))
        row = cur.fetchone()
    conn.commit()
    if row and row[0] < dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days):
        raise bundle.BundleError(_("{path}: bundle {bundle} was imported first on {first:%Y-%m-%d}, longer ago than "
                                   "central remembers applied messages (receiver.applied_ids_days = {days}): "
                                   "importing it again could bring back rows deleted since; it is refused").format(
            path=path, bundle=found["bundle"], first=row[0], days=days))


def _store(conn: Any, settings: Any, private: Path, read_limit: int, found: dict[str, Any], public_key: str,
           path: Path) -> ImportReport:
    consumer = Consumer(settings, threading.Event())
    sender = signed_user(public_key)
    batch: list[bundle.Frame] = []
    envelopes = rows = stored = size = 0
    for frame in bundle.frames(private, read_limit):
        envelopes += 1
        rows += wire.delivery_rows(frame.headers)
        batch.append(frame)
        size += len(frame.body)
        if len(batch) >= FRAMES_PER_TRANSACTION or size >= BYTES_PER_TRANSACTION:
            stored += len(consumer.store(conn, batch, sender))
            batch, size = [], 0
    if batch:
        stored += len(consumer.store(conn, batch, sender))
    times = _record(conn, settings.state_schema, found, path, envelopes, rows, stored)
    log.info("import: %s of site %s: %d envelope(s), %d row(s); %d new in the inbox", path, found["site"],
             envelopes, rows, stored)
    return ImportReport(path, found["site"], str(found.get("bundle")), envelopes, rows, stored, consumer.refused,
                        times, sender)


def _record(conn: Any, schema: str, found: dict[str, Any], path: Path, envelopes: int, rows: int,
            stored: int) -> int:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    s = state.schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("INSERT INTO {}.bundle_import (bundle_id, site, file_name, envelopes, n_rows, stored, times, "
                        "date_first, date_last) VALUES (%s, %s, %s, %s, %s, %s, 1, %s, %s) ON DUPLICATE KEY UPDATE "
                        "times = times + 1, stored = stored + VALUES(stored), file_name = VALUES(file_name), "
                        "date_last = VALUES(date_last)", s),
                    (str(found.get("bundle"))[:160], found["site"], path.name[:255], envelopes, rows, stored, now, now))
        cur.execute(sql("SELECT times FROM {}.bundle_import WHERE bundle_id = %s", s), (str(found.get("bundle"))[:160],))
        (times,) = cur.fetchone()
    conn.commit()
    return int(times)


def _wait_applied(settings: Any, report: ImportReport, seconds: float, started: dt.datetime) -> tuple[int, int]:
    """Envelopes of the site's bundles still in the inbox after waiting up to `seconds` for the receiver, and the
    messages of the site parked since the import began (retry queue of its key, conflicts of the site)."""
    conn = settings.db.connect(autocommit=False)
    s = state.schema_name(settings.state_schema)
    deadline = time.monotonic() + seconds
    try:
        while True:
            with conn.cursor() as cur:
                cur.execute(sql("SELECT COUNT(*) FROM {}.inbox WHERE site = %s AND broker_user = %s", s),
                            (report.site, report.sender))
                (waiting,) = cur.fetchone()
            conn.commit()
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        with conn.cursor() as cur:
            cur.execute(sql("SELECT (SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE broker_user = %s AND "
                            "date_created >= %s) + (SELECT COUNT(*) FROM {s}.receiver_conflict_queue WHERE site = %s "
                            "AND date_created >= %s)", s=s), (report.sender, started, report.site, started))
            (parked,) = cur.fetchone()
        conn.commit()
        return int(waiting), int(parked)
    finally:
        conn.close()

