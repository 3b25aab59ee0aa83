"""The server locks of several receivers on one central (`dbsync receiver --worker`), by name.

Without --worker one receiver applies to a state schema and holds the *gate* lock (`dbsync:<schema>`,
apply.Applier.claim) for as long as it runs. A worker takes the gate only for the moment it takes a *slot*
(`MAX_WORKERS` numbered locks, held for the process's life by a session of its own), so that a receiver without
--worker sees the slots held and stops with exit 13, and a worker sees the gate held and stops the same way. What a
worker applies is decided by one lock per *site*, held by the connection that writes (worker_sites.py). MariaDB
releases every lock of a session that ends (a killed process): what it held is taken over, never lost.

Lock names are at most 64 characters: the state schema and the site go in hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from dbsync_cli.db import DbParams
from dbsync_cli.sql import join, sql

log = logging.getLogger("dbsync.workers")

MAX_WORKERS = 64  # slots: workers of one central at most
GATE_WAIT_SECONDS = 30  # how long a starting worker waits for the gate (a killed predecessor's session ending)


class AlreadyApplying(Exception):
    """Another process applies to the same central state schema: two appliers could both write one row."""


def applier_lock(schema: str) -> str:
    """The gate: the server lock the one applier of `schema` holds (apply.Applier.claim) without --worker."""
    return f"dbsync:{schema}"


def lock_name(schema: str, part: str) -> str:
    """A server lock's name (64 characters at most) for `part` of state schema `schema`."""
    return "dbsync-w:" + hashlib.blake2b(f"{schema}\0{part}".encode(), digest_size=16).hexdigest()


def slot_lock(schema: str, number: int) -> str:
    return lock_name(schema, f"slot:{number}")


def site_lock(schema: str, site: str | None) -> str:
    """The lock of one site's rows (deliveries without a site header share one)."""
    return lock_name(schema, "nosite" if site is None else f"site:{site}")


def lead_lock(schema: str) -> str:
    """The worker holding it does what one process at a time does: housekeeping, samples, operators' requests."""
    return lock_name(schema, "lead")


def rest_lock(schema: str) -> str:
    """The worker whose REST thread holds it makes the OpenMRS REST calls (one caller per queue entry)."""
    return lock_name(schema, "rest")


def running_workers(cur: Any, schema: str) -> list[int]:
    """The central connections holding a worker slot of `schema` (one look at all slots)."""
    names = [slot_lock(schema, k) for k in range(MAX_WORKERS)]
    cur.execute(sql("SELECT {}", join([sql("IS_USED_LOCK(%s)")] * len(names))), names)
    return [int(holder) for holder in (cur.fetchone() or ()) if holder is not None]


def refuse_beside_workers(cur: Any, schema: str) -> None:
    """Called holding the gate without --worker: workers running → the gate goes and AlreadyApplying is raised."""
    workers = running_workers(cur, schema)
    if workers:
        cur.execute("SELECT RELEASE_LOCK(%s)", (applier_lock(schema),))
        cur.fetchall()
        raise AlreadyApplying(
            f"{len(workers)} receiver worker(s) (dbsync receiver --worker) apply to state schema {schema!r}: "
            "stop them, or start this receiver with --worker too")


def take(cur: Any, name: str, wait: float = 0) -> bool:
    """GET_LOCK: whether this session holds `name` now."""
    cur.execute("SELECT GET_LOCK(%s, %s)", (name, wait))
    (got,) = cur.fetchone() or (0,)
    return got == 1


def release(cur: Any, name: str) -> None:
    cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    cur.fetchall()


def holders(cur: Any, names: list[str]) -> list[int | None]:
    """The connection holding each of `names` (None: free)."""
    if not names:
        return []
    cur.execute(sql("SELECT {}", join([sql("IS_USED_LOCK(%s)")] * len(names))), names)
    return [None if h is None else int(h) for h in (cur.fetchone() or ())]


class WorkerSlot:
    """This worker's slot: a session of its own holds it for the process's life. Inbox rows this worker's consume
    stores carry its number; rows of a number whose slot is free belong to a worker that died."""

    def __init__(self, params: DbParams, schema: str):
        self.params, self.schema = params, schema
        self.number: int | None = None
        self.conn: Any = None

    def take(self, wait: float = GATE_WAIT_SECONDS) -> int:
        """Take the first free slot, through the gate (a receiver without --worker holds it: AlreadyApplying)."""
        self.conn = self.params.connect(autocommit=True)
        gate = applier_lock(self.schema)
        with self.conn.cursor() as cur:
            if not take(cur, gate, wait):
                (holder,) = holders(cur, [gate])
                self.close()
                raise AlreadyApplying(
                    f"a receiver without --worker (central connection {holder}) is applying to state schema "
                    f"{self.schema!r}: stop it, or run every receiver of this central with --worker")
            try:
                for number in range(MAX_WORKERS):
                    if take(cur, slot_lock(self.schema, number)):
                        self.number = number
                        break
            finally:
                release(cur, gate)
        if self.number is None:
            self.close()
            raise AlreadyApplying(f"{MAX_WORKERS} receiver workers apply to state schema {self.schema!r} already")
        log.info("receiver worker %d of state schema %s", self.number, self.schema)
        return self.number

    def keep(self) -> None:
        """Still ours? A lost session (central restarted) takes its number back, or the worker stops (exit 13)."""
        assert self.number is not None
        name = slot_lock(self.schema, self.number)
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (name,))
                (mine,) = cur.fetchone() or (0,)
            if mine == 1:
                return
        except Exception:  # noqa: BLE001 - the session is gone: a new one below
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = self.params.connect(autocommit=True)
        with self.conn.cursor() as cur:
            if not take(cur, name):
                raise AlreadyApplying(f"receiver worker {self.number} lost its slot to another process")
        log.warning("receiver worker %d: its central session was lost and its slot taken again", self.number)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
