"""Restart-with-backoff for long-running parts (the sender chain, the receiver's threads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_exponential

log = logging.getLogger("dbsync.supervise")


def backoff(failures: int, *, multiplier: float = 1, maximum: float = 60) -> float:
    """Seconds to wait after `failures` failures in a row: multiplier × 1, 2, 4 … at most `maximum` (tenacity's
    exponential wait, for loops that cannot be a tenacity Retrying because they also yield)."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    return float(wait_exponential(multiplier=multiplier, max=maximum)(state))


def supervise(name: str, target: Callable[[], object], stop: threading.Event, *, once: bool = False,
              fatal: tuple[type[BaseException], ...] = ()) -> None:
    """Run `target` until `stop`; after a failure wait 1, 2, 4 … 60 s and run it again. `once`: return after a
    clean run. Exceptions in `fatal` are for an operator and propagate."""
    failures = 0
    while not stop.is_set():
        try:
            target()
            if once:
                return
            failures = 0
            stop.wait(1)
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - supervision restarts the part whatever failed
            failures += 1
            delay = backoff(failures)
            log.error("%s failed (%s: %s); restarting in %.1f s", name, type(exc).__name__, exc, delay)
            stop.wait(delay)
