"""Restart-with-backoff for long-running parts (the sender chain, the receiver's threads and its start-up); the
waits are retrying.py's, so a stop ends them at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dbsync_cli.faults import describe, operator_fault
from dbsync_cli.retrying import Stopped, backoff

log = logging.getLogger("dbsync.supervise")

#: a part that ran this long before failing was healthy: its next failure starts the backoff from the beginning
HEALTHY_SECONDS = 60.0


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
        except Stopped:  # a stop asked while a part waited to retry: nothing confirmed is lost
            return
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - supervision restarts the part whatever failed
            if operator_fault(exc):
                log.error("%s stopped: %s (a restart cannot fix this)", name, describe(exc))
                raise
            failures = 1 if time.monotonic() - started >= healthy_seconds else failures + 1
            delay = backoff(failures)
            log.error("%s failed (%s: %s); restarting in %.1f s", name, type(exc).__name__, describe(exc), delay)
            stop.wait(delay)  # the signal handlers set it (retrying.on_signals): the wait ends at once


__all__ = ["HEALTHY_SECONDS", "backoff", "supervise"]
