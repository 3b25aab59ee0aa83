"""Operators' requests (receiver_request) carried out by whoever holds the applier lock, a bounded time at a time.

The running receiver calls ActionLane.round between two live batches: a round goes on with the request in progress
for at most ROUND_SECONDS (each step is one committed page or retry round, bulk.py), so a bulk action over 20,000
entries never keeps another site's live change waiting more than a round. The console's worker, with no receiver
running, serves a request to its end at once (serve).

A request left `running` by a process that stopped (killed mid-action) is served again from its start: every step
is idempotent (a pinned selection, entries already dropped or marked are passed by).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from dbsync_cli import i18n
from dbsync_cli.receiver import bulk, conflicts
from dbsync_cli.receiver.actions import KEEP_DAYS, ActionFailed, _done, _finish, steps
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.retry import ROUND_SECONDS
from dbsync_cli.receiver.state import StateError
from dbsync_cli.sql import sql

log = logging.getLogger("dbsync.actions")

#: what ends a request as failed with its one line (the receiver goes on); anything else also ends it failed and
#: then restarts the apply loop (a deadlock, a lost connection)
_REFUSED = (ActionFailed, conflicts.ConflictError, StateError, ValueError, KeyError)


@dataclass
class _Running:
    request: int
    action: str
    who: str
    lang: str
    steps: bulk.Steps


class ActionLane:
    """The request in progress and its steps; `round` goes on with it (or takes the next) for a bounded time."""

    def __init__(self, applier: Applier, round_seconds: float = ROUND_SECONDS) -> None:
        self.applier, self.round_seconds = applier, round_seconds
        self.current: _Running | None = None
        self.served = 0
        self._first = True  # the lock was just claimed: nothing can be running for someone else
        #: receiver workers: whether the lead holds every site's lock yet (the request waits for that, in rounds)
        self.ready: Callable[[], bool] | None = None

    def busy(self) -> bool:
        return self.current is not None

    def round(self) -> bool:
        """About `round_seconds` of work (one step at least; a step, e.g. a retry round, may overrun the deadline by
        its own length); whether there was any."""
        if self.current is None:
            self.current = self._take()
            if self.current is None:
                return False
        if self.ready is not None and not self.ready():
            return True  # marked running: the other workers let their sites go at their next round
        deadline = time.monotonic() + self.round_seconds
        while self.current is not None:
            self._step(self.current)
            if time.monotonic() >= deadline:
                break
        return True

    def _step(self, running: _Running) -> None:
        token = i18n.use(running.lang)  # the requester's language, for its one-line answer
        self.applier.actor = running.who  # the archive says who decided it (live batches between steps: nobody)
        try:
            next(running.steps)
            return
        except StopIteration as end:
            result, state = end.value, "done"
        except _REFUSED as exc:
            self.applier.conn.rollback()
            self.applier.rolled_back()
            self.applier.reload_blocked()
            result, state = {"text": str(exc)}, "failed"
        except Exception as exc:  # e.g. a deadlock: the request ends failed, never left running; the loop restarts
            with contextlib.suppress(Exception):
                self.applier.conn.rollback()
            self.applier.rolled_back()
            self.current = None
            with contextlib.suppress(Exception):
                _finish(self.applier, running.request, "failed", {"text": f"failed: {type(exc).__name__}: {exc}"[:500]})
            raise
        finally:
            i18n.reset(token)
            self.applier.actor = None
        self.current = None
        _finish(self.applier, running.request, state, _done(result))
        self.served += 1
        log.info("request %d (%s by %s) %s: %s", running.request, running.action, running.who, state,
                 result.get("text") or f"{len(result.get('records') or [])} outcome(s)")
        self._forget_old()

    def _take(self) -> _Running | None:
        """The oldest pending request, marked running by this connection (after putting back those a stopped
        process left running)."""
        applier, s = self.applier, self.applier.s
        with applier.conn.cursor() as cur:
            # only the holder of the applier lock serves requests, and that is us: a request another connection took
            # was left running by a process that stopped (killed mid-action): it is served again
            # (all of them the first time: a restarted server may give our connection the id a stopped one had)
            mine = sql("") if self._first else sql(" AND (taken_by IS NULL OR taken_by <> CONNECTION_ID())")
            cur.execute(sql("UPDATE {}.receiver_request SET state = 'pending', taken_by = NULL WHERE state = "
                            "'running'{}", s, mine))
            self._first = False
            if cur.rowcount:
                log.warning("%d request(s) left running by a process that stopped are served again", cur.rowcount)
            while True:
                cur.execute(sql("SELECT id, action, args, requested_by FROM {}.receiver_request WHERE state = "
                                "'pending' ORDER BY id LIMIT 1", s))
                row = cur.fetchone()
                if row is None:
                    applier.conn.commit()
                    return None
                request, action, raw, who = row
                cur.execute(sql("UPDATE {}.receiver_request SET state = 'running', taken_by = CONNECTION_ID() "
                                "WHERE id = %s AND state = 'pending'", s), (request,))
                if cur.rowcount == 1:  # else withdrawn by its requester meanwhile
                    break
        applier.conn.commit()
        args: dict[str, Any] = orjson.loads(raw)
        lang = str(args.pop("lang", "") or "en")
        return _Running(int(request), str(action), str(who), lang,
                        steps(applier, str(action), args, _progress_of(applier, int(request))))

    def _forget_old(self) -> None:
        with self.applier.conn.cursor() as cur:
            cur.execute(sql("DELETE FROM {}.receiver_request WHERE state IN ('done', 'failed', 'cancelled') AND "
                            "date_created < UTC_TIMESTAMP() - INTERVAL %s DAY", self.applier.s), (KEEP_DAYS,))
        self.applier.conn.commit()


def serve(applier: Applier, limit: int = 20) -> int:
    """Carry out up to `limit` pending requests to their end at once (the console's worker, no receiver running);
    how many."""
    lane = ActionLane(applier, round_seconds=float("inf"))
    while lane.served < limit and lane.round():
        pass
    return lane.served


def _progress_of(applier: Applier, request: int) -> bulk.Progress:
    """A running request's progress, written to its row for the console (called between transactions)."""
    def report(done: int, total: int, phase: str) -> None:
        with applier.conn.cursor() as cur:
            cur.execute(sql("UPDATE {}.receiver_request SET result = %s WHERE id = %s AND state = 'running'",
                            applier.s),
                        (orjson.dumps({"progress": {"done": done, "total": total, "phase": phase}}).decode(),
                         request))
        applier.conn.commit()
    return report


__all__ = ["ActionLane", "serve"]
