"""Issue 25, case 5, sender side: the site server's clock against the sender host's (dbsync_cli/sender/clock.py)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from dbsync_cli.sender import clock


class _Conn:
    """A connection whose server answers UTC_TIMESTAMP(6) `ahead` seconds off this host's clock."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def cursor(self) -> _Conn:
        return self

    def execute(self, statement: str) -> None:
        assert statement == "SELECT UTC_TIMESTAMP(6)"

    def fetchone(self) -> tuple[dt.datetime]:
        return (dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=self.ahead),)


class _Db:
    def __init__(self, ahead: float) -> None:
        self.conn = _Conn(ahead)
        self.connects = 0

    def connect(self) -> _Conn:
        self.connects += 1
        return self.conn


def test_measure_is_the_servers_clock_minus_this_hosts() -> None:
    assert abs(clock.measure(_Conn(600)) - 600) < 1
    assert abs(clock.measure(_Conn(-300)) + 300) < 1
    assert clock.describe(600) == "10 min ahead of" and clock.describe(-45) == "45 s behind"


def test_the_watch_measures_at_start_keeps_it_for_status_and_on_each_message(tmp_path: Path) -> None:
    db = _Db(600)
    watch = clock.ClockWatch(db, tmp_path)
    watch.tick()
    watch.tick()  # not due again yet: one query
    assert db.connects == 1 and watch.skew_ms is not None and abs(watch.skew_ms - 600_000) < 1000
    stored = clock.load(tmp_path)
    assert stored is not None and abs(stored["skew_seconds"] - 600) < 1 and stored["how"] == "query"


def test_a_binlog_event_from_the_future_is_evidence(tmp_path: Path) -> None:
    watch = clock.ClockWatch(_Db(0), tmp_path)
    watch.tick()
    watch.event(time.time() - 3600)  # an hour old: lag, not skew
    watch.event(time.time() + 5)  # within what a second's rounding and a fast query can explain
    assert abs(watch.skew or 0) < 1 and watch.binlog_ahead is None
    watch.event(time.time() + 600)
    assert watch.binlog_ahead is not None and abs(watch.binlog_ahead - 600) < 2
    stored = clock.load(tmp_path)
    assert stored is not None and stored["how"] == "binlog" and abs(stored["binlog_ahead_seconds"] - 600) < 2


def test_a_failed_measurement_never_stops_capture(tmp_path: Path) -> None:
    class Down:
        def connect(self) -> Any:
            raise OSError("refused")

    watch = clock.ClockWatch(Down(), tmp_path)
    watch.tick()
    assert watch.skew_ms is None and clock.load(tmp_path) is None
