"""The site server's binlog: what capture is told to read (settings, positions) and checks before it trusts it."""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import FormatDescriptionEvent

from dbsync_cli import exitcodes
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import Connection, DbParams
from dbsync_cli.i18n import _
from dbsync_cli.sender import row_reader
from dbsync_cli.sql import placeholders, sql

log = logging.getLogger("dbsync.binlog")

REQUIRED = {"log_bin": "1", "binlog_format": "ROW", "binlog_row_image": "FULL"}
#: FULL: row events carry column names; MINIMAL, NO_LOG or absent (MySQL 5.7): names from the schema history
METADATA = "binlog_row_metadata"


class CaptureStop(Exception):
    """A condition an operator must fix; carries the process exit code and one line naming the remedy."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Position:
    file: str
    pos: int

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"


def _variables(conn: Any, names: list[str]) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(sql("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({})", placeholders(len(names))), names)
        return {str(k).lower(): str(v) for k, v in cur.fetchall()}


def check_settings(conn: Any, min_retention_hours: int = 0) -> None:
    """Stop unless the binlog is ROW/FULL/FULL; warn when retention is shorter than the configured minimum."""
    found = _variables(conn, [*REQUIRED, METADATA, "expire_logs_days", "binlog_expire_logs_seconds"])
    wrong = []
    for name, wanted in REQUIRED.items():
        value = found.get(name, "(absent)")
        ok = value.upper() in ("1", "ON") if name == "log_bin" else value.upper() == wanted
        if not ok:
            wrong.append(f"{name}={value}")
    if wrong:
        raise CaptureStop(
            _("site server binlog settings cannot support capture ({wrong}): start it with --log-bin "
              "--binlog-format=ROW --binlog-row-image=FULL (and --binlog-row-metadata=FULL where it exists)").format(
                wrong=", ".join(wrong)),
            exitcodes.BINLOG_SETTINGS,
        )
    if found.get(METADATA, "").upper() != "FULL":
        log.info("binlog_row_metadata=%s: column names come from the sender's schema history",
                 found.get(METADATA, "(absent: MySQL 5.7)"))
    seconds = int(float(found.get("binlog_expire_logs_seconds", "0") or 0))
    if not seconds:
        seconds = int(float(found.get("expire_logs_days", "0") or 0) * 86400)
    if seconds and min_retention_hours and seconds < min_retention_hours * 3600:
        log.warning(
            "binlog retention is %.1f h, shorter than the %d h minimum: an outage longer than that loses the "
            "checkpoint (raise binlog_expire_logs_seconds)", seconds / 3600, min_retention_hours,
        )


def row_metadata(conn: Any) -> str:
    """binlog_row_metadata as the server says it; "(absent)" on servers without it (MySQL 5.7)."""
    return _variables(conn, [METADATA]).get(METADATA, "(absent)").upper()


def current_position(conn: Any) -> Position:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if not row:
        raise CaptureStop(_("binary logging is off on the site server"), exitcodes.BINLOG_SETTINGS)
    return Position(row[0], int(row[1]))


def binary_log_sizes(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return {row[0]: int(row[1]) for row in cur.fetchall()}


class PositionLost(Exception):
    """The checkpoint is not in the server's binlog any more: purged, or the binlog history restarted."""

    def __init__(self, position: Position, why: str, *, restarted: bool):
        super().__init__(why)
        self.position = position
        self.restarted = restarted

    def stop(self) -> CaptureStop:
        """What an operator is told when the sender may not re-snapshot by itself (exit 10)."""
        lost = "changes since then are lost to capture"
        return CaptureStop(f"{self}: {lost}; run `dbsync sender --snapshot when_needed` once (or set "
                           "sender.snapshot = \"when_needed\") to reload from a snapshot" + ("" if self.restarted else
                                                                          ", and keep binlogs longer"),
                           exitcodes.BINLOG_PURGED)


def sequence(file: str) -> tuple[str, int]:
    """mysql-bin.000012 → ("mysql-bin", 12)."""
    base, _dot, number = file.rpartition(".")
    return base, int(number) if number.isdigit() else -1


def check_history(conn: Any, checkpoint: dict[str, Any], born: Callable[[str], int | None]) -> None:
    """Raise PositionLost unless the checkpoint's position is in the server's current binlog history.

    File names alone do not tell: after RESET MASTER, or on a rebuilt or restored server, `mysql-bin.000001` exists
    again, and may have grown past the checkpoint, so the checkpoint also records when its file was created (the
    file's format description event, `born`), which `born(file)` reads from the server."""
    position = Position(checkpoint["file"], int(checkpoint["pos"]))
    logs = binary_log_sizes(conn)
    if position.file not in logs:
        base, number = sequence(position.file)
        later = [f for f in logs if sequence(f)[0] == base and sequence(f)[1] > number]
        if later:
            raise PositionLost(position, f"checkpoint {position} is in a binlog file the server has purged",
                               restarted=False)
        newest = max(logs, key=lambda f: sequence(f)[1], default="none")
        raise PositionLost(position, f"binlog history restarted (RESET MASTER, a restored or rebuilt server): "
                                     f"checkpoint {position} is past the server's newest binlog {newest}",
                           restarted=True)
    if logs[position.file] < position.pos:
        raise PositionLost(position, f"binlog history restarted (RESET MASTER, a restored or rebuilt server): "
                                     f"{position.file} holds {logs[position.file]} bytes, the checkpoint is at "
                                     f"{position.pos}", restarted=True)
    expected = checkpoint.get("born")
    if isinstance(expected, int):
        found = born(position.file)
        if found is not None and found != expected:
            raise PositionLost(position, f"binlog history restarted (RESET MASTER, a restored or rebuilt server): "
                                         f"{position.file} was created at {_utc(found)}, the checkpoint's at "
                                         f"{_utc(expected)}", restarted=True)


class HistoryWatch:
    """While capture waits at the end of the binlog, notice at once that the history restarted under it (RESET
    MASTER, a restored server): the file it reads is gone, or holds fewer bytes than where it reads. Otherwise the
    replication stream would wait until the new history's file grew past the old position (days on a quiet
    clinic) and then read it from the middle. One SHOW BINARY LOGS every `every` seconds, only while idle."""

    def __init__(self, db: DbParams, every: float = 10.0) -> None:
        self.db, self.every = db, every
        self.next = time.monotonic() + every

    def check(self, position: Position) -> None:
        """Raise PositionLost when `position` (where capture reads) is not in the server's history any more."""
        if time.monotonic() < self.next:
            return
        self.next = time.monotonic() + self.every
        try:
            with self.db.connect() as conn:
                check_history(conn, {"file": position.file, "pos": position.pos}, lambda file: None)
        except pymysql.MySQLError as exc:  # the stream's own connection notices an outage: not this check's job
            log.debug("binlog history check skipped: %s", exc)


def _utc(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def server_id(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        return int(cur.fetchone()[0])


def new_epoch(conn: Any) -> str:
    """A token that makes message ids unique for the life of the site: the site server's id and the time this
    binlog history was first read, renewed whenever the sender starts over from a snapshot."""
    return f"{server_id(conn)}.{_base36(time.time_ns() // 1_000_000)}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


#: the host name the reader registers under (SHOW SLAVE HOSTS): operators see it, `config check` finds clashes
REPORT_HOST = "dbsync-sender"


@dataclass
class CaptureSettings:
    db: DbParams  # the replication user, database = the OpenMRS schema
    server_id: int
    tables: list[str]  # synced tables, parents first
    snapshot: str = DEFAULTS.sender.snapshot  # initial | never | when_needed
    snapshot_method: str = DEFAULTS.sender.snapshot_method  # auto | mariadb | lock | log_status (servers.py)
    home: Path | None = None  # the sender's state directory (schema history); None: kept in memory
    until_idle: bool = False
    max_events: int | None = None
    heartbeat_seconds: float = 1.0
    min_retention_hours: int = 0
    chunk_rows: int = 5000
    progress: bool = False
    secret_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # never leave the site, not even in NDJSON
    stop: threading.Event = field(default_factory=threading.Event)


def reader(settings: CaptureSettings, file: str, pos: int, **options: Any) -> BinLogStreamReader:
    """A binlog stream from (file, pos) by file and position (mysql-replication positions MariaDB by GTID only
    when is_mariadb is set, so it stays off); its rows read by row_reader.py."""
    row_reader.install()
    db = settings.db
    return BinLogStreamReader(
        connection_settings={"host": db.host, "port": db.port, "user": db.user, "password": db.password,
                             **db.ssl_options()},
        server_id=settings.server_id, resume_stream=True, log_file=file, log_pos=pos, is_mariadb=False,
        report_slave=REPORT_HOST, pymysql_wrapper=Connection, **options)


def file_born(settings: CaptureSettings, file: str) -> int | None:
    """When the server created binlog `file` (its format description event), None if it cannot be read."""
    stream = reader(settings, file, 4, blocking=False, only_events=[FormatDescriptionEvent])
    try:
        for event in stream:
            return int(event.timestamp)
        return None
    except pymysql.err.OperationalError:
        return None
    finally:
        stream.close()


@contextmanager
def reader_id(home: Path, configured: int, *, exclusive: bool = False) -> Iterator[int]:
    """The replication server id to read the binlog with: the configured one, unless another process of this home
    (the running sender, or a `dbsync capture` for a look) reads with it already. The server disconnects one of
    two readers with the same id (MariaDB error 4052), so the second one reads under an id of its own.

    `exclusive` (the sender): a second one refuses instead (exit 16): two senders of one home would both publish
    and both move the checkpoint."""
    path = home / "binlog-reader.lock"
    home.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if exclusive:
                raise CaptureStop(_("another sender (or a capture) of {home} is running: one per home ({path} is "
                                    "locked)").format(home=home, path=path), exitcodes.ANOTHER_SENDER) from None
            other = 4_200_000_000 + os.getpid() % 90_000_000
            log.warning("another process of %s reads the binlog as server id %d: this one reads as %d", home,
                        configured, other)
            yield other
            return
        try:
            yield configured
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
