"""Restart-with-backoff for long-running parts (the sender chain, the receiver's threads and its start-up)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential

from dbsync_cli.faults import operator_fault

log = logging.getLogger("dbsync.supervise")

#: a part that ran this long before failing was healthy: its next failure starts the backoff from the beginning
HEALTHY_SECONDS = 60.0


def backoff(failures: int, *, multiplier: float = 1, maximum: float = 60) -> float:
    """Seconds to wait after `failures` failures in a row: half of multiplier × 1, 2, 4 … (at most `maximum`) fixed
    and half random ("equal jitter", tenacity's waits), so that 200 clinics cut off by one outage do not all
    reconnect in the same second, and no wait is ever near zero."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    half, top = multiplier / 2, maximum / 2
    wait = wait_exponential(multiplier=half, max=top) + wait_random_exponential(multiplier=half, max=top)
    return float(wait(state))


def supervise(name: str, target: Callable[[], object], stop: threading.Event, *, once: bool = False,
              fatal: tuple[type[BaseException], ...] = (), healthy_seconds: float = HEALTHY_SECONDS) -> None:
    """Run `target` until `stop`; after a failure wait (backoff, about 1, 2, 4 … 60 s) and run it again. A run
    that lasted `healthy_seconds` resets the backoff. `once`: return after a clean run. Exceptions in `fatal`, and
    the faults only an operator can fix (faults.operator_fault: a refused login, an untrusted certificate), propagate."""
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            target()
            if once:
                return
            failures = 0
            stop.wait(1)
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - supervision restarts the part whatever failed
            if operator_fault(exc):
                log.error("%s stopped: %s (a restart cannot fix this)", name, " ".join(str(exc).split()))
                raise
            failures = 1 if time.monotonic() - started >= healthy_seconds else failures + 1
            delay = backoff(failures)
            log.error("%s failed (%s: %s); restarting in %.1f s", name, type(exc).__name__, exc, delay)
            stop.wait(delay)
