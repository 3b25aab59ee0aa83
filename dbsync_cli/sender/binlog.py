"""The site server's binlog: what capture is told to read (settings, positions) and checks before it trusts it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from dbsync_cli import exitcodes
from dbsync_cli.db import DbParams
from dbsync_cli.sql import placeholders, sql

log = logging.getLogger("dbsync.binlog")

REQUIRED = {"log_bin": "1", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}


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
    found = _variables(conn, [*REQUIRED, "expire_logs_days", "binlog_expire_logs_seconds"])
    wrong = []
    for name, wanted in REQUIRED.items():
        value = found.get(name, "(absent)")
        ok = value.upper() in ("1", "ON") if name == "log_bin" else value.upper() == wanted
        if not ok:
            wrong.append(f"{name}={value}")
    if wrong:
        raise CaptureStop(
            "site server binlog settings cannot support capture (" + ", ".join(wrong) + "): start it with "
            "--log-bin --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL",
            exitcodes.BINLOG_SETTINGS,
        )
    seconds = int(float(found.get("binlog_expire_logs_seconds", "0") or 0))
    if not seconds:
        seconds = int(float(found.get("expire_logs_days", "0") or 0) * 86400)
    if seconds and min_retention_hours and seconds < min_retention_hours * 3600:
        log.warning(
            "binlog retention is %.1f h, shorter than the %d h minimum: an outage longer than that loses the "
            "checkpoint (raise binlog_expire_logs_seconds)", seconds / 3600, min_retention_hours,
        )


def binary_logs(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [row[0] for row in cur.fetchall()]


def current_position(conn: Any) -> Position:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if not row:
        raise CaptureStop("binary logging is off on the site server", exitcodes.BINLOG_SETTINGS)
    return Position(row[0], int(row[1]))


def check_available(conn: Any, position: Position) -> bool:
    return position.file in binary_logs(conn)


def purged_error(position: Position) -> CaptureStop:
    return CaptureStop(
        f"checkpoint {position} is in a binlog file the server has purged: changes since then are lost to capture; "
        "run `dbsync capture --snapshot when_needed` (or set sender.snapshot = \"when_needed\") to reload from a "
        "snapshot, and keep binlogs longer",
        exitcodes.BINLOG_PURGED,
    )


@dataclass
class CaptureSettings:
    db: DbParams  # the replication user, database = the OpenMRS schema
    server_id: int
    tables: list[str]  # synced tables, parents first
    snapshot: str = "initial"  # initial | never | when_needed
    until_idle: bool = False
    max_events: int | None = None
    heartbeat_seconds: float = 1.0
    min_retention_hours: int = 0
    chunk_rows: int = 5000
    progress: bool = False
    secret_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # never leave the site, not even in NDJSON
    stop: threading.Event = field(default_factory=threading.Event)
