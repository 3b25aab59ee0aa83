"""The console's own worker: carries out the operators' requests when no receiver is running.

A click in the console never does the work inside the HTTP request (a resolve that releases a big retry queue took
minutes): it queues a request (receiver/actions.py `submit`) and the page shows its progress. The running receiver
serves requests between two batches; with none running, this thread takes the applier lock, serves what is
pending and lets the lock go again at once, so a receiver that starts meanwhile waits seconds at most.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dbsync_cli.receiver import actions
from dbsync_cli.receiver.apply import AlreadyApplying, Applier

log = logging.getLogger("dbsync.console")

IDLE_SECONDS = 2.0  # how often to look for requests nobody serves (e.g. left by a receiver that stopped)


class Worker:
    def __init__(self, connect: Callable[[], Any], schema: str, make_applier: Callable[[], Applier]) -> None:
        self.connect, self.schema, self.make_applier = connect, schema, make_applier
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def poke(self) -> None:
        """A request was queued: look now (the thread starts on the first request)."""
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="console-actions", daemon=True)
                self.thread.start()
        self.wake.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(IDLE_SECONDS)
            self.wake.clear()
            try:
                self.serve_once()
            except Exception:  # noqa: BLE001 - the request says it failed; the next round tries again
                log.exception("console: serving operators' requests failed")

    def serve_once(self) -> int:
        """Serve every pending request if the applier lock is free (no receiver running); how many were served."""
        with self.connect() as conn:
            if not actions.pending(conn, self.schema):
                return 0
        applier = self.make_applier()  # reads the schema model: only when there is work
        try:
            try:
                applier.claim(wait=0)
            except AlreadyApplying:  # the running receiver serves them
                return 0
            served = 0
            while True:
                done = actions.serve(applier)
                if not done:
                    return served
                served += done
        finally:
            applier.close()
