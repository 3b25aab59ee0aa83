"""The inbox read one batch ahead: while apply writes batch n, a thread reads and parses batch n+1 on its own
connection, so apply's client work overlaps central's (PyMySQL waits on the socket without the GIL).

Nothing read ahead is trusted blindly: apply deletes the rows it handled in the transaction that applies them, so
the read-ahead leaves out the rows apply holds; when it is handed over, the rows something else removed meanwhile
(an operator's action) are dropped from it, and an empty read-ahead is read again (rows may have arrived since).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection
from typing import Any

from dbsync_cli.receiver import inbox
from dbsync_cli.receiver.message import Parsed

log = logging.getLogger("dbsync.apply")

Batch = list[tuple[dict[str, Any], list[Parsed]]]  # inbox records with their messages


class InboxReader:
    """`take()` → the next batch of inbox records and their parsed messages, the one after it read meanwhile."""

    def __init__(self, applier: Any, limit: int, sites: Collection[str | None] | None = None):
        self.applier, self.limit = applier, limit
        self.sites = sites  # a receiver worker's sites (worker_sites.py: they change between batches)
        self.schema = applier.settings.state_schema
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._ahead: Batch | None = None
        self._error: BaseException | None = None

    def take(self) -> Batch:
        """The next batch (live changes first), in the broker's delivery order; [] when the inbox is empty."""
        ahead = self._collect()
        if ahead:
            there = inbox.present(self.applier.conn, self.schema, [r["inbox"] for r, _ in ahead])
            held = None if self.sites is None else set(self.sites)  # a site let go meanwhile is another's now
            ahead = [(r, items) for r, items in ahead if r["inbox"] in there and (held is None or r["site"] in held)]
        sites = None if self.sites is None else frozenset(self.sites)  # the thread reads a copy
        batch = ahead or self._read(self.applier.conn, (), sites)
        if batch:
            self._start([r["inbox"] for r, _ in batch], sites)
        return batch

    def close(self) -> None:
        self._collect()
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a dead connection is closed already
                self._conn.close()
            self._conn = None

    def _read(self, conn: Any, besides: list[int] | tuple[int, ...], sites: frozenset[str | None] | None) -> Batch:
        records = inbox.oldest(conn, self.schema, self.limit, besides=besides, sites=sites)
        return [(record, self.applier.expand(record)) for record in records]

    def _start(self, besides: list[int], sites: frozenset[str | None] | None) -> None:
        def run() -> None:
            try:
                if self._conn is None:
                    self._conn = self.applier.settings.central.connect(autocommit=False)
                self._ahead = self._read(self._conn, besides, sites)
            except BaseException as exc:  # noqa: BLE001 - handed to take(), which reads again itself
                self._error = exc

        self._ahead, self._error = None, None
        self._thread = threading.Thread(target=run, name="dbsync-inbox-ahead", daemon=True)
        self._thread.start()

    def _collect(self) -> Batch | None:
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        if self._error is not None:  # the read-ahead's connection failed: read on apply's own instead
            log.info("inbox read-ahead failed (%s): reading on apply's connection", self._error)
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None
            return None
        return self._ahead
