"""Which sites a receiver worker (`dbsync receiver --worker`) applies: those whose server lock its applier holds.

Senders set the Artemis message group to their site (JMSXGroupID), so the broker gives all of one site's deliveries
to one worker's consume, in order; each stores them in the shared inbox with its slot number. Between two batches
(everything committed) a worker takes, without waiting, the lock of every site whose inbox rows it stored itself, or
that a worker no longer alive stored (its slot lock is free: MariaDB released it with the dead session), or that
has retry entries; it keeps the locks it holds until it stops. It applies only the inbox rows and retry entries of
the sites it holds, oldest first, so one site's messages are applied by one worker at a time and in the order the
broker delivered them, whichever worker stored them (a site whose worker died goes on where that one stopped: its
rows not yet applied are still in the inbox, its unacknowledged deliveries come back from the broker).

One worker at a time (the holder of the lead lock) does what the single receiver does once: housekeeping, the
console's samples, operators' requests (`dbsync retry`, `conflicts resolve`, the console). A request may touch any
site, so while the lead carries one out every other worker lets its sites go and waits, and the lead takes every
site's lock before the request's first step; afterwards it lets them go and each worker takes its own again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.worker_locks import (
    WorkerSlot,
    holders,
    lead_lock,
    release,
    site_lock,
    slot_lock,
    take,
)
from dbsync_cli.sql import sql

log = logging.getLogger("dbsync.workers")

DISCOVER_SECONDS = 1.0  # how often the inbox is looked at for sites to take (at once when a worker is idle)
RETRY_DISCOVER_SECONDS = 10.0  # how often the retry and conflict queues are


def wanted(rows: list[tuple[str | None, int | None]], mine: int, alive: set[int]) -> set[str | None]:
    """The sites of inbox rows (site, worker slot) this worker should apply: those it stored, those stored without
    a worker (`dbsync consume`, a receiver before --worker) and those of a worker no longer `alive`."""
    return {site for site, worker in rows if worker is None or worker == mine or worker not in alive}


def handed_on(rows: list[tuple[str | None, int | None]], mine: int, alive: set[int],
              held: set[str | None]) -> set[str | None]:
    """Held sites whose inbox rows another live worker stored, all of them (the broker moved the site's group to
    that worker, e.g. when a worker joined): let go, so that the worker consuming them applies them."""
    return {site for site, worker in rows if site in held} - wanted(rows, mine, alive)


class WorkerSites:
    """The sites this worker's applier holds (`held`, what apply reads), and whether it leads."""

    def __init__(self, applier: Applier, slot: WorkerSlot):
        self.applier, self.slot = applier, slot
        self.schema = applier.settings.state_schema
        self.held: set[str | None] = set()
        self.lead = False
        self.holding_all = False  # every site, for an operator's request
        self._looked = self._looked_at_queues = -float("inf")

    def round(self, idle: bool = False) -> bool:
        """Between two batches: take the lead or sites that are due; False while another worker carries out an
        operator's request (this worker then holds no site)."""
        self.slot.keep()
        conn = self.applier.conn
        with conn.cursor() as cur:
            if not self.lead and take(cur, lead_lock(self.schema)):
                self.lead = True
                log.info("receiver worker %s leads: housekeeping and operators' requests", self.slot.number)
            if not self.lead and self._paused(cur):
                if self.held:
                    log.info("receiver worker %s: another worker carries out an operator's request; its sites wait",
                             self.slot.number)
                    self.release_all(cur)
                conn.commit()
                return False
            now = time.monotonic()
            if idle or now - self._looked >= DISCOVER_SECONDS:
                self._take(cur, self._due(cur, queues=now - self._looked_at_queues >= RETRY_DISCOVER_SECONDS))
                self._looked = now
        conn.commit()
        return True

    def _paused(self, cur: Any) -> bool:
        cur.execute(sql("SELECT 1 FROM {}.receiver_request WHERE state = 'running' AND (taken_by IS NULL OR "
                        "taken_by <> CONNECTION_ID()) LIMIT 1", self.applier.s))
        return cur.fetchone() is not None

    def _due(self, cur: Any, queues: bool) -> set[str | None]:
        s = self.applier.s
        cur.execute(sql("SELECT site, worker FROM {}.inbox GROUP BY site, worker", s))
        rows = [(site, None if worker is None else int(worker)) for site, worker in cur.fetchall()]
        others = sorted({w for _site, w in rows if w is not None and w != self.slot.number})
        alive = {w for w, holder in zip(others, holders(cur, [slot_lock(self.schema, w) for w in others]), strict=True)
                 if holder is not None}
        mine = self.slot.number if self.slot.number is not None else -1
        due = wanted(rows, mine, alive)
        if not self.holding_all:
            for site in handed_on(rows, mine, alive, self.held):
                release(cur, site_lock(self.schema, site))
                self.held.discard(site)
                log.info("receiver worker %s: site %s is consumed by another worker now: handed on", mine, site)
        if queues:
            self._looked_at_queues = time.monotonic()
            cur.execute(sql("SELECT DISTINCT site FROM {}.receiver_retry_queue", s))
            due |= {site for (site,) in cur.fetchall()}
        return due - self.held

    def _take(self, cur: Any, sites: set[str | None]) -> bool:
        """Take the free locks of `sites` (never waiting); whether all of them are held now."""
        taken = [site for site in sorted(sites, key=lambda x: (x is None, x or "")) if take(cur, site_lock(
            self.schema, site))]
        if taken:
            self.held.update(taken)
            self.applier.reload_blocked()  # the queues of these sites as the worker that had them left them
            self.applier.ids.clear()
            log.info("receiver worker %s applies site(s) %s now", self.slot.number,
                     ", ".join(str(site) for site in taken))
        return len(taken) == len(sites)

    def hold_all(self) -> bool:
        """Before an operator's request (the lead): every site's lock, taken without waiting (the other workers let
        theirs go at their next round); whether all are held."""
        if self.holding_all:
            return True
        s = self.applier.s
        with self.applier.conn.cursor() as cur:
            cur.execute(sql("SELECT identifier FROM {s}.site_info UNION SELECT site FROM {s}.inbox UNION SELECT site "
                            "FROM {s}.receiver_retry_queue UNION SELECT site FROM {s}.receiver_conflict_queue", s=s))
            sites = {site for (site,) in cur.fetchall()} | {None}
            self.holding_all = self._take(cur, sites - self.held)
        self.applier.conn.commit()
        return self.holding_all

    def release_all(self, cur: Any) -> None:
        for site in self.held:
            release(cur, site_lock(self.schema, site))
        self.held.clear()
        self.holding_all = False

    def request_done(self) -> None:
        """The lead's request ended: the sites go back (each worker takes its own again)."""
        if self.holding_all:
            with self.applier.conn.cursor() as cur:
                self.release_all(cur)
            self.applier.conn.commit()
