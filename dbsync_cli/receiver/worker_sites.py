"""Which sites a receiver worker (`dbsync receiver --worker`) applies: those whose server lock its applier holds.

Senders set the Artemis message group to their site (JMSXGroupID), so the broker gives all of one site's deliveries
to one worker's consume, in order; each stores them in the shared inbox with its slot number. Between two batches
(everything committed) a worker takes, without waiting, the locks of about its share of the sites with work (`plan`:
first those it stored itself, then those of a worker no longer alive — its slot lock is free: MariaDB released it
with the dead session), and lets go of what is above its share when a worker joins. It applies only the inbox rows
and retry entries of the sites it holds, oldest first, so one site's messages are applied by one worker at a time
and in the order the broker delivered them, whichever worker stored them (a site whose worker died goes on where
that one stopped: its rows not yet applied are still in the inbox, its unacknowledged deliveries come back from the
broker).

One worker at a time (the holder of the lead lock) does what the single receiver does once: housekeeping, the
console's samples, operators' requests (`dbsync retry`, `conflicts resolve`, the console). A request may touch any
site, so while the lead carries one out every other worker lets its sites go and waits, and the lead takes every
site's lock before the request's first step; afterwards it lets them go and each worker takes its own again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.worker_locks import (
    MAX_WORKERS,
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


Site = str | None


@dataclass(frozen=True)
class Plan:
    take: list[Site]  # sites to try, best first: the first `room` whose locks are free are taken
    release: set[Site]  # held sites above this worker's share
    room: int = 0  # how many more sites this worker's share has room for


def plan(rows: list[tuple[Site, int | None]], queued: set[Site], *, mine: int, alive: set[int], workers: int,
         held: set[Site]) -> Plan:
    """Which sites to take and let go between two batches. `rows`: (site, slot of the worker that stored them) of
    the inbox; `queued`: sites with retry entries; `alive`: the slots of live workers, `workers` how many.

    Each worker applies about its share of the sites with work (ceil(sites / workers)): consume is far faster
    than apply, so the first worker up may store a whole broker backlog, and who applies must not follow who
    consumed. Within the share a worker prefers the sites it stored itself, then those stored by no worker (`dbsync
    consume`, a receiver before --worker) or by a worker that died, then those with retry entries only, then those
    another live worker stored. Above its share (a worker joined) it lets the least preferred go; sites without
    work it keeps (nothing to balance). Every site it does not hold is a candidate, in that order: the locks decide
    which it gets, so a site another worker holds never keeps it from a free one further down (it used to be cut
    to the first `room` candidates, and a worker whose preferred sites were busy elsewhere stayed idle)."""
    def rank(site: Site) -> int:
        writers = {w for s, w in rows if s == site}
        if mine in writers:
            return 0
        if any(w is None or w not in alive for w in writers):
            return 1
        return 2 if not writers else 3

    active = {site for site, _w in rows} | queued
    share = -(-len(active) // max(1, workers))
    busy = sorted(held & active, key=lambda site: (rank(site), str(site)))
    release = set(busy[share:])
    room = share - (len(busy) - len(release))
    candidates = sorted(active - held, key=lambda site: (rank(site), str(site)))
    return Plan(candidates if room > 0 else [], release, max(0, room))


class WorkerSites:
    """The sites this worker's applier holds (`held`, what apply reads), and whether it leads."""

    def __init__(self, applier: Applier, slot: WorkerSlot):
        self.applier, self.slot = applier, slot
        self.schema = applier.settings.state_schema
        self.held: set[str | None] = set()
        self.lead = False
        self.holding_all = False  # every site, for an operator's request
        self._looked = self._looked_at_queues = -float("inf")
        self.queued: set[Site] = set()  # sites with retry entries, looked at every RETRY_DISCOVER_SECONDS

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
                self._balance(cur, queues=now - self._looked_at_queues >= RETRY_DISCOVER_SECONDS)
                self._looked = now
        conn.commit()
        return True

    def _paused(self, cur: Any) -> bool:
        cur.execute(sql("SELECT 1 FROM {}.receiver_request WHERE state = 'running' AND (taken_by IS NULL OR "
                        "taken_by <> CONNECTION_ID()) LIMIT 1", self.applier.s))
        return cur.fetchone() is not None

    def _balance(self, cur: Any, queues: bool) -> None:
        s = self.applier.s
        cur.execute(sql("SELECT site, worker FROM {}.inbox GROUP BY site, worker", s))
        rows = [(site, None if worker is None else int(worker)) for site, worker in cur.fetchall()]
        slots = [slot_lock(self.schema, k) for k in range(MAX_WORKERS)]
        alive = {k for k, holder in enumerate(holders(cur, slots)) if holder is not None}
        if queues:
            self._looked_at_queues = time.monotonic()
            cur.execute(sql("SELECT DISTINCT site FROM {}.receiver_retry_queue", s))
            self.queued = {site for (site,) in cur.fetchall()}
        mine = self.slot.number if self.slot.number is not None else -1
        chosen = plan(rows, self.queued, mine=mine, alive=alive, workers=len(alive), held=self.held)
        if not self.holding_all and chosen.release:
            for site in chosen.release:
                release(cur, site_lock(self.schema, site))
            self.held -= chosen.release
            log.info("receiver worker %s hands site(s) %s on (more than its share)", mine,
                     ", ".join(str(site) for site in sorted(chosen.release, key=str)))
        if chosen.take:
            self._take(cur, chosen.take, chosen.room)

    def _take(self, cur: Any, sites: list[str | None], room: int | None = None) -> bool:
        """Take the free locks of `sites`, in their order, never waiting, until `room` are taken (None: all);
        whether that many are held now."""
        taken: list[str | None] = []
        for site in sites:
            if room is not None and len(taken) >= room:
                break
            if take(cur, site_lock(self.schema, site)):
                taken.append(site)
        if taken:
            self.held.update(taken)
            self.applier.reload_blocked()  # the queues of these sites as the worker that had them left them
            self.applier.ids.clear()
            log.info("receiver worker %s applies site(s) %s now", self.slot.number,
                     ", ".join(str(site) for site in taken))
        return len(taken) == (len(sites) if room is None else min(room, len(sites)))

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
            self.holding_all = self._take(cur, sorted(sites - self.held, key=lambda x: (x is None, x or "")))
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
