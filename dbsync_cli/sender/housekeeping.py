"""Binlog housekeeping (the OpenMRS EIP binlog purger): purge the site server's binlog files the sender no longer
needs, so a clinic's disk does not fill up when nobody else reads or expires them.

Only files wholly before the *confirmed* checkpoint's file are candidates, and the newest `keep_files` of those stay
(a margin for a re-read, and for other readers). The server itself refuses to purge a file a connected replica is
still reading (MariaDB and MySQL both skip it with a warning), so a replica behind the sender keeps its files. It
runs after a checkpoint was saved, at most once per `interval` seconds, and never stops the sender: a failure (a
missing BINLOG ADMIN grant) is a WARNING each time it is tried.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pymysql

from dbsync_cli.db import DbParams

log = logging.getLogger("dbsync.housekeeping")


def purge_target(files: list[str], checkpoint_file: str, keep_files: int) -> str | None:
    """The file to `PURGE BINARY LOGS TO` (everything before it goes), or None when nothing may go: the files
    before the checkpoint's, minus the newest `keep_files` of them."""
    if checkpoint_file not in files:
        return None  # the checkpoint is not in the server's history: capture's own checks handle that
    index = files.index(checkpoint_file) - max(0, keep_files)
    return files[index] if index > 0 else None


def purge_binlogs(conn: Any, checkpoint_file: str, keep_files: int) -> list[str]:
    """Purge what `purge_target` allows; returns the files that went (as the server lists them before and after)."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        before = [str(row[0]) for row in cur.fetchall()]
        target = purge_target(before, checkpoint_file, keep_files)
        if target is None:
            return []
        cur.execute("PURGE BINARY LOGS TO %s", (target,))
        cur.execute("SHOW BINARY LOGS")
        after = {str(row[0]) for row in cur.fetchall()}
    return [name for name in before if name not in after]


@dataclass
class BinlogPurger:
    """Called with every saved checkpoint (sender.purge_binlogs); purges at most once per `interval` seconds."""

    db: DbParams
    keep_files: int
    interval: float = 300.0
    _last: float | None = None

    def after_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        now = time.monotonic()
        file = checkpoint.get("file")
        if not isinstance(file, str) or (self._last is not None and now - self._last < self.interval):
            return
        self._last = now
        try:
            with self.db.connect(connect_timeout=10, read_timeout=60) as conn:
                gone = purge_binlogs(conn, file, self.keep_files)
        except pymysql.MySQLError as exc:
            reason = " ".join(str(exc.args[-1] if exc.args else exc).split())
            log.warning("cannot purge binlogs before %s: %s (sender.purge_binlogs needs BINLOG ADMIN on MariaDB, "
                        "BINLOG_ADMIN or SUPER on MySQL)", file, reason)
            return
        if gone:
            log.info("purged %d binlog file(s) before the checkpoint's %s (keeping %d): %s … %s", len(gone), file,
                     self.keep_files, gone[0], gone[-1])
