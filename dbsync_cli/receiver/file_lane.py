"""The receiver's file lane: chunks from `<destination>.files` → `complex_file_chunk`, then the whole file into central's
complex obs folder, written atomically, before the obs that names it is applied.

It is consume's session (receiver/consume.py: reconnects, ACK only after COMMIT, never NACK) with another `store`:
each chunk is checked (its site and broker user, its name, its sha256, its place in the file) and stored with
`INSERT IGNORE` on (site, name, file sha256, seq), so a chunk sent again after a crash is recognised. When a file's
chunks are all there, they are read back one at a time (constant memory), inflated into a temporary file in the
folder, checked against the file's sha256, fsynced and renamed over the name; only then is the file recorded
(`complex_file`), its chunks deleted and the obs rows waiting for it made due, in one transaction. A crash in
between finds the chunks still there at start-up (`recover`) and does it again; the file already in place with
the same bytes is simply recorded. A name central already holds with other bytes is a conflict, never an
overwrite, unless the site's verify --repair or resync sends the site's own file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from dbsync_cli import complex_obs
from dbsync_cli.files import sync_dir
from dbsync_cli.receiver import complex_files, reasons, state, trust
from dbsync_cli.receiver.complex_files import CONFLICT, REFUSED
from dbsync_cli.receiver.consume import Consumer, ConsumeSettings
from dbsync_cli.receiver.inbox import InboxRow
from dbsync_cli.sql import Sql, sql

log = logging.getLogger("dbsync.files")

_SHA = re.compile(r"^[0-9a-f]{64}$")
#: a chunk's bytes after inflating, at most (the sender's chunk size is at most 1 MB)
CHUNK_LIMIT = 1_048_576
STALE_PART_SECONDS = 600
NAME_LOCK_SECONDS = 120
#: a file written into central's folder: the receiver's user writes, the folder's group (OpenMRS's) reads
FILE_MODE = 0o640
#: the consumer window of the file lane: a few chunks ahead, so the rows' lane keeps central's attention
WINDOW_BYTES = 262_144


class _Refused(Exception):  # noqa: N818 - a verdict on a chunk
    def __init__(self, why: reasons.Reason, site: str, name: str) -> None:
        super().__init__(str(why))
        self.why, self.site, self.name = why, site, name


class FileConsumer(Consumer):
    """Consume's session on the file lane: `store` keeps chunks and assembles complete files."""

    def __init__(self, settings: ConsumeSettings, stop: threading.Event, folder: Path, max_bytes: int,
                 arrived: threading.Event | None = None) -> None:
        super().__init__(settings, stop)
        self.folder = folder
        self.max_bytes = max_bytes
        self.arrived = arrived
        self.s = state.schema_name(settings.state_schema)
        self.files_written = 0

    def store(self, db: Any, frames: list[Any], signed_by: str | None = None) -> list[InboxRow]:
        sites = state.sites(db, self.settings.state_schema)
        complete: set[tuple[str, str, str]] = set()
        with db.cursor() as cur:
            for frame in frames:
                try:
                    key = self._chunk(cur, frame, sites)
                except _Refused as refused:
                    complex_files.issue(cur, self.s, refused.site, REFUSED, refused.name, None, refused.why)
                    continue
                if key is not None:
                    complete.add(key)
        db.commit()
        for site, name, sha in sorted(complete):
            self.files_written += int(assemble(db, self.s, self.folder, site, name, sha, self.arrived))
        return []

    def _chunk(self, cur: Any, frame: Any, sites: dict[str, state.Site]) -> tuple[str, str, str] | None:
        """Store one chunk; returns its file's key when the file may be complete now."""
        headers = frame.headers
        site_id = headers.get(complex_obs.SITE) or ""
        name = headers.get(complex_obs.NAME, "")
        seq_text = headers.get(complex_obs.SEQ, "?")

        def refuse(code: str, **args: Any) -> _Refused:
            return _Refused(reasons.reason(code, **args), site_id or "?", name)

        site = sites.get(site_id)
        if site is None or site.disabled:
            raise refuse("site_unknown", site=site_id, why="is not registered" if site is None else "is disabled")
        not_trusted = trust.refused_sender(site, trust.stamped_user(headers))  # unstamped: refused, as rows are
        if not_trusted is not None:
            raise _Refused(not_trusted, site_id, name)
        why = complex_obs.refusal(name)
        if why is not None:
            raise refuse("file_name_refused", name=complex_obs.shown(name), why=why)
        if headers.get(complex_obs.GONE) == "1":
            obs_uuid = headers.get(complex_obs.OBS) or None
            if complex_files.gone(cur, self.s, site_id, name, None if obs_uuid is None else obs_uuid[:38]) and \
                    self.arrived is not None:
                self.arrived.set()
            log.info("complex obs file %s of site %s will never come (its obs was deleted or renamed there)",
                     complex_obs.shown(name), site_id)
            return None
        body = frame.body if isinstance(frame.body, bytes) else (frame.body or "").encode("utf-8")
        sha = headers.get(complex_obs.SHA256, "")
        try:
            size, chunks, seq = (int(headers.get(h, "")) for h in (complex_obs.SIZE, complex_obs.CHUNKS,
                                                                    complex_obs.SEQ))
        except ValueError:
            raise refuse("file_chunk_refused", name=complex_obs.shown(name), seq=seq_text,
                         why="size, chunks or seq is not a number") from None
        problem = None
        if not _SHA.match(sha):
            problem = "the file's sha256 is not 64 hex digits"
        elif not 0 <= size <= self.max_bytes:
            problem = f"a file of {size} bytes (the limit is {self.max_bytes})"
        elif not (1 <= chunks <= size // 1024 + 1 and 0 <= seq < chunks):
            problem = f"chunk {seq} of {chunks} does not fit a file of {size} bytes"
        elif hashlib.sha256(body).hexdigest() != headers.get(complex_obs.CHUNK_SHA256):
            problem = "the chunk's sha256 does not match its body"
        else:
            try:  # no chunk holds more than its whole file (a deflate bomb is refused here, not in the folder)
                complex_obs.decode_chunk(body, headers.get(complex_obs.ENCODING, ""), min(CHUNK_LIMIT, max(size, 1)))
            except (ValueError, OSError) as exc:
                problem = str(exc)
        if problem is not None:
            raise refuse("file_chunk_refused", name=complex_obs.shown(name), seq=seq, why=problem)
        repair = (headers.get(complex_obs.REPAIR) or None)
        obs_uuid = headers.get(complex_obs.OBS) or None
        cur.execute(sql("INSERT IGNORE INTO {}.complex_file_chunk (site, name, sha256, seq, chunks, size, encoding, "
                        "repair, obs_uuid, data, date_created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        self.s),
                    (site_id, name, sha, seq, chunks, size, headers.get(complex_obs.ENCODING), None if repair is None
                     else repair[:100], None if obs_uuid is None else obs_uuid[:38], body, complex_files.now()))
        return (site_id, name, sha) if seq == chunks - 1 or cur.rowcount else None


def assemble(db: Any, s: Sql, folder: Path, site: str, name: str, sha: str,
             arrived: threading.Event | None = None) -> bool:
    """Write a file whose chunks are all stored; returns whether it is in place now (False: not complete yet, or
    refused, or a conflict, each recorded). Under a server lock per name: two lanes (`dbsync receiver` beside a
    `dbsync consume`) placing one name for two sites at once would otherwise both see it free."""
    lock = "dbsync-cobs-" + hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()
    with db.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, %s)", (lock, NAME_LOCK_SECONDS))
        got = cur.fetchone()
    if not got or got[0] != 1:
        raise TimeoutError(f"complex obs file {complex_obs.shown(name)}: another lane held its name for "
                           f"{NAME_LOCK_SECONDS} s")
    try:
        return _assemble(db, s, folder, site, name, sha, arrived)
    finally:
        with db.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))


def _assemble(db: Any, s: Sql, folder: Path, site: str, name: str, sha: str,
              arrived: threading.Event | None) -> bool:
    with db.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*), MAX(chunks), MAX(size), MAX(repair), MAX(obs_uuid) FROM "
                        "{}.complex_file_chunk WHERE site = %s AND name = %s AND sha256 = %s", s), (site, name, sha))
        found: tuple[Any, ...] = cur.fetchone() or (0, 0, 0, None, None)
        count, chunks, size, repair, obs_uuid = int(found[0]), int(found[1] or 0), int(found[2] or 0), *found[3:]
        if not count or count < chunks:
            db.commit()
            return False
        target = complex_obs.path_in(folder, name)
        temporary = folder / f".dbsync-{uuidlib.uuid4().hex}.part"
        try:
            written = _write(cur, s, temporary, site, name, sha, chunks, size)
            verdict = None if written == (sha, size) else reasons.reason("file_digest", name=complex_obs.shown(
                name))
            if verdict is None:
                verdict = _place(cur, s, folder, target, temporary, site, name, sha, repair)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        if verdict is None:
            complex_files.record(cur, s, site, name, sha, size, obs_uuid)
            made_due = state.fix_changed(cur, s, complex_files.cause(site, name))
        else:
            complex_files.issue(cur, s, site, REFUSED if verdict.code == "file_digest" else CONFLICT, name, sha,
                                verdict)
        cur.execute(sql("DELETE FROM {}.complex_file_chunk WHERE site = %s AND name = %s AND sha256 = %s", s),
                    (site, name, sha))  # only this version's: a newer one (a repair) may be arriving already
    db.commit()
    if verdict is not None:
        return False
    log.info("complex obs file %s of site %s: %d bytes in place%s; %d obs row(s) due", complex_obs.shown(name),
             site, size, " (repair)" if repair else "", made_due)
    if arrived is not None:
        arrived.set()
    return True


def _write(cur: Any, s: Sql, temporary: Path, site: str, name: str, sha: str, chunks: int,
           declared: int) -> tuple[str, int]:
    """The chunks inflated into `temporary`, one at a time, fsynced; returns the bytes' sha256 and size. Stops at
    the first byte beyond the `declared` size (the digest then cannot match): a sender cannot fill central's disk."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # whatever the process's umask (077 for its own state): OpenMRS's group reads it
    with os.fdopen(fd, "wb") as out:
        for seq in range(chunks):
            cur.execute(sql("SELECT data, encoding FROM {}.complex_file_chunk WHERE site = %s AND name = %s AND "
                            "sha256 = %s AND seq = %s", s), (site, name, sha, seq))
            data, encoding = cur.fetchone()
            raw = complex_obs.decode_chunk(bytes(data), str(encoding), min(CHUNK_LIMIT, max(declared, 1)))
            out.write(raw)
            digest.update(raw)
            size += len(raw)
            if size > declared:
                break
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _place(cur: Any, s: Sql, folder: Path, target: Path, temporary: Path, site: str, name: str, sha: str,
           repair: str | None) -> reasons.Reason | None:
    """Rename the checked file over its name, or say why not (a conflict): central's folder never loses bytes
    dbsync did not write, nor another site's file."""
    others = [holder for holder in complex_files.holders(cur, s, name) if holder[0] != site]
    ours = [found for holder, found in complex_files.holders(cur, s, name) if holder == site]
    on_disk: str | None = None
    why = None
    if target.is_symlink() or (target.exists() and not target.is_file()):
        return reasons.reason("file_conflict", name=complex_obs.shown(name), why="not a regular file")
    with contextlib.suppress(FileNotFoundError):
        on_disk = complex_obs.sha256_of(target)[0]
    if others:
        why = "another site's file"
    elif on_disk == sha:
        return None  # already in place (a crash after the rename, or the same bytes)
    elif on_disk is not None and not ours:
        why = "not sent by dbsync"
    elif on_disk is not None and not repair:
        why = "changed at central" if ours[0] == sha else "the site sent other bytes before"
    if why is not None:
        return reasons.reason("file_conflict", name=complex_obs.shown(name), why=why)
    temporary.replace(target)
    sync_dir(folder)
    return None


def recover(settings: ConsumeSettings, folder: Path, arrived: threading.Event | None = None) -> int:
    """Files whose chunks were all stored before a crash: written now. Returns how many. A temporary file a kill
    left behind (untouched for STALE_PART_SECONDS: no assembly is writing it) is removed first."""
    for part in folder.glob(".dbsync-*.part"):
        with contextlib.suppress(OSError):
            if time.time() - part.lstat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
                log.info("removed %s, a temporary file an interrupted assembly left", part)
    s = state.schema_name(settings.state_schema)
    db = settings.db.connect(autocommit=False)
    written = 0
    try:
        with db.cursor() as cur:
            cur.execute(sql("SELECT site, name, sha256 FROM {}.complex_file_chunk GROUP BY site, name, sha256 "
                            "HAVING COUNT(*) >= MAX(chunks)", s))
            complete = cur.fetchall()
        db.commit()
        for site, name, sha in complete:
            written += int(assemble(db, s, folder, str(site), str(name), str(sha), arrived))
    finally:
        db.close()
    return written


def run_files(settings: ConsumeSettings, stop: threading.Event, folder: Path, max_bytes: int,
              arrived: threading.Event | None = None) -> int:
    """The receiver's file lane until stop; returns the files written."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o750)  # whatever the receiver's umask (077): OpenMRS's group reads the files in it
    written = recover(settings, folder, arrived)
    consumer = FileConsumer(settings, stop, folder, max_bytes, arrived)
    for _rows in consumer.batches():
        pass
    return written + consumer.files_written
