"""The site server's clock against the sender host's: a server whose clock runs ahead dates its changes (NOW() in
date_changed, binlog event times) in central's future, where they would beat central's real later edits.

Measured by a query (UTC_TIMESTAMP(6) against this host's clock, the round trip halved away) when capture starts
and every `MEASURE_SECONDS` while it streams, and watched on every binlog event: an event dated ahead of this
host's clock is evidence too. The latest measurement is kept in the sender's store (`dbsync status` shows it) and
carried on each live message as `source.skew_ms`, so that central can name it. The host's own clock is taken to be
right (NTP): `config check` and `status` measure the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from dbsync_cli.sender.checkpoint import CheckpointStore

log = logging.getLogger("dbsync.capture")

CLOCK = "clock"  # the store's record of the last measurement
MEASURE_SECONDS = 300  # a query this often while streaming
EVIDENCE_SECONDS = 30  # a binlog event dated this far ahead of this host's clock (past the last query) is evidence
SAVE_SECONDS = 60  # binlog evidence is saved at most this often


def measure(conn: Any) -> float:
    """The server's clock minus this host's, in seconds (positive: the server runs ahead)."""
    before = time.time()
    with conn.cursor() as cur:
        cur.execute("SELECT UTC_TIMESTAMP(6)")
        (server,) = cur.fetchone()
    after = time.time()
    return server.replace(tzinfo=dt.UTC).timestamp() - (before + after) / 2


def describe(skew: float) -> str:
    """'10 min ahead of', '45 s behind' (of this host's clock): English, for logs and stored reasons."""
    seconds = abs(skew)
    amount = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"
    return f"{amount} {'ahead of' if skew >= 0 else 'behind'}"


def load(home: Path) -> dict[str, Any] | None:
    """The last measurement a sender kept (None: none yet, or no store)."""
    if not (home / "state.sqlite").exists():
        return None
    store = CheckpointStore(home)
    try:
        return store.load(CLOCK)
    finally:
        store.close()


class ClockWatch:
    """Measures while capture streams; `skew_ms` is what the live messages carry (None before any measurement)."""

    def __init__(self, db: Any, home: Path | None, *, periodic: bool = True) -> None:
        self.db = db
        self.home = home
        self.periodic = periodic
        self.skew: float | None = None
        self.measured_at = 0.0  # monotonic
        self.binlog_ahead: float | None = None
        self.evidence_saved_at: float | None = None  # monotonic time binlog evidence was last saved
        self.warned = False

    @property
    def skew_ms(self) -> int | None:
        return None if self.skew is None else round(self.skew * 1000)

    def tick(self) -> None:
        """Measure by a query when due (at once, then every MEASURE_SECONDS when periodic); never fails capture."""
        now = time.monotonic()
        if self.skew is not None and (not self.periodic or now - self.measured_at < MEASURE_SECONDS):
            return
        self.measured_at = now
        try:
            with self.db.connect() as conn:
                self.skew = measure(conn)
        except Exception as exc:  # noqa: BLE001 - a measurement is never worth stopping capture for
            log.debug("site server clock not measured: %s", exc)
            return
        self._save("query")

    def event(self, timestamp: int | float) -> None:
        """A binlog event's time (seconds): dated ahead of this host's clock beyond the last measurement is
        evidence that the server's clock runs ahead (events from the past are just lag)."""
        ahead = float(timestamp) - time.time()
        if ahead < EVIDENCE_SECONDS or ahead <= (self.skew or 0.0) + 2:
            return
        self.binlog_ahead = ahead
        if self.skew is None or ahead > self.skew:
            self.skew = ahead
        now = time.monotonic()
        if self.evidence_saved_at is None or now - self.evidence_saved_at >= SAVE_SECONDS:
            self.evidence_saved_at = now
            self._save("binlog")

    def _save(self, how: str) -> None:
        assert self.skew is not None
        if abs(self.skew) >= EVIDENCE_SECONDS and not self.warned:
            self.warned = True
            log.warning("the site server's clock is %s this host's (measured by %s): its changes are dated "
                        "wrongly at central; set its clock right (NTP)", describe(self.skew),
                        "a binlog event's time" if how == "binlog" else "a query")
        if self.home is None:
            return
        record = {"skew_seconds": round(self.skew, 3), "at": round(time.time(), 3), "how": how,
                  "binlog_ahead_seconds": None if self.binlog_ahead is None else round(self.binlog_ahead, 1)}
        try:
            store = CheckpointStore(self.home)
            try:
                store.save(record, name=CLOCK)
            finally:
                store.close()
        except Exception as exc:  # noqa: BLE001 - status only; capture goes on
            log.debug("clock measurement not saved: %s", exc)
