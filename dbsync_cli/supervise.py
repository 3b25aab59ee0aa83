"""Restart-with-backoff for long-running parts (the sender chain, the receiver's threads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenacity import wait_exponential

log = logging.getLogger("dbsync.supervise")

_WAIT = wait_exponential(multiplier=1, max=60)


class _Attempt:
    """The one attribute tenacity's wait strategies read."""

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


def backoff(failures: int) -> float:
    return float(_WAIT(_Attempt(failures)))


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
