"""The sender's file lane: complex obs files → `<destination>.files`, chunk by chunk, beside the rows, never before them.

Its own STOMP connection and destination, so a 40 MB X-ray never stands in front of a row: the rows' publish does
not wait for it, and small chunks (sender.complex_obs_chunk_bytes, 32 KB) with a small window
(sender.complex_obs_window) keep a slow link shared with the rows' batches. Every chunk is a persistent SEND with a
receipt; the job records each chunk the broker confirmed (file_jobs.confirmed), so after a kill -9 the file goes on
from the last confirmed chunk, and a chunk sent twice has the same key at central (no broker duplicate detection: wire.py says why).
A file not in the folder yet (OpenMRS writes it next to the row) is looked for again with backoff, counted in
`dbsync status`; a refused name is never opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
import uuid as uuidlib
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import stomp
import stomp.exception

from dbsync_cli import complex_obs, wire
from dbsync_cli.broker import BrokerError, server_of, settings_from_config
from dbsync_cli.broker import open_connection as _open
from dbsync_cli.broker_kind import dialect
from dbsync_cli.config import Config
from dbsync_cli.faults import describe, operator_fault
from dbsync_cli.retrying import backoff
from dbsync_cli.sender import file_jobs
from dbsync_cli.sender.file_jobs import Job

log = logging.getLogger("dbsync.files")

IDLE_SECONDS = 1.0  # how often the lane looks for new jobs when it has none
SILENCE_SECONDS = 60.0  # no receipt and no heart-beat for this long: the connection is dead
FAILURES = (BrokerError, OSError, stomp.exception.StompException)


class _Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: set[str] = set()
        self.error: str | None = None
        self.closed = False
        self.last_heard = time.monotonic()  # a receipt or a heart-beat: the broker is alive and answering

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.got.add(frame.headers.get("receipt-id", ""))
            self.last_heard = time.monotonic()
            self.cond.notify_all()

    def on_heartbeat(self) -> None:
        with self.cond:
            self.last_heard = time.monotonic()

    def on_error(self, frame: Any) -> None:
        body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else (frame.body or "")
        with self.cond:
            self.error = " ".join(((frame.headers.get("message") or "ERROR frame") + " " + body[:200]).split())
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, receipt: str, silence: float, stop: threading.Event) -> None:
        """Until the receipt; a broker silent (no receipt, no heart-beat) for `silence` seconds counts as gone (a
        slow link busy with a row backlog delays a receipt, but its heart-beats still come)."""
        with self.cond:
            while receipt not in self.got:
                if self.error is not None:
                    raise BrokerError(f"the broker refused a file chunk: {self.error}")
                if self.closed:
                    raise BrokerError("connection to the broker dropped before the receipt")
                left = self.last_heard + silence - time.monotonic()
                if left <= 0:
                    raise BrokerError(f"the broker sent nothing (no receipt, no heart-beat) for {silence:g} s")
                if stop.is_set():
                    raise BrokerError("stopping")
                self.cond.wait(min(left, 0.5))
            self.got.discard(receipt)


class FileLane:
    """Sends due file jobs one file at a time until stop."""

    def __init__(self, cfg: Config, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.site = cfg["sender.id"]
        self.folder = complex_obs.folder(cfg["sender.complex_obs_dir"]) or Path()
        self.chunk_bytes = cfg["sender.complex_obs_chunk_bytes"]
        self.window = cfg["sender.complex_obs_window"]
        self.retry_max = float(cfg["sender.complex_obs_retry_max_seconds"])
        self.destination = complex_obs.destination(cfg["broker.destination"])
        self.broker = settings_from_config(cfg)
        self.db = sqlite3.connect(cfg.home / "state.sqlite", timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(file_jobs.SCHEMA)
        self.conn: stomp.Connection12 | None = None
        self.speak = dialect(None)  # the connected broker's dialect (broker_kind): RabbitMQ wants user-id
        self.receipts = _Receipts()
        self.failures = 0

    def close(self) -> None:
        self._disconnect()
        self.db.close()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.step():
                    self.stop.wait(IDLE_SECONDS)
        finally:
            self.close()

    def step(self) -> bool:
        """One due job (False: none was due)."""
        job = file_jobs.next_due(self.db, time.time())
        if job is None:
            return False
        try:
            self._send(job)
        except FAILURES as exc:
            if operator_fault(exc):
                raise
            self._disconnect()
            self.failures += 1
            delay = backoff(self.failures, multiplier=0.5, maximum=30)
            log.warning("file %s: %s; sending again from chunk %d in %.1f s", complex_obs.shown(job.name),
                        describe(exc), self._confirmed(job.name), delay)
            self.stop.wait(delay)
        return True

    # ---- one file --------------------------------------------------------------------------------------------
    def _send(self, job: Job) -> bool:
        path = self.folder / job.name
        try:  # the folder is OpenMRS's: a link in it is never followed, and what is hashed is what is sent
            handle = complex_obs.open_regular(path)
        except OSError as exc:
            if self._obs_names(job):
                self._missing(job, exc)
            else:
                self._gone(job)
            return False
        with handle:
            return self._send_open(job, handle)

    def _send_open(self, job: Job, handle: BinaryIO) -> bool:
        sha, size = complex_obs.sha256_of(handle)
        chunks = max(1, -(-size // self.chunk_bytes))
        first = file_jobs.start(self.db, job, sha, size, chunks)
        if first == 0 or job.state != file_jobs.SENDING:
            log.info("file %s (obs %s): sending %d bytes in %d chunk(s)%s", complex_obs.shown(job.name), job.obs_uuid,
                     size, chunks, f" from chunk {first}" if first else "")
        else:
            log.info("file %s: going on from chunk %d of %d", complex_obs.shown(job.name), first, chunks)
        conn = self._connect()
        pending: deque[tuple[int, str]] = deque()
        handle.seek(first * self.chunk_bytes)
        for seq in range(first, chunks):
            if self.stop.is_set():
                return False
            body, encoding = complex_obs.encode_chunk(handle.read(self.chunk_bytes))
            receipt = uuidlib.uuid4().hex
            headers = {
                **self.speak.send_headers(False, self.broker.user), "persistent": "true", "receipt": receipt,
                complex_obs.SITE: self.site, wire.GROUP_HEADER: self.site, complex_obs.NAME: job.name,
                complex_obs.SHA256: sha,
                complex_obs.SIZE: str(size), complex_obs.CHUNKS: str(chunks), complex_obs.SEQ: str(seq),
                complex_obs.CHUNK_SHA256: hashlib.sha256(body).hexdigest(), complex_obs.ENCODING: encoding,
                complex_obs.OBS: job.obs_uuid or ""}
            if job.repair:
                headers[complex_obs.REPAIR] = job.repair
            conn.send(destination=self.destination, body=body, headers=headers)
            pending.append((seq, receipt))
            if len(pending) >= self.window:
                self._confirm(job, pending)
        while pending:
            self._confirm(job, pending)
        file_jobs.finished(self.db, job.name, job.generation)
        self.failures = 0
        log.info("file %s: %d chunk(s) confirmed by the broker", complex_obs.shown(job.name), chunks)
        return True

    def _confirm(self, job: Job, pending: deque[tuple[int, str]]) -> None:
        seq, receipt = pending[0]
        self.receipts.wait(receipt, SILENCE_SECONDS, self.stop)
        pending.popleft()
        file_jobs.confirmed(self.db, job.name, job.generation, seq + 1)

    def _missing(self, job: Job, exc: OSError) -> None:
        attempts = job.attempts + 1
        delay = min(self.retry_max, backoff(attempts, multiplier=2, maximum=self.retry_max))
        why = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        file_jobs.missing(self.db, job.name, attempts, time.time() + delay, why)
        log.warning("file %s (obs %s) is not readable in %s (%s), attempt %d; looking again in %.0f s",
                    complex_obs.shown(job.name), job.obs_uuid, self.folder, why, attempts, delay)

    def _obs_names(self, job: Job) -> bool:
        """Whether the job's obs still names its file at the site (a file missing because its obs was deleted or
        renamed first will never come)."""
        with self.cfg.db("site_db").connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT value_complex FROM obs WHERE uuid = %s", (job.obs_uuid,))
            row = cur.fetchone()
        return row is not None and complex_obs.file_name(row[0]) == job.name

    def _gone(self, job: Job) -> None:
        """Tell central the file will never come (its obs there, if it waits, is applied without it and then
        deleted or renamed by the site's later change), then record the job as gone."""
        conn = self._connect()
        receipt = uuidlib.uuid4().hex
        conn.send(destination=self.destination, body=b"", headers={
            **self.speak.send_headers(False, self.broker.user), "persistent": "true", "receipt": receipt,
            complex_obs.GONE: "1",
            complex_obs.SITE: self.site, wire.GROUP_HEADER: self.site, complex_obs.NAME: job.name,
            complex_obs.OBS: job.obs_uuid or ""})
        self.receipts.wait(receipt, SILENCE_SECONDS, self.stop)
        file_jobs.gone(self.db, job.name)
        log.warning("file %s: not in %s and its obs %s was deleted or renamed at the site: it will never be sent "
                    "(central is told)", complex_obs.shown(job.name), self.folder, job.obs_uuid)

    def _confirmed(self, name: str) -> int:
        row = self.db.execute("SELECT confirmed FROM complex_file WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    # ---- the connection --------------------------------------------------------------------------------------
    def _connect(self) -> stomp.Connection12:
        if self.conn is not None and self.conn.is_connected() and not self.receipts.closed \
                and self.receipts.error is None:
            return self.conn
        self._disconnect()
        self.receipts = _Receipts()
        self.conn = _open(self.broker, listener=self.receipts)
        self.speak = dialect(server_of(self.conn))
        return self.conn

    def _disconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.disconnect()
            self.conn = None


def run_lane(cfg: Config, stop: threading.Event) -> None:
    """The file lane of `dbsync sender` (supervised beside the chain)."""
    FileLane(cfg, stop).run()


def queue_files(cfg: Config, messages: list[dict[str, Any]], repair: str) -> int:
    """Files the obs of `messages` name, queued again (verify --repair, resync): the running sender's lane sends
    them and central may replace its copy. Returns how many were queued."""
    if not cfg["sender.complex_obs_dir"]:
        return 0
    jobs = file_jobs.jobs_of(messages)
    db = sqlite3.connect(cfg.home / "state.sqlite", timeout=30, isolation_level=None)
    try:
        db.execute(file_jobs.SCHEMA)
        file_jobs.queue_now(db, jobs, repair)
    finally:
        db.close()
    return len(jobs)
