"""The sender: capture → enrich → publish composed, supervised (capture in a child process: capture_process.py).

A failing stage restarts the whole chain from the last confirmed checkpoint after a backoff; SIGTERM sets `stop`,
capture ends at the next event or heartbeat, the in-flight batch is confirmed and checkpointed, and we return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dbsync_cli.config import Config
from dbsync_cli.openmrs import SchemaError
from dbsync_cli.sender.binlog import CaptureStop, reader_id
from dbsync_cli.sender.capture import capture
from dbsync_cli.sender.capture_process import capture_events
from dbsync_cli.sender.catch_up import catch_up_if_lost
from dbsync_cli.sender.checkpoint import CheckpointStore
from dbsync_cli.sender.enrich import enrich
from dbsync_cli.sender.file_lane import FileLane, run_lane
from dbsync_cli.sender.housekeeping import BinlogPurger
from dbsync_cli.sender.publish import publish
from dbsync_cli.sender.settings import capture_settings, enrich_settings, load_model, publish_settings
from dbsync_cli.supervise import supervise

log = logging.getLogger("dbsync.sender")

__all__ = ["FilesBeside", "Sender", "capture_settings", "enrich_settings", "files_of", "load_model", "publish_settings", "run_once",
           "run_supervised"]


def run_once(cfg: Config, stop: threading.Event, on_message: Callable[[dict[str, Any]], None] | None = None,
             **capture_overrides: Any) -> int:
    """One pass of the chain until capture ends (idle, max events or stop); returns messages confirmed."""
    store = CheckpointStore(cfg.home)
    try:
        model = load_model(cfg)
        with reader_id(cfg.home, cfg["sender.server_id"], exclusive=True) as server_id:
            settings = capture_settings(cfg, model, stop, **{"server_id": server_id, **capture_overrides})
            checkpoint = catch_up_if_lost(cfg, settings, store, store.load())
            events = (capture_events if cfg["sender.capture_process"] else capture)(settings, checkpoint)
            messages = enrich(events, enrich_settings(cfg), model)
            count = 0
            for message in publish(messages, publish_settings(cfg, stop), on_confirmed(cfg, store),
                                   on_sent=store.count_sent, on_dropped=store.count_dropped,
                                   on_refused=store.note_refusal, on_batch=files_of(cfg, store)):
                count += 1
                if on_message is not None:
                    on_message(message)
            return count
    finally:
        store.close()


def files_of(cfg: Config, store: CheckpointStore) -> Callable[[list[dict[str, Any]]], None] | None:
    """With sender.complex_obs_dir: the files a confirmed batch's obs name become jobs with its checkpoint."""
    return store.note_files if cfg["sender.complex_obs_dir"] else None


def on_confirmed(cfg: Config, store: CheckpointStore) -> Callable[[dict[str, Any]], None]:
    """Save the checkpoint; then, with sender.purge_binlogs, purge the binlog files it no longer needs."""
    if not cfg["sender.purge_binlogs"]:
        return store.save
    purger = BinlogPurger(cfg.db("site_db"), cfg["sender.keep_binlog_files"], cfg["sender.purge_interval_seconds"])

    def save(value: dict[str, Any]) -> None:
        store.save(value)
        purger.after_checkpoint(value)

    return save


def run_supervised(cfg: Config, stop: threading.Event, **capture_overrides: Any) -> int:
    """Restart the chain with exponential backoff after any failure but those an operator must fix."""
    total = 0

    def chain() -> None:
        nonlocal total
        total += run_once(cfg, stop, **capture_overrides)

    bounded = bool(capture_overrides.get("until_idle") or capture_overrides.get("max_events"))
    if not bounded and cfg["sender.requests"]:  # central's re-sync requests, beside the chain
        from dbsync_cli.sender.resync import serve_requests

        threading.Thread(target=supervise, args=("requests", lambda: serve_requests(cfg, stop), stop),
                         name="requests", daemon=True).start()
    with FilesBeside(cfg, stop, running=not bounded):
        supervise("sender chain", chain, stop, once=bounded, fatal=(CaptureStop, SchemaError))
    return total


class FilesBeside:
    """The complex obs file lane beside a chain (`dbsync sender`, or `dbsync publish` in a pipe): the same files
    travel whichever runs the rows. A running lane sends while the chain runs; when the chain ends, the files due
    then are sent before the process exits (a file missing at the site waits for the next run: its job is durable)."""

    def __init__(self, cfg: Config, stop: threading.Event, *, running: bool = True) -> None:
        self.cfg, self.stop, self.running = cfg, stop, running and bool(cfg["sender.complex_obs_dir"])
        self.lane_stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> FilesBeside:
        if self.running:
            self.thread = threading.Thread(target=supervise, args=("files", lambda: run_lane(self.cfg, self.lane_stop),
                                                                   self.lane_stop), name="files", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lane_stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        if exc[0] is None and not self.stop.is_set() and self.cfg["sender.complex_obs_dir"]:
            send_due_files(self.cfg, self.stop)


def send_due_files(cfg: Config, stop: threading.Event) -> None:
    """The files due now, one after another, until none is due or `stop`."""
    lane = FileLane(cfg, stop)
    try:
        while not stop.is_set() and lane.step():
            pass
    finally:
        lane.close()


class Sender:
    """The sender of one site, built from its config: what `dbsync sender` and `dbsync status` call."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def run(self, stop: threading.Event, **capture_overrides: Any) -> int:
        """capture → enrich → publish, supervised, until `stop` (or the overrides' idle/max limits)."""
        return run_supervised(self.cfg, stop, **capture_overrides)

    def run_once(self, stop: threading.Event, on_message: Callable[[dict[str, Any]], None] | None = None,
                 **capture_overrides: Any) -> int:
        """One unsupervised pass (tests, scripts); returns the messages the broker confirmed."""
        return run_once(self.cfg, stop, on_message, **capture_overrides)

    def verify(self, tables: list[str] | None = None, **options: Any) -> Any:
        """`dbsync verify` at this site (sender.verify.verify): a VerifyReport."""
        from dbsync_cli.sender.verify import verify

        return verify(self.cfg, tables, **options)

    def resync(self, **what: Any) -> dict[str, int]:
        """Send a patient (`patient=uuid`) or one row (`table=`, `uuid=`) again: messages per table."""
        from dbsync_cli.sender.resync import resync

        return resync(self.cfg, **what)

    def status(self, overrides: dict[str, int | None] | None = None) -> dict[str, Any]:
        from dbsync_cli.sender.status import sender_status

        return sender_status(self.cfg, overrides)
