"""The retry-queue bench's figures and verdicts (`scripts/bench-retry`): pure arithmetic, no I/O, nothing of dbsync
imported (a checker of results never imports the code it checks).

- binlog bytes are split by transaction: one that writes the retry tables and no OpenMRS table is the retry lane's
  (or housekeeping's: counted against the retry lane, never for it); any other is a live change's
- the schedule is read back from what the receiver wrote (each entry's next_attempt − date_last_attempt after its
  attempt, by kind and attempt number), and bytes per hour follow from it: a queue parked long ago (every entry at
  its backoff cap) and a fresh one (its first hour: the first pass measured, the later attempts of the hour at the
  measured bytes per attempt). Entries sharing a cause are tried through one representative: the cause's schedule
  (receiver_retry_cause) counts once, not per entry
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: the done-when line of issue 26
BINLOG_CEILING_MB_PER_HOUR = 10.0
LATENCY_CEILING_P95_S = 5.0
RETRY_TABLES = ("receiver_retry_queue", "receiver_retry_body", "receiver_fix_epoch", "receiver_retry_cause")


@dataclass(frozen=True)
class Event:
    """One row of SHOW BINLOG EVENTS: its type, its size in bytes and its info (Table_map names the table)."""
    kind: str
    size: int
    info: str


def split_transactions(events: Iterable[Event], schema: str) -> tuple[int, int, int]:
    """(retry bytes, live bytes, retry transactions): each transaction (from its GTID event to the next) is the
    retry lane's when it maps a table of `schema` in RETRY_TABLES and nothing outside `schema`; else live."""
    retry = live = retry_tx = 0
    current: list[Event] = []

    def close() -> None:
        nonlocal retry, live, retry_tx
        if not current:
            return
        maps = [e.info for e in current if e.kind == "Table_map"]
        size = sum(e.size for e in current)
        ours = [m for m in maps if f"({schema}." in m]  # "table_id: 9 (schema.table)"
        if ours and len(ours) == len(maps) and any(m.endswith(f".{t})") for m in ours for t in RETRY_TABLES):
            retry += size
            retry_tx += 1
        else:
            live += size
        current.clear()

    for event in events:
        if event.kind in ("Gtid", "Gtid_log_event"):
            close()
        current.append(event)
    close()
    return retry, live, retry_tx


def schedule(waits: Iterable[tuple[str, int, float | None]]) -> dict[str, dict[int, float | None]]:
    """kind → attempt number → seconds to the next attempt (median of the entries seen; None: no schedule of its
    own) from (kind, attempts, seconds) triples read at central."""
    seen: dict[str, dict[int, list[float | None]]] = {}
    for kind, attempts, seconds in waits:
        seen.setdefault(kind, {}).setdefault(int(attempts), []).append(seconds)
    out: dict[str, dict[int, float | None]] = {}
    for kind, by_attempt in seen.items():
        out[kind] = {}
        for attempts, values in sorted(by_attempt.items()):
            known = [v for v in values if v is not None]
            out[kind][attempts] = statistics.median(known) if known else None
    return out


def attempts_per_hour_at_cap(table: Mapping[int, float | None]) -> float:
    """Attempts an hour of one entry that has waited long (its wait at the highest attempt number seen)."""
    if not table:
        return 0.0
    wait = table[max(table)]
    return 0.0 if not wait else 3600.0 / wait


def attempts_in_first_hour(table: Mapping[int, float | None], interval: float) -> int:
    """Attempts of a fresh entry in its first hour: tried at the first pass, then after each wait of the schedule
    (attempt numbers not seen take the nearest lower one's wait, below the lowest seen the lowest's: more
    attempts, never fewer; a wait of None: no schedule of its own)."""
    t, n, attempt = 0.0, 0, 1
    while t < 3600.0:
        n += 1
        known = [a for a in table if a <= attempt] or ([min(table)] if table else [])
        wait = table[max(known)] if known else None
        if wait is None:
            return n  # no schedule of its own: tried when its entity's head applies, not by the clock
        t += max(wait, interval)
        attempt += 1
    return n


def first_hour_bytes(first_pass: float, per_attempt: float, later_attempts: float) -> float:
    """Binlog bytes of the first hour of a queue filled at once: its first pass as measured, then each later
    attempt of the hour (from the schedule) at the bytes an attempt was measured to cost."""
    return first_pass + per_attempt * later_attempts


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {}
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50_s": round(q[49], 3), "p95_s": round(q[94], 3), "max_s": round(ordered[-1], 3)}


def verdict(what: str, figure: float, ceiling: float, unit: str, command: str) -> tuple[bool, str]:
    """PASS when `figure` is under `ceiling` (strictly), with the command that measured it."""
    ok = figure < ceiling
    return ok, f"verdict {what}: {'PASS' if ok else 'FAIL'}: {figure:,.3g} {unit} (ceiling < {ceiling:g} {unit}) " \
               f"[{command}]"
