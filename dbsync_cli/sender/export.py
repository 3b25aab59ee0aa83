"""`dbsync export --to FILE`: sync by file for a clinic with no network. The changes since the checkpoint go into a
signed bundle (`dbsync_cli/bundle.py`) instead of to the broker; central imports it (`dbsync import FILE`).

The chain is the sender's own (capture → enrich → publish's batching into envelopes), so a bundle holds exactly
the frames the live sender would have sent, with the same message ids: central applies a change once whether it
came by file, by broker, or both, and a bundle imported twice applies nothing twice.

Checkpoints:
- while it writes, `export_part` records the file's durable length and the position it reached after each batch
  (fsync first), so an interrupted export resumes where it was (`--to` the same file) instead of starting again;
- when the file is sealed (signed, fsynced, renamed from `FILE.part` to `FILE`), the sender's own checkpoint moves
  to the bundle's end in the same transaction that records `exported` and forgets the part: the live sender then
  continues from there and sends nothing the bundle carries, and binlog purging (`sender.purge_binlogs`) never
  removes a change that is in no sealed bundle.
An export runs only while the live sender is stopped (the binlog reader's lock, exit 16 otherwise).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbsync_cli import bundle, exitcodes, signing
from dbsync_cli.config import Config
from dbsync_cli.files import sync_dir
from dbsync_cli.i18n import _
from dbsync_cli.sender import binlog, file_jobs
from dbsync_cli.sender.binlog import CaptureSettings, CaptureStop, reader_id
from dbsync_cli.sender.capture import capture
from dbsync_cli.sender.checkpoint import BINLOG, EXPORT_PART, EXPORTED, CheckpointStore, record_dropped
from dbsync_cli.sender.enrich import enrich
from dbsync_cli.sender.housekeeping import BinlogPurger
from dbsync_cli.sender.publish import Publisher, _Batch
from dbsync_cli.sender.settings import capture_settings, enrich_settings, load_model, publish_settings

log = logging.getLogger("dbsync.export")



@dataclass
class ExportReport:
    path: Path
    bundle: str
    rows: int
    frames: int
    resumed: bool
    start: dict[str, Any] | None
    end: dict[str, Any] | None
    key: str

    def as_json(self) -> dict[str, Any]:
        return {"file": str(self.path), "bundle": self.bundle, "rows": self.rows, "envelopes": self.frames,
                "resumed": self.resumed, "from": self.start, "to": self.end, "public_key": self.key}


class _FilePublisher(Publisher):
    """publish's batching, written to a bundle: a batch counts as confirmed once its frames are on disk."""

    def __init__(self, cfg: Config, writer: bundle.BundleWriter, on_batch: Any, stop: threading.Event) -> None:
        super().__init__(publish_settings(cfg, stop), on_batch, on_dropped=self._dropped)
        self.writer = writer
        self.frames = 0
        self.drops: list[dict[str, Any]] = []

    def _dropped(self, items: list[dict[str, Any]]) -> None:
        self.drops.extend(items)

    def _send(self, pending: deque[_Batch], batch: _Batch) -> None:
        pending.append(batch)
        batch.receipt = None
        for body, headers in batch.frames:
            self.writer.frame(body, headers)
        if batch.frames:
            self.writer.sync()
            self.frames += len(batch.frames)

    def close(self) -> None:  # no connection to close
        return


def write_messages(cfg: Config, path: Path, messages: list[dict[str, Any]], manifest: dict[str, Any]) -> tuple[
        int, int]:
    """Sync messages that move no checkpoint (a repair by file) into a sealed bundle: (rows, envelopes)."""
    part = part_path(path)
    writer = bundle.BundleWriter(part)
    publisher = _FilePublisher(cfg, writer, lambda source: None, threading.Event())
    try:
        rows = sum(1 for _ in publisher.run(messages))
    except BaseException:
        writer.close()
        raise
    writer.finish(signing.site_key(cfg.home), {**manifest, "kind": "changes", "site": cfg["sender.id"],
                                               "rows": rows, "envelopes": publisher.frames})
    part.replace(path)
    sync_dir(path.parent)
    record_dropped(cfg.home, publisher.drops)
    return rows, publisher.frames


def part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def export(cfg: Config, path: Path, *, stop: threading.Event | None = None) -> ExportReport:
    """Write the changes since the checkpoint to a signed bundle at `path`; move the checkpoint past them."""
    stop = stop or threading.Event()
    model = load_model(cfg)
    key = signing.site_key(cfg.home)
    path = path.resolve()
    part = part_path(path)
    store = CheckpointStore(cfg.home)
    try:
        with reader_id(cfg.home, cfg["sender.server_id"], exclusive=True) as server_id:
            checkpoint = store.load()
            earlier = store.load(EXPORT_PART)
            if path.exists():
                if earlier and earlier.get("file") == str(path) and not part.exists():
                    return _sealed_already(cfg, store, path, earlier, key)
                raise bundle.BundleError(_("{path} exists: carry it to central first, or export to another "
                                           "file").format(path=path))
            resumed = bool(earlier and earlier.get("file") == str(path) and earlier.get("start") == checkpoint
                           and part.exists() and part.stat().st_size >= int(earlier.get("bytes") or 0))
            progress: dict[str, Any] = dict(earlier) if resumed and earlier else {
                "file": str(path), "bundle": f"{cfg['sender.id']}:{uuidlib.uuid4().hex}", "start": checkpoint,
                "at": checkpoint, "bytes": 0, "rows": 0, "frames": 0, "drops": [],
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            if resumed:
                log.info("export: resuming %s at %d bytes (%d rows written)", part, progress["bytes"], progress["rows"])
            writer = bundle.BundleWriter(part, int(progress["bytes"]) if resumed else 0)
            settings = capture_settings(cfg, model, stop, server_id=server_id, until_idle=True)
            _refuse_lost(cfg, settings, progress["at"])
            publisher = _FilePublisher(cfg, writer, lambda source: None, stop)
            files: list[tuple[str, str | None]] = []  # complex obs files the batch's obs name (file_jobs.py)

            def batch_written(source: dict[str, Any]) -> None:
                progress.update(at=source, bytes=writer.out.tell(), frames=int(progress["frames"]) + publisher.frames,
                                rows=int(progress["rows"]) + publisher.sent, drops=progress["drops"] + publisher.drops,
                                files=list(progress.get("files") or []) + files)
                publisher.frames, publisher.sent, publisher.drops = 0, 0, []
                files.clear()
                store.save(progress, EXPORT_PART)

            publisher.on_confirmed = batch_written
            if cfg["sender.complex_obs_dir"]:
                publisher.on_batch = lambda records: files.extend(file_jobs.jobs_of(records))
            try:
                for _message in publisher.run(enrich(capture(settings, progress["at"]), enrich_settings(cfg), model)):
                    pass
            except BaseException:
                writer.close()
                raise
            if stop.is_set():
                writer.close()
                raise bundle.BundleError(f"export stopped: run it again with --to {path} to resume")
            manifest = writer.finish(key, {
                "kind": "changes", "site": cfg["sender.id"], "bundle": progress["bundle"],
                "created": progress["created"], "rows": progress["rows"], "envelopes": progress["frames"],
                "from": progress["start"], "to": progress["at"]})
            part.replace(path)
            sync_dir(path.parent)
            return _seal(cfg, store, path, progress, manifest["sha256"], key, resumed)
    finally:
        store.close()


def _seal(cfg: Config, store: CheckpointStore, path: Path, progress: dict[str, Any], sha256: str,
          key: Any, resumed: bool) -> ExportReport:
    """The sealed bundle's end becomes the sender's checkpoint, in the transaction that records the export, forgets
    its progress and counts what it did not carry (drop records)."""
    end = progress["at"]
    exported = {"bundle": progress["bundle"], "file": str(path), "rows": progress["rows"],
                "envelopes": progress["frames"], "from": progress["start"], "to": end, "sha256": sha256,
                "sealed": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    store.count_dropped(progress["drops"])  # written by save_all, in its transaction
    # the files of the bundle's complex obs: sent over the broker by `dbsync sender` (a bundle carries no files)
    store.unsaved_files.extend((str(name), uuid) for name, uuid in progress.get("files") or [])
    store.save_all({EXPORTED: exported, **({BINLOG: end} if end is not None else {})}, forget=(EXPORT_PART,))
    if end is not None and cfg["sender.purge_binlogs"]:
        BinlogPurger(cfg.db("site_db"), cfg["sender.keep_binlog_files"], 0).after_checkpoint(end)
    return ExportReport(path, progress["bundle"], int(progress["rows"]), int(progress["frames"]), resumed,
                        progress["start"], end, signing.public_text(key))


def _sealed_already(cfg: Config, store: CheckpointStore, path: Path, progress: dict[str, Any],
                    key: Any) -> ExportReport:
    """Killed after the file was sealed and renamed, before the checkpoint moved: the file is whole and is this
    export's (same bundle id), so only the last step is done again."""
    found = bundle.manifest(path, 4 * cfg["broker.max_message_bytes"])
    if found.get("bundle") != progress.get("bundle") or found.get("to") != progress.get("at"):
        raise bundle.BundleError(_("{path} exists: carry it to central first, or export to another file").format(
            path=path))
    log.info("export: %s was sealed before the last run stopped; the checkpoint moves past it now", path)
    return _seal(cfg, store, path, progress, str(found.get("sha256")), key, True)


def _refuse_lost(cfg: Config, settings: CaptureSettings, checkpoint: dict[str, Any] | None) -> None:
    """With `sender.catch_up = "verify"`, a checkpoint the binlog no longer has is caught up by verify, never by
    a snapshot (which cannot delete at central what was deleted here meanwhile): an export cannot do that alone."""
    if (checkpoint is None or checkpoint.get("snapshot") or settings.snapshot != "when_needed"
            or cfg["sender.catch_up"] != "verify"):
        return
    with settings.db.connect() as conn:
        try:
            binlog.check_history(conn, checkpoint, lambda file: binlog.file_born(settings, file))
        except binlog.PositionLost as lost:
            raise CaptureStop(_("{lost}: the changes since the checkpoint are gone from the binlog; with "
                                "sender.catch_up = verify the site catches up by verify, not by a snapshot in a "
                                "bundle: dbsync verify --to FILE here, then dbsync export again").format(lost=lost),
                              exitcodes.BINLOG_PURGED) from None


def public_key(cfg: Config) -> str:
    """This site's public key (made at its first use): what central records with `sites add --public-key`."""
    return signing.public_text(signing.site_key(cfg.home))
