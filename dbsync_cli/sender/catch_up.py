"""Catching up after a purged binlog without a full reload: `verify --repair` instead of a new snapshot.

A checkpoint the server no longer has (purged, or a restarted history) leaves a window of changes capture cannot
read. A new snapshot re-sends every row and cannot delete at central the rows deleted inside the window. When
central already holds the site, `verify --repair` sends only the rows that differ and deletes the extra ones.
The new checkpoint (the binlog position taken *before* verify reads the site, under a new message-id epoch) is
saved only after the repair's messages were confirmed by the broker: a sender killed meanwhile finds the lost
checkpoint again and repeats the catch-up, which is idempotent. A link that drops meanwhile only slows it (verify
connects again and sends its unanswered requests again). When central does not answer within
`sender.catch_up_timeout_seconds`, the catch-up is tried again after a backoff, never replaced by a snapshot: a
snapshot only upserts, so the rows deleted at the site inside the lost window would stay at central for good.
Changes made while it runs are streamed from that position afterwards; the receiver's order guard keeps the later
of the two.

A catch-up tried again (after that backoff, a killed sender, a link down for longer than the timeout) resumes
where it was: the same verify run, the same binlog position and epoch, the tables and buckets central already
answered and the tables whose repair was confirmed are not done again (verify_progress.py). That progress belongs
to the lost checkpoint it catches up: another lost checkpoint, or a position no longer in the server's binlog
history, starts over.
"""

from __future__ import annotations

import logging
from typing import Any

from dbsync_cli.config import Config
from dbsync_cli.sender import binlog
from dbsync_cli.sender.binlog import CaptureSettings
from dbsync_cli.sender.checkpoint import CheckpointStore
from dbsync_cli.sender.verify_progress import VerifyProgress

log = logging.getLogger("dbsync.catch_up")


class CatchUpWaiting(RuntimeError):
    """Central did not answer the catch-up in time: the chain is started again after a backoff (not an operator
    fault, not a reason to reload from a snapshot)."""


def catch_up_if_lost(cfg: Config, settings: CaptureSettings, store: CheckpointStore,
                     checkpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    """The checkpoint to start capture from: as it is, or, when it was lost and `sender.catch_up = "verify"`
    (with `snapshot = "when_needed"`), a new one after the site was verified and repaired."""
    if (checkpoint is None or checkpoint.get("snapshot") or settings.snapshot != "when_needed"
            or cfg["sender.catch_up"] != "verify"):
        return checkpoint
    with settings.db.connect() as conn:
        was = str(checkpoint.get("epoch") or "").partition(".")[0]
        if was and was != str(binlog.server_id(conn)):
            return checkpoint  # another server: a failover, which capture follows by GTID
        try:
            binlog.check_history(conn, checkpoint, lambda file: binlog.file_born(settings, file))
            return checkpoint
        except binlog.PositionLost as exc:
            lost = exc
        saved = VerifyProgress(cfg.home, "catch-up", {"lost": checkpoint})
        new = _resumable(conn, settings, saved)
    try:
        return _catch_up(cfg, settings, store, saved, new, lost)
    finally:
        saved.close()


def _resumable(conn: Any, settings: CaptureSettings, saved: VerifyProgress) -> dict[str, Any] | None:
    """The interrupted catch-up's new checkpoint when it is still in the server's binlog history; else None, and
    its progress is forgotten."""
    kept = saved.extra.get("checkpoint") if saved.resuming else None
    if not isinstance(kept, dict):
        saved.clear()
        return None
    try:
        binlog.check_history(conn, kept, lambda file: binlog.file_born(settings, file))
    except binlog.PositionLost as exc:
        log.warning("%s: the interrupted catch-up's position is gone; catching up from the start", exc)
        saved.clear()
        return None
    return kept


def _catch_up(cfg: Config, settings: CaptureSettings, store: CheckpointStore, saved: VerifyProgress,
              new: dict[str, Any] | None, lost: Exception) -> dict[str, Any]:
    if new is None:
        with settings.db.connect() as conn:
            position = binlog.current_position(conn)
            epoch = binlog.new_epoch(conn)
        new = {"file": position.file, "pos": position.pos, "row": -1, "snapshot": False, "epoch": epoch,
               "born": binlog.file_born(settings, position.file)}
        run = saved.start(cfg["sender.id"], {"checkpoint": new})
        log.warning("%s: catching up by verify --repair from %s:%s instead of a new snapshot (sender.catch_up = "
                    "verify)", lost, new["file"], new["pos"])
    else:
        run = saved.start(cfg["sender.id"])
        log.warning("%s: catching up by verify --repair from %s:%s, resuming run %s where it was", lost,
                    new["file"], new["pos"], run)
    from dbsync_cli.control import ControlError
    from dbsync_cli.sender.verify import verify

    try:
        report = verify(cfg, repair=True, progress=settings.progress, timeout=cfg["sender.catch_up_timeout_seconds"],
                        saved=saved)
    except ControlError as exc:  # supervision starts the chain again after a backoff: the catch-up is tried again
        raise CatchUpWaiting(f"catch-up by verify --repair: {exc}; trying again where it was (a snapshot could "
                             "not delete at central the rows deleted here meanwhile)") from None
    log.info("catch-up: %d row(s) differed; %d row(s) sent again and %d delete(s) sent (%d rows at the site)",
             report.differences, report.repaired.get("rows_sent", 0), report.repaired.get("deletes_sent", 0),
             sum(t.site_rows for t in report.tables.values()))
    store.save(new)
    saved.clear()
    return new
