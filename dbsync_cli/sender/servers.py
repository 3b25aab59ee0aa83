"""What differs between the site servers OpenMRS runs on (MariaDB, MySQL 8, MySQL 5.7): the one place that knows.

Today: how an initial snapshot gets the binlog position that matches its consistent read (`open_snapshot`).

- ``mariadb``: `START TRANSACTION WITH CONSISTENT SNAPSHOT` reports the matching position in
  `binlog_snapshot_file/position` (MariaDB only). No lock, no extra privilege.
- ``lock``: `FLUSH TABLES WITH READ LOCK` held only while the transaction starts and `SHOW MASTER STATUS` is read
  (what mysqldump --single-transaction --master-data does). Exact on every server; needs RELOAD, and briefly stops
  the server's writes (it waits at most `lock_wait_timeout` seconds for running statements, then retries).
- ``log_status``: MySQL 8.0.17+ without RELOAD: the position from `performance_schema.log_status` (BACKUP_ADMIN),
  read before and after the transaction starts; only two equal reads are taken (no binlog write in between; a
  commit already in the binlog but not yet visible to the new transaction is not seen: `lock` is exact). Forced on
  MariaDB (which lacks the table) the reads are SHOW MASTER STATUS and the snapshot's binlog_snapshot_* position.

``auto`` picks ``mariadb`` on MariaDB, ``lock`` on MySQL when the user has RELOAD, ``log_status`` on MySQL 8.0.17+
with BACKUP_ADMIN; `sender.snapshot_method` forces one (the tests force each on MariaDB).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
import pymysql

from dbsync_cli import exitcodes
from dbsync_cli.i18n import _
from dbsync_cli.retrying import pause
from dbsync_cli.sender.binlog import CaptureStop, Position, current_position

log = logging.getLogger("dbsync.snapshot")

METHODS = ("auto", "mariadb", "lock", "log_status")
#: lock: seconds FLUSH TABLES WITH READ LOCK may wait for running statements (the server's writes wait meanwhile)
LOCK_WAIT_SECONDS = 5
ATTEMPTS = 5


@dataclass(frozen=True)
class Server:
    flavor: str  # mariadb | mysql
    version: tuple[int, int, int]
    text: str  # VERSION() as the server says it

    @property
    def label(self) -> str:
        return f"{'MariaDB' if self.flavor == 'mariadb' else 'MySQL'} {'.'.join(map(str, self.version))}"


def server(conn: Any) -> Server:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION(), @@version_comment")
        text, comment = (str(v or "") for v in cur.fetchone())
    numbers = [int(n) for n in re.findall(r"\d+", text)[:3]] + [0, 0, 0]
    flavor = "mariadb" if "mariadb" in (text + comment).lower() else "mysql"
    return Server(flavor, (numbers[0], numbers[1], numbers[2]), text)


def choose(conn: Any, forced: str = "auto") -> str:
    """The snapshot method for this server and user (`forced` unless it is auto)."""
    if forced != "auto":
        return forced
    found = server(conn)
    if found.flavor == "mariadb":
        return "mariadb"
    from dbsync_cli.checks import privileges  # the config checks' module, loaded only for a MySQL snapshot

    granted, _local = privileges(conn, "")
    if {"RELOAD", "ALL PRIVILEGES"} & granted:
        return "lock"
    if found.version >= (8, 0, 17) and "BACKUP_ADMIN" in granted:
        return "log_status"
    raise CaptureStop(_("{server}: an initial snapshot needs RELOAD (or, on MySQL 8.0.17+, BACKUP_ADMIN) for the "
                        "sender's user to read the binlog position that matches it").format(server=found.label),
                      exitcodes.PRIVILEGES)


def open_snapshot(conn: Any, method: str) -> Position:
    """Start a REPEATABLE READ consistent-snapshot transaction on `conn` and return the binlog position it matches.
    The transaction stays open: the snapshot reads through it."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    if method == "mariadb":
        return _mariadb(conn)
    if method == "lock":
        return _retrying(conn, _locked, "FLUSH TABLES WITH READ LOCK")
    if method == "log_status":
        return _retrying(conn, _log_status, "log_status")
    raise ValueError(f"sender.snapshot_method {method!r}: expected one of {', '.join(METHODS)}")


def _mariadb(conn: Any) -> Position:
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    return _snapshot_position(conn)


def _locked(conn: Any) -> Position | None:
    with conn.cursor() as cur:
        cur.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
        try:
            cur.execute("FLUSH TABLES WITH READ LOCK")
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == 1205:  # a long statement holds a table: let the server's writes go on
                return None
            raise
        try:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            position = current_position(conn)
        finally:
            cur.execute("UNLOCK TABLES")
    return position


def _log_status(conn: Any) -> Position | None:
    flavor = server(conn).flavor
    before = _read_log_status(conn, flavor)
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    after = _snapshot_position(conn) if flavor == "mariadb" else _read_log_status(conn, flavor)
    if before != after:  # a commit went by between the reads: the snapshot cannot be placed exactly
        conn.rollback()
        return None
    return before


def _snapshot_position(conn: Any) -> Position:
    """MariaDB: the binlog position the open consistent-snapshot transaction matches."""
    with conn.cursor() as cur:
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
    if "binlog_snapshot_file" not in status:
        raise CaptureStop(_("the server reports no binlog_snapshot_file (not MariaDB?): set "
                            "sender.snapshot_method = \"lock\" (needs RELOAD) or \"log_status\" (MySQL 8)"),
                          exitcodes.BINLOG_SETTINGS)
    return Position(str(status["binlog_snapshot_file"]), int(status["binlog_snapshot_position"]))


def _read_log_status(conn: Any, flavor: str) -> Position:
    """MySQL 8: performance_schema.log_status's binlog position. MariaDB has no such table: forced there (the
    tests), the first read comes from SHOW MASTER STATUS and the second is the snapshot's own position, so the
    method's logic (two equal reads, else retried) runs on every server, exactly."""
    if flavor == "mariadb":
        return current_position(conn)
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT LOCAL FROM performance_schema.log_status")
        except pymysql.err.ProgrammingError as exc:
            raise CaptureStop(_("performance_schema.log_status cannot be read ({error}): it needs MySQL 8.0.17+ "
                                "and BACKUP_ADMIN; use sender.snapshot_method = \"lock\" (RELOAD)").format(
                error=exc.args[-1]),
                              exitcodes.BINLOG_SETTINGS) from None
        (local,) = cur.fetchone()
    data = orjson.loads(local)
    return Position(str(data["binary_log_file"]), int(data["binary_log_position"]))


def _retrying(conn: Any, attempt: Any, what: str) -> Position:
    for number in range(1, ATTEMPTS + 1):
        position = attempt(conn)
        if position is not None:
            return position
        log.warning("snapshot start: %s did not get a clean position (attempt %d of %d); trying again", what,
                    number, ATTEMPTS)
        pause(min(2**number, 10))  # ends at once on SIGTERM (retrying.py)
    raise CaptureStop(_("the snapshot could not start: {what} found the server busy {attempts} times in a "
                        "row").format(what=what, attempts=ATTEMPTS),
                      exitcodes.FAILURE)
