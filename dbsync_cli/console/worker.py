"""The console's own worker: carries out the operators' requests when no receiver is running.

A click in the console never does the work inside the HTTP request (a resolve that releases a big retry queue took
minutes): it queues a request (receiver/actions.py `submit`) and the page shows its progress. The running receiver
serves requests between two batches; with none running, this thread takes the applier lock for one request at a
time and lets it go between two, so a receiver that starts meanwhile gets it after the request in hand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from dbsync_cli.receiver import action_lane, actions
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
        """Serve the pending requests while the applier lock is free (no receiver running), taking the lock for one
        request at a time and letting it go between, so a receiver that starts gets it within seconds. A request
        left running by a process that stopped is served again (action_lane.serve). How many were served."""
        with self.connect() as conn:
            if not actions.pending(conn, self.schema, running=True) or not actions.lock_free(conn, self.schema):
                return 0
        applier = self.make_applier()  # reads the schema model: only when there is work
        try:
            served = 0
            while not self.stop.is_set():
                try:
                    applier.claim(wait=0)
                except AlreadyApplying:  # a receiver started (or runs): it serves them
                    return served
                try:
                    done = action_lane.serve(applier, limit=1)
                finally:
                    actions.release(applier)
                if not done:
                    return served
                served += done
            return served
        finally:
            applier.close()
