"""Operator actions on central state — retry again / drop, conflicts resolve — under the single-applier lock.

One applier at a time judges and writes central's rows (Applier.claim: a server lock named after the state schema,
held by the receiver for as long as it runs). An action of `dbsync retry …`, `dbsync conflicts resolve …` or of the
console's buttons is a writer of the same rows, so:

- no receiver running: the action takes the lock itself (without waiting: nobody else holds it) and acts at once;
- a receiver running: the lock is not going to be free, so the action is handed to it as a row of
  `receiver_request`; the receiver's apply loop carries it out between two batches, with its own applier, and
  writes the outcome back. The CLI waits for that outcome a bounded time (`dbsync … --wait`); a request the receiver has not started by then is
  cancelled, nothing is changed, and the CLI exits RECEIVER_BUSY (18) with one line. If the receiver stops while
  the request waits, the requester gets the lock and acts itself.

The console does not wait at all: it queues a request (`submit`) and shows its progress (`requests`); with no
receiver running its own worker (console/worker.py) serves it. Bulk actions (…_many) carry a selection
(receiver/selection.py) pinned to the entries the operator counted, and report progress as they go.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson

from dbsync_cli import i18n
from dbsync_cli.i18n import _
from dbsync_cli.receiver import bulk, conflicts, reasons, retry
from dbsync_cli.receiver.apply import AlreadyApplying, Applier
from dbsync_cli.receiver.batch import now
from dbsync_cli.receiver.selection import Selection, SelectionError
from dbsync_cli.receiver.state import applier_lock, schema_name
from dbsync_cli.receiver.worker_locks import running_workers
from dbsync_cli.sql import Sql, sql

log = logging.getLogger("dbsync.actions")

ACTIONS = ("retry_again", "retry_drop", "resolve", "retry_again_many", "retry_drop_many", "resolve_many")
CLI_WAIT_SECONDS = 60  # `--wait` default: how long a CLI action waits for the running receiver to carry it out
POLL_SECONDS = 1.0  # how often a waiting requester looks at its request (while it also tries the lock)
KEEP_DAYS = 7  # finished requests kept this long (the receiver's log says what each did)


class ReceiverBusy(Exception):
    """The running receiver did not take the action in time; nothing was changed."""


class ActionFailed(Exception):
    """The action was refused or failed (a conflict already resolved, an entry that does not exist …): one line."""


def perform(applier: Applier, action: str, args: dict[str, Any],
            progress: bulk.Progress | None = None) -> dict[str, Any]:
    """Carry `action` out with `applier`, which holds the applier lock: {"text": one line, "records": outcomes}.
    A bulk action (…_many, with a selection) reports (done, total, phase) to `progress` as it goes."""
    return retry.drive(steps(applier, action, args, progress))


def steps(applier: Applier, action: str, args: dict[str, Any], progress: bulk.Progress | None = None) -> bulk.Steps:
    """`action` as steps that yield between committed transactions (bulk.py): the running receiver carries a long
    action out a bounded time at a time between live batches (action_lane.ActionLane)."""
    if action == "retry_again":
        if args.get("number") is None:  # every entry now, due or not (each cause through its representative)
            outcomes = yield from retry.pass_steps(applier, everything=True)
            return {"text": _("{count} entries tried: {applied} re-applied").format(
                count=len(outcomes), applied=sum(1 for o in outcomes if o.outcome not in bulk.FAILED)),
                "records": [o.record() for o in outcomes]}
        outcomes = retry.retry_pending(applier, only=args["number"])
        said = "; ".join(o.outcome + (f": {reasons.said(o.reason)}" if o.reason else "") for o in outcomes) or _(
            "nothing")
        return {"text": _("entry {number}: {result}").format(number=args["number"], result=said),
                "records": [o.record() for o in outcomes]}
    if action == "retry_drop":
        return {"text": retry.drop_entry(applier, int(args["number"])), "records": []}
    if action == "resolve":
        return {"text": conflicts.resolve(applier, int(args["number"]), str(args["mode"]), args.get("columns")),
                "records": []}
    if action == "retry_again_many":
        return (yield from bulk.again(applier, Selection.of({**args["selection"], "queue": "retry"}), progress))
    if action == "retry_drop_many":
        return (yield from bulk.drop(applier, Selection.of({**args["selection"], "queue": "retry"}), progress))
    if action == "resolve_many":
        chosen = args.get("selection") or {"site": args.get("site"), "table": args.get("table")}
        return (yield from bulk.resolve(applier, Selection.of({**chosen, "queue": "conflicts"}), str(args["mode"]),
                                        progress))
    raise ActionFailed(_("unknown action {action!r}").format(action=action))


def run(applier: Applier, action: str, args: dict[str, Any], *, who: str, wait: float = CLI_WAIT_SECONDS
        ) -> dict[str, Any]:
    """Do `action` under the applier lock: at once when no receiver holds it, else through the running receiver.
    The caller closes `applier` (which releases the lock it may hold)."""
    try:
        applier.claim(wait=0)
    except AlreadyApplying:
        return _hand_over(applier, action, args, who, wait)
    applier.actor = who  # the archive says who decided what this action changes
    try:
        return _done(perform(applier, action, args))
    finally:
        applier.actor = None


def _done(result: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(result.get("text") or ""), "records": list(result.get("records") or [])}


def submit(conn: Any, schema: str, action: str, args: dict[str, Any], who: str) -> int:
    """Queue `action` for whoever holds the applier lock next (the running receiver, or the console's worker);
    returns the request's id. Its outcome is read with `requests`."""
    if action not in ACTIONS:
        raise ActionFailed(_("unknown action {action!r}").format(action=action))
    return _insert(conn, schema_name(schema), action, args, who)


def _insert(conn: Any, s: Sql, action: str, args: dict[str, Any], who: str) -> int:
    with conn.cursor() as cur:
        cur.execute(sql("INSERT INTO {}.receiver_request (action, args, requested_by, date_created, state) VALUES "
                        "(%s, %s, %s, %s, 'pending')", s),
                    (action, orjson.dumps({**args, "lang": i18n.current()}).decode(), who[:100], now()))
        request = int(cur.lastrowid)
    conn.commit()
    return request


def requests(conn: Any, schema: str, *, limit: int = 20, requested_by: str | None = None) -> list[dict[str, Any]]:
    """The latest requests, newest first: state (pending, running, done, failed, cancelled), progress while it
    runs ({"done", "total", "phase"}) and the outcome's one line and counts once it ended."""
    where, params = (sql(" WHERE requested_by = %s"), [requested_by]) if requested_by else (sql(""), [])
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id, action, args, requested_by, date_created, state, date_done, result FROM "
                        "{}.receiver_request{} ORDER BY id DESC LIMIT %s", schema_name(schema), where),
                    [*params, limit])
        rows = cur.fetchall()
    conn.commit()
    found = []
    for request, action, raw, who, created, state, done, result in rows:
        args = orjson.loads(raw) if raw else {}
        outcome = orjson.loads(result) if result else {}
        found.append({"id": int(request), "action": action, "what": describe(action, args), "requested_by": who,
                      "date_created": created.isoformat(sep=" ", timespec="seconds"), "state": state,
                      "date_done": done.isoformat(sep=" ", timespec="seconds") if done else None,
                      "progress": outcome.get("progress") if state == "running" else None,
                      "text": outcome.get("text") if state in ("done", "failed") else None,
                      "counts": outcome.get("counts") if state == "done" else None})
    return found


def pending(conn: Any, schema: str, *, running: bool = False) -> int:
    """How many requests wait for someone holding the applier lock (`running`: and those taken, which a process
    that stopped may have left)."""
    states = sql("('pending', 'running')") if running else sql("('pending')")
    with conn.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_request WHERE state IN {}", schema_name(schema), states))
        (found,) = cur.fetchone() or (0,)
    conn.commit()
    return int(found)


def describe(action: str, args: dict[str, Any]) -> str:
    """What a request asks, in the reader's language."""
    chosen = args.get("selection")
    try:
        filters = Selection.of(chosen).describe() if isinstance(chosen, dict) else ""
    except SelectionError:
        filters = "?"
    number = args.get("number")
    mode = _(str(args.get("mode") or "manual"))
    return {
        "retry_again": _("retry entry {number} again").format(number=number) if number is not None
        else _("retry the whole queue again"),
        "retry_drop": _("drop retry entry {number}").format(number=number),
        "resolve": _("resolve conflict {number} ({mode})").format(number=number, mode=mode),
        "retry_again_many": _("retry again: {filters}").format(filters=filters),
        "retry_drop_many": _("drop retry entries: {filters}").format(filters=filters),
        "resolve_many": _("resolve conflicts ({mode}): {filters}").format(mode=mode, filters=filters),
    }.get(action, action)


def _hand_over(applier: Applier, action: str, args: dict[str, Any], who: str, wait: float) -> dict[str, Any]:
    request = _insert(applier.conn, applier.s, action, args, who)
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


def lock_free(conn: Any, schema: str) -> bool:
    """Nobody holds the applier lock now and no receiver worker runs (a look, not a claim)."""
    with conn.cursor() as cur:
        cur.execute("SELECT IS_FREE_LOCK(%s)", (applier_lock(schema),))
        (free,) = cur.fetchone() or (0,)
        free = free == 1 and not running_workers(cur, schema)
    conn.commit()
    return free


def release(applier: Applier) -> None:
    """Let the applier lock go (Applier.claim took it), so a receiver that starts gets it within seconds."""
    with applier.conn.cursor() as cur:
        cur.execute("SELECT RELEASE_LOCK(%s)", (applier_lock(applier.settings.state_schema),))
        cur.fetchall()
