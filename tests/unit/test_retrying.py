"""Issue 26 item 8: the one retry helper (retrying.py) retries, gives up with the last error, and ends its wait the
moment a stop is asked, whatever its backoff."""

from __future__ import annotations

import threading
import time

import pytest
from tenacity import wait_fixed

from dbsync_cli.retrying import Stopped, pause, retrying


def test_it_retries_then_gives_up_with_the_last_error() -> None:
    calls = []
    with pytest.raises(OSError, match="down 3"):
        for attempt in retrying(retry_on=(OSError,), wait=wait_fixed(0), attempts=3, stop=threading.Event()):
            with attempt:
                calls.append(1)
                raise OSError(f"down {len(calls)}")
    assert len(calls) == 3


def test_a_stop_ends_a_long_backoff_at_once() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        for attempt in retrying(retry_on=(OSError,), wait=wait_fixed(60), stop=stop):
            with attempt:
                raise OSError("the broker is down")
    assert time.monotonic() - started < 2


def test_errors_it_does_not_retry_pass_through() -> None:
    with pytest.raises(ValueError):
        for attempt in retrying(retry_on=(OSError,), stop=threading.Event()):
            with attempt:
                raise ValueError("not a server fault")


def test_pause_ends_at_once_on_a_stop() -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        pause(60, stop)
    assert time.monotonic() - started < 2
