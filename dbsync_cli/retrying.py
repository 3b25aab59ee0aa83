"""Stopping and retrying: one process-wide stop event that SIGTERM/SIGINT set, and one retry helper (tenacity) whose
waits end the moment a stop is asked.

A process asked to stop while the broker is down or refuses a batch must not sleep out its backoff (seen: still
running 10 minutes after SIGTERM). Stopping in the middle of a retry loses nothing: every checkpoint moves only
after a confirmation (at-least-once), so the next start sends the same rows again with the same ids.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    stop_never,
    stop_when_event_set,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

log = logging.getLogger("dbsync")

#: set by the signal handlers (on_signals); every wait of this module ends when it is set
STOP = threading.Event()
#: how long a stopping process still waits for the broker to confirm what it already sent (then it leaves it
#: unconfirmed: the next start sends it again)
GRACE_SECONDS = 5.0
_SLICE = 0.25


class Stopped(Exception):  # noqa: N818 - what happened, not an error
    """A stop was asked while waiting for a server: unwind; nothing confirmed is lost."""


def on_signals(stop: threading.Event | None = None) -> threading.Event:
    """SIGTERM/SIGINT set `stop` (and STOP): the process finishes or abandons its batch and exits 0. A second
    signal exits at once (128 + its number), e.g. a second Ctrl-C."""
    event = stop if stop is not None else STOP
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if received:
            print(f"dbsync: second {name}: exiting at once (the checkpoint is safe)", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        received.append(signum)
        log.info("received %s: stopping (a second one exits at once)", name)
        event.set()
        STOP.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return event


def _events(stop: threading.Event | None) -> list[threading.Event]:
    return [STOP] if stop is None or stop is STOP else [stop, STOP]


def stopping(stop: threading.Event | None = None) -> bool:
    return any(event.is_set() for event in _events(stop))


def _sleeper(stop: threading.Event | None) -> Callable[[float], None]:
    """A sleep that returns as soon as `stop` or STOP is set (tenacity's `sleep=`)."""
    events = _events(stop)

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + float(seconds)
        while not any(event.is_set() for event in events):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            events[0].wait(min(left, _SLICE))

    return sleep


def pause(seconds: float, stop: threading.Event | None = None) -> None:
    """Wait `seconds` between two attempts; Stopped as soon as a stop is asked."""
    _sleeper(stop)(seconds)
    if stopping(stop):
        raise Stopped("stopped while waiting to retry")


def backoff(failures: int, *, multiplier: float = 1, maximum: float = 60) -> float:
    """Seconds to wait after `failures` failures in a row: half of multiplier × 1, 2, 4 … (at most `maximum`) fixed
    and half random ("equal jitter"), so that 200 clinics cut off by one outage do not all reconnect in the same
    second, and no wait is ever near zero."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    return float(jittered(multiplier=multiplier, maximum=maximum)(state))


def jittered(*, multiplier: float = 1, maximum: float = 60) -> wait_base:
    """The wait of `backoff` as a tenacity wait."""
    half, top = multiplier / 2, maximum / 2
    return wait_exponential(multiplier=half, max=top) + wait_random_exponential(multiplier=half, max=top)


def retrying(*, retry_on: tuple[type[BaseException], ...], wait: wait_base | None = None,
             stop: threading.Event | None = None, attempts: int | None = None,
             before_sleep: Callable[[RetryCallState], None] | None = None) -> Retrying:
    """`for attempt in retrying(...): with attempt: …` retries `retry_on` errors, waiting `wait` (default: the
    jittered backoff, 0.5 … 30 s) in between; gives up after `attempts` (None: never) by raising the last error,
    and raises Stopped the moment `stop` or STOP is set (the wait ends then, not at its end)."""
    events = _events(stop)
    limit = stop_never if attempts is None else stop_after_attempt(attempts)

    def give_up(state: RetryCallState) -> Any:
        error = state.outcome.exception() if state.outcome is not None else None
        if any(event.is_set() for event in events):
            raise Stopped(f"stopped while retrying ({error})") from error
        if error is not None:
            raise error
        return state.outcome.result() if state.outcome is not None else None

    return Retrying(retry=retry_if_exception_type(retry_on), wait=wait or jittered(multiplier=0.5, maximum=30),
                    stop=stop_any(limit, *(stop_when_event_set(event) for event in events)),
                    sleep=_sleeper(stop), before_sleep=before_sleep, retry_error_callback=give_up)


__all__ = ["GRACE_SECONDS", "STOP", "Stopped", "backoff", "jittered", "on_signals", "pause", "retrying", "stopping"]
