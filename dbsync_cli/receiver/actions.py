"""Operator actions on central state — retry again / drop, conflicts resolve — under the single-applier lock.

One applier at a time judges and writes central's rows (Applier.claim: a server lock named after the state schema,
held by the receiver for as long as it runs). An action of `dbsync retry …`, `dbsync conflicts resolve …` or of the
console's buttons is a writer of the same rows, so:

- no receiver running: the action takes the lock itself (without waiting: nobody else holds it) and acts at once;
- a receiver running: the lock is not going to be free, so the action is handed to it as a row of
  `receiver_request`; the receiver's apply loop carries it out between two batches, with its own applier, and
  writes the outcome back. The requester waits for that outcome a bounded time (`dbsync … --wait`, the console a few
  seconds so that a browser never hangs on a long batch); a request the receiver has not started by then is
  cancelled, nothing is changed, and the CLI exits RECEIVER_BUSY (18) with one line. If the receiver stops while
  the request waits, the requester gets the lock and acts itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson

from dbsync_cli import i18n
from dbsync_cli.i18n import _
from dbsync_cli.receiver import conflicts, retry
from dbsync_cli.receiver.apply import AlreadyApplying, Applier
from dbsync_cli.receiver.batch import now
from dbsync_cli.receiver.state import StateError
from dbsync_cli.sql import sql

log = logging.getLogger("dbsync.actions")

ACTIONS = ("retry_again", "retry_drop", "resolve", "resolve_many")
CLI_WAIT_SECONDS = 60  # `--wait` default: how long a CLI action waits for the running receiver to carry it out
CONSOLE_WAIT_SECONDS = 10  # a console button: a browser must not wait on a long batch
POLL_SECONDS = 1.0  # how often a waiting requester looks at its request (while it also tries the lock)
KEEP_DAYS = 7  # finished requests kept this long (the receiver's log says what each did)


class ReceiverBusy(Exception):
    """The running receiver did not take the action in time; nothing was changed."""


class ActionFailed(Exception):
    """The action was refused or failed (a conflict already resolved, an entry that does not exist …): one line."""


def perform(applier: Applier, action: str, args: dict[str, Any]) -> dict[str, Any]:
    """Carry `action` out with `applier`, which holds the applier lock: {"text": one line, "records": outcomes}."""
    if action == "retry_again":
        outcomes = retry.retry_pending(applier, only=args.get("number"))
        return {"text": "", "records": [o.record() for o in outcomes]}
    if action == "retry_drop":
        return {"text": retry.drop_entry(applier, int(args["number"])), "records": []}
    if action == "resolve":
        return {"text": conflicts.resolve(applier, int(args["number"]), str(args["mode"]), args.get("columns")),
                "records": []}
    if action == "resolve_many":
        numbers = conflicts.matching(applier.conn, applier.settings.state_schema, site=args.get("site"),
                                     table=args.get("table"))
        return {"text": conflicts.resolve_many(applier, numbers, str(args["mode"])), "records": []}
    raise ActionFailed(_("unknown action {action!r}").format(action=action))


def run(applier: Applier, action: str, args: dict[str, Any], *, who: str, wait: float = CLI_WAIT_SECONDS
        ) -> dict[str, Any]:
    """Do `action` under the applier lock: at once when no receiver holds it, else through the running receiver.
    The caller closes `applier` (which releases the lock it may hold)."""
    try:
        applier.claim(wait=0)
    except AlreadyApplying:
        return _hand_over(applier, action, args, who, wait)
    return _done(perform(applier, action, args))


def _done(result: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(result.get("text") or ""), "records": list(result.get("records") or [])}


def _hand_over(applier: Applier, action: str, args: dict[str, Any], who: str, wait: float) -> dict[str, Any]:
    s = applier.s
    with applier.conn.cursor() as cur:
        cur.execute(sql("INSERT INTO {}.receiver_request (action, args, requested_by, date_created, state) VALUES "
                        "(%s, %s, %s, %s, 'pending')", s),
                    (action, orjson.dumps({**args, "lang": i18n.current()}).decode(), who[:100], now()))
        request = int(cur.lastrowid)
    applier.conn.commit()
    log.debug("request %d (%s) handed to the running receiver", request, action)
    try:
        return _await(applier, request, action, args, wait)
    except BaseException:  # Ctrl-C, a console worker that dies: an action nobody waits for is never carried out
        with contextlib.suppress(Exception):
            _cancel(applier, request)
        raise


def _await(applier: Applier, request: int, action: str, args: dict[str, Any], wait: float) -> dict[str, Any]:
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        state, result = _state(applier, request)
        if state in ("done", "failed"):
            return _outcome(state, result)
        if state == "pending" and time.monotonic() >= deadline:
            if _cancel(applier, request):
                raise ReceiverBusy(_("the running receiver did not take this action within {seconds:g} s (a long "
                                     "batch or retry pass?); nothing was changed: try again, or wait longer with "
                                     "--wait").format(seconds=wait))
            continue
        if state == "running" and time.monotonic() >= deadline + max(0.0, wait):
            raise ActionFailed(_("the running receiver took this action (request {request}) but has not finished it; "
                                 "its log says how it ends").format(request=request))
        try:
            applier.claim(wait=POLL_SECONDS)  # the receiver stopped meanwhile: the lock is ours now
        except AlreadyApplying:
            continue
        if _cancel(applier, request):
            return _done(perform(applier, action, args))
        state, result = _state(applier, request)
        if state in ("done", "failed"):
            return _outcome(state, result)
        _finish(applier, request, "failed", {"text": "the receiver stopped while carrying it out"})
        raise ActionFailed(_("the receiver stopped while carrying out this action (request {request}): look at "
                             "the queue again before retrying it").format(request=request))


def _state(applier: Applier, request: int) -> tuple[str, dict[str, Any]]:
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT state, result FROM {}.receiver_request WHERE id = %s", applier.s), (request,))
        row = cur.fetchone()
    applier.conn.commit()
    if row is None:
        return "failed", {"text": f"request {request} disappeared"}
    return str(row[0]), orjson.loads(row[1]) if row[1] else {}


def _cancel(applier: Applier, request: int) -> bool:
    """Withdraw a request the receiver has not started; False when it has."""
    with applier.conn.cursor() as cur:
        cur.execute(sql("UPDATE {}.receiver_request SET state = 'cancelled', date_done = %s WHERE id = %s AND "
                        "state = 'pending'", applier.s), (now(), request))
        cancelled = cur.rowcount == 1
    applier.conn.commit()
    return cancelled


def _finish(applier: Applier, request: int, state: str, result: dict[str, Any]) -> None:
    with applier.conn.cursor() as cur:
        cur.execute(sql("UPDATE {}.receiver_request SET state = %s, result = %s, date_done = %s WHERE id = %s",
                        applier.s), (state, orjson.dumps(result).decode(), now(), request))
    applier.conn.commit()


def _outcome(state: str, result: dict[str, Any]) -> dict[str, Any]:
    if state == "failed":
        raise ActionFailed(str(result.get("text") or "?"))
    return _done(result)


# ---- the running receiver's side ------------------------------------------------------------------------------
def serve(applier: Applier, limit: int = 20) -> int:
    """Carry out the pending requests (the receiver's apply loop, between batches; it holds the lock)."""
    s = applier.s
    with applier.conn.cursor() as cur:
        cur.execute(sql("SELECT id, action, args, requested_by FROM {}.receiver_request WHERE state = 'pending' "
                        "ORDER BY id LIMIT %s", s), (limit,))
        pending = list(cur.fetchall())
    applier.conn.commit()
    served = 0
    for request, action, raw, who in pending:
        with applier.conn.cursor() as cur:
            cur.execute(sql("UPDATE {}.receiver_request SET state = 'running', taken_by = CONNECTION_ID() "
                            "WHERE id = %s AND state = 'pending'", s), (request,))
            taken = cur.rowcount == 1
        applier.conn.commit()
        if not taken:  # withdrawn by its requester meanwhile
            continue
        args = orjson.loads(raw)
        token = i18n.use(str(args.pop("lang", "") or "en"))  # the requester's language, for its one-line answer
        try:
            result, state = perform(applier, action, args), "done"
        except (ActionFailed, conflicts.ConflictError, StateError, ValueError, KeyError) as exc:
            applier.conn.rollback()
            applier.rolled_back()
            applier.reload_blocked()
            result, state = {"text": str(exc)}, "failed"
        except Exception as exc:  # e.g. a deadlock: the request ends failed, never left running; the loop restarts
            with contextlib.suppress(Exception):
                applier.conn.rollback()
            applier.rolled_back()
            with contextlib.suppress(Exception):
                _finish(applier, request, "failed", {"text": f"failed: {type(exc).__name__}: {exc}"[:500]})
            raise
        finally:
            i18n.reset(token)
        _finish(applier, request, state, _done(result))
        served += 1
        log.info("request %d (%s by %s) %s: %s", request, action, who, state,
                 result.get("text") or f"{len(result.get('records') or [])} outcome(s)")
    if served:
        with applier.conn.cursor() as cur:
            cur.execute(sql("DELETE FROM {}.receiver_request WHERE state IN ('done', 'failed', 'cancelled') AND "
                            "date_created < UTC_TIMESTAMP() - INTERVAL %s DAY", s), (KEEP_DAYS,))
        applier.conn.commit()
    return served
