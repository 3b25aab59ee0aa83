"""Supervision: backoff with jitter, reset after a healthy run (issue 10 case 7)."""

from __future__ import annotations

import threading
import time

import pytest
import stomp.exception

from dbsync_cli.supervise import backoff, supervise


class RecordingStop(threading.Event):
    """A real Event whose waits return at once and are remembered (the delays supervise chose)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        return self.is_set()


@pytest.mark.parametrize("failures", [1, 2, 3, 6, 10, 30])
def test_backoff_is_between_half_and_all_of_the_exponential_wait(failures: int) -> None:
    full = min(60.0, 2.0 ** (failures - 1))
    for _ in range(50):
        assert full / 2 <= backoff(failures) <= full


def test_backoff_has_jitter_so_clinics_do_not_reconnect_in_lockstep() -> None:
    assert len({round(backoff(6), 6) for _ in range(20)}) > 10


def test_a_healthy_run_resets_the_backoff() -> None:
    stop = RecordingStop()
    runs = iter([0.0, 0.0, 0.0, 0.15, 0.0])  # three quick failures, one healthy run, one quick failure

    def target() -> None:
        try:
            time.sleep(next(runs))
        except StopIteration:
            stop.set()
            return
        raise RuntimeError("down")

    supervise("part", target, stop, healthy_seconds=0.1)
    quick = [w for w in stop.waits if w != 1]  # 1 s waits follow a clean run; none here
    assert len(quick) == 5
    assert 0.5 <= quick[0] <= 1 and 1 <= quick[1] <= 2 and 2 <= quick[2] <= 4
    assert 0.5 <= quick[3] <= 1, "the failure after a healthy run starts the backoff again"
    assert 1 <= quick[4] <= 2


def test_a_failure_without_text_is_logged_with_what_it_means(caplog: pytest.LogCaptureFixture) -> None:
    """stomp.py's NotConnectedException() has no text: the log line must still say what happened."""
    stop = RecordingStop()
    calls = iter([stomp.exception.NotConnectedException(), KeyError()])

    def target() -> None:
        try:
            raise next(calls)
        except StopIteration:
            stop.set()

    with caplog.at_level("ERROR", logger="dbsync.supervise"):
        supervise("requests", target, stop)
    lines = [r.getMessage() for r in caplog.records]
    assert "requests failed (NotConnectedException: the connection to the broker dropped)" in lines[0]
    assert "requests failed (KeyError: KeyError)" in lines[1]
    assert not any("()" in line or ": )" in line for line in lines)
