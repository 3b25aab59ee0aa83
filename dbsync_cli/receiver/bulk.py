"""Bulk operator actions on a selection (receiver/selection.py): retry again, drop, resolve many conflicts.

Each walks its selection in pages, commits each page and reports progress (done, total) after it, so the console
can show how far a long action got and a crash loses at most one page of it. What waited behind the entries is
then retried once, in one pass, not once per entry. The caller holds the applier lock (receiver/actions.py).

Each is a generator that yields after every committed step (a page, a retry round): the running receiver serves a
bulk action a bounded time between two live batches (actions.ActionLane), and the CLI or the console's worker run
it to its end at once (retry.drive). The result is the generator's return value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from dbsync_cli.i18n import _, ngettext
from dbsync_cli.receiver import conflicts, retry, retry_queue, selection
from dbsync_cli.receiver.apply import Applier
from dbsync_cli.receiver.selection import Selection
from dbsync_cli.receiver.state import StateError
from dbsync_cli.sql import placeholders, sql

log = logging.getLogger("dbsync.actions")

#: (done, total, phase): how far an action is; phase is a short English word ("dropping", "retrying" …)
Progress = Callable[[int, int, str], None]
PAGE = 500
#: how a bulk resolve may resolve (a merge names columns of one conflict)
MODES = ("keep-central", "take-incoming", "manual")
FAILED = ("retry", "error", "waiting")
#: a bulk action's steps: yields between committed steps, returns {"text", "records", "counts"}
Steps = Generator[None, None, dict[str, Any]]


def _quiet(done: int, total: int, phase: str) -> None:
    return None


class _Throttle:
    """Progress at most every half second (each report is a write and a commit of the request's row)."""

    def __init__(self, report: Progress | None, total: int) -> None:
        self.report, self.total, self.last = report or _quiet, total, 0.0

    def __call__(self, done: int, phase: str, *, force: bool = False) -> None:
        if force or time.monotonic() - self.last >= 0.5:
            self.report(done, self.total, phase)
            self.last = time.monotonic()


def _release(applier: Applier, step: _Throttle, done: int,
             entities: set[str]) -> Generator[None, None, int]:
    """One retry pass, in rounds, for what waited behind the entries just handled (`entities`: their entries
    whether due or not); how many applied."""
    step(done, "retrying", force=True)
    applier.reload_blocked()
    outcomes = yield from retry.pass_steps(applier, entities=entities)
    return sum(1 for o in outcomes if o.outcome not in FAILED)


def _pages(applier: Applier, chosen: Selection) -> Generator[list[int], None, None]:
    """The selection's ids a page at a time (read afresh after each page: the caller changed the previous)."""
    after = 0
    while page := selection.ids(applier.conn, applier.settings.state_schema, chosen, after=after, limit=PAGE):
        yield page
        after = page[-1]


def drop(applier: Applier, chosen: Selection, progress: Progress | None = None) -> Steps:
    """Remove every selected retry entry for good; later messages of their entities follow."""
    s = applier.s
    total = selection.still_pinned(applier.conn, applier.settings.state_schema, chosen)
    step, dropped, held = _Throttle(progress, total), 0, 0
    entities: set[str] = set()
    for page in _pages(applier, chosen):
        with applier.conn.cursor() as cur:
            marks = placeholders(len(page))
            cur.execute(sql("SELECT entity_key FROM {}.receiver_retry_queue WHERE id IN ({}) AND entity_key IS NOT "
                            "NULL", s, marks), page)
            keys = [row[0] for row in cur.fetchall()]
            held += len(keys)
            entities.update(keys)
            applier.archive_dropped(cur, page)
            retry_queue.delete_entries(cur, s, page)
            dropped += len(page)
        applier.conn.commit()
        step(dropped, "dropping")
        yield
    log.warning("%d retry entries dropped by the operator (%s)", dropped, chosen.describe())
    applied = (yield from _release(applier, step, dropped, entities)) if held else 0
    text = ngettext("{count} retry entry dropped ({filters}); {done} waiting message(s) applied",
                    "{count} retry entries dropped ({filters}); {done} waiting message(s) applied", dropped).format(
        count=dropped, filters=chosen.describe(), done=applied)
    return {"text": text, "records": [], "counts": {"dropped": dropped, "applied": applied}}


def again(applier: Applier, chosen: Selection, progress: Progress | None = None) -> Steps:
    """Make every selected entry due now and retry the queue once; outcomes of the selected entries only."""
    s = applier.s
    total = selection.still_pinned(applier.conn, applier.settings.state_schema, chosen)
    step = _Throttle(progress, total)
    wanted: set[str] = set()
    for page in _pages(applier, chosen):
        with applier.conn.cursor() as cur:
            marks = placeholders(len(page))
            cur.execute(sql("SELECT message_id FROM {}.receiver_retry_queue WHERE id IN ({})", s, marks), page)
            wanted.update(row[0] for row in cur.fetchall())
            cur.execute(sql("UPDATE {}.receiver_retry_queue SET next_attempt = NULL WHERE id IN ({}) "
                            "AND next_attempt IS NOT NULL", s, marks), page)
            cur.execute(sql("DELETE FROM {}.receiver_retry_cause WHERE cause IN (SELECT cause FROM "
                            "{}.receiver_retry_queue WHERE id IN ({}))", s, s, marks), page)  # their causes due
        applier.conn.commit()
        step(len(wanted), "marking")
        yield
    step(len(wanted), "retrying", force=True)
    applier.reload_blocked()
    outcomes = [o for o in (yield from retry.pass_steps(applier)) if o.message_id in wanted]
    applied = sum(1 for o in outcomes if o.outcome not in FAILED)
    log.info("retry again of %d entries (%s): %d re-applied", len(wanted), chosen.describe(), applied)
    text = _("{count} entries retried ({filters}): {applied} re-applied, {failed} still in the queue").format(
        count=len(wanted), filters=chosen.describe(), applied=applied, failed=len(wanted) - applied)
    return {"text": text, "records": [o.record() for o in outcomes],
            "counts": {"selected": len(wanted), "applied": applied}}


def resolve(applier: Applier, chosen: Selection, mode: str, progress: Progress | None = None) -> Steps:
    """Resolve every selected conflict the same way; one that cannot be resolved is counted, named in the log and
    left unresolved, the others go on. Then the entries of the resolved conflicts' entities are retried."""
    if mode not in MODES:
        raise conflicts.ConflictError(_("--merge resolves one conflict at a time"))
    total = selection.still_pinned(applier.conn, applier.settings.state_schema, chosen)
    step, resolved, failed, first_error = _Throttle(progress, total), 0, 0, ""
    entities: set[str] = set()
    for page in _pages(applier, chosen):
        keys = conflicts.entity_keys(applier.conn, applier.s, page)
        for number in page:
            try:
                conflicts.resolve(applier, number, mode, release=False)
                resolved += 1
                if number in keys:
                    entities.add(keys[number])
            except (conflicts.ConflictError, StateError) as exc:
                applier.conn.rollback()
                applier.rolled_back()
                failed += 1
                first_error = first_error or str(exc)
                log.warning("conflict %d not resolved: %s", number, exc)
            step(resolved + failed, "resolving")
            yield
    applied = (yield from _release(applier, step, resolved + failed, entities)) if entities else 0
    text = _("{count} conflict(s) resolved ({mode}); {done} waiting message(s) applied").format(
        count=resolved, mode=_(mode), done=applied)
    if failed:
        text += "; " + _("{failed} not resolved, the first: {error}").format(failed=failed, error=first_error)
    return {"text": text, "records": [], "counts": {"resolved": resolved, "failed": failed, "applied": applied}}

