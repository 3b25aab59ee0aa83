"""kill -9 of the services of the bed (a site's or central's MariaDB, Artemis) and their restart."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from devtools.services.common import pid_alive


def kill9_pid(pid: int | None, marker: str, timeout: float = 30) -> bool:
    """SIGKILL one server by pid (checked against `marker` on its command line); wait until it is gone."""
    if not pid_alive(pid, marker):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


class Service:
    """A server of the bed the soak may kill: how to find its pid and how to start it again."""

    def __init__(self, name: str, pid: Callable[[], int | None], marker: str, start: Callable[[], object]) -> None:
        self.name, self.pid, self.marker, self._start = name, pid, marker, start
        self.kills = 0

    def kill9(self) -> bool:
        self.kills += 1
        return kill9_pid(self.pid(), self.marker)

    def start(self) -> None:
        for attempt in range(5):
            try:
                self._start()
                return
            except Exception:  # noqa: BLE001 - a port still closing: try again
                if attempt == 4:
                    raise
                time.sleep(2)
