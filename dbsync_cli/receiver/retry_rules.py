"""When a parked message is tried again: pure rules, no database (unit-tested alone).

Each entry of the retry queue has a kind. A transient one (a reference not at central yet, a failed statement)
backs off from one retry interval, doubling, to TRANSIENT_CAP; a permanent one (refused: site not registered or
disabled, sent by another broker user; malformed for this central; another site's row) from PERMANENT_BASE to
PERMANENT_CAP; one waiting behind an earlier entry of its entity has no schedule of its own (it is tried as soon as
its entity's head applies). Whatever can fix an entry (its `cause`) makes it due at once: see state.fix_changed and
the retry lane's reference triggers. Entries that share a cause are tried through one representative a pass and
back off together (waits_for_cause; the schedule is the cause's). An entry with such a cause is tried by the clock
only as a safety net, so its
backoff grows to the longer RETRIGGERED_CAPS (each attempt is a row in central's binlog: 20,000 parked entries at
the plain caps wrote ~17 MB an hour, scripts/bench-retry).
"""

from __future__ import annotations

import datetime as dt

TRANSIENT = "transient"
PERMANENT = "permanent"
WAITING = "waiting"
KINDS = (TRANSIENT, PERMANENT, WAITING)

#: the longest a transient entry waits between attempts (a reference's arrival makes it due at once anyway)
TRANSIENT_CAP = dt.timedelta(hours=1)
#: the first and the longest wait of a permanent entry (what fixes it makes it due at once)
PERMANENT_BASE = dt.timedelta(minutes=5)
PERMANENT_CAP = dt.timedelta(hours=6)
#: the longest wait of an entry whose cause makes it due at once when fixed (a referenced row applied, its site
#: registered or enabled, central's schema or settings changed): the clock is only a safety net for it
RETRIGGERED_CAPS = {TRANSIENT: dt.timedelta(hours=6), PERMANENT: dt.timedelta(hours=24)}
#: causes whose fix is noticed (state.site_cause, state.CENTRAL_CAUSE, reference_cause)
RETRIGGERED = ("ref:", "site:", "central", "file:")  # file: the file lane makes it due (complex_files.py)


def queue_kind_of(outcome: str) -> str:
    """The entry kind of an apply outcome that parks a message ("retry" | "error" | "waiting")."""
    return {"error": PERMANENT, "waiting": WAITING}.get(outcome, TRANSIENT)


def reference_cause(uuid: str | None) -> str | None:
    """The cause of an entry waiting for the row `uuid` (due at once when a row with that uuid is applied)."""
    return f"ref:{uuid.lower()}"[:160] if uuid else None


def retriggered(cause: str | None) -> bool:
    """True when what fixes entries of `cause` makes them due at once (their clock is a safety net only)."""
    return cause is not None and cause.startswith(RETRIGGERED)


def backoff(kind: str, attempts: int, interval: dt.timedelta, cause: str | None = None) -> dt.timedelta | None:
    """How long after its `attempts`-th failed attempt an entry of `cause` waits (None: no schedule of its own)."""
    if kind == WAITING:
        return None
    base, cap = (PERMANENT_BASE, PERMANENT_CAP) if kind == PERMANENT else (interval, TRANSIENT_CAP)
    if retriggered(cause):
        cap = RETRIGGERED_CAPS.get(kind, cap)
    base = max(base, interval)  # never more often than the retry loop runs
    exponent = min(max(attempts, 1) - 1, 30)
    return min(base * (2 ** exponent), max(cap, base))


def next_attempt(kind: str, attempts: int, interval: dt.timedelta, now: dt.datetime,
                 cause: str | None = None) -> dt.datetime | None:
    """When an entry of `cause` that failed its `attempts`-th attempt at `now` is due again (None: due at every
    pass)."""
    wait = backoff(kind, attempts, interval, cause)
    return None if wait is None else now + wait


def due(next_at: dt.datetime | None, now: dt.datetime) -> bool:
    return next_at is None or next_at <= now


def waits_for_cause(cause: str | None, failed: set[str], backed_off: set[str]) -> bool:
    """True when an entry of `cause` is not tried in this pass: its cause's representative failed in this pass
    (`failed`) or before, and the cause's next attempt has not come (`backed_off`). Entries without a cause keep
    their own schedule."""
    return cause is not None and (cause in failed or cause in backed_off)
