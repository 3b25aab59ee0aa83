"""Did every committed row arrive? The benchmarks' verdict on committed vs arrived rows (no I/O here).

A benchmark that sees a committed row not arrive (or arrive different) must fail, name the rows and keep the
evidence (scripts/bench, scripts/bench-receiver). A row still in flight is not missing: `settle` polls until
nothing is missing, or until nothing has moved for `quiet` seconds (neither the missing rows nor the receiver's
progress), or until `timeout`; only then is the verdict final.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SHOWN = 20  # rows named in a failure message


@dataclass(frozen=True)
class Verdict:
    """Rows expected at central that are not there, or not as committed."""

    what: str
    expected: int
    missing: tuple[tuple[str, str], ...] = ()  # (table, uuid)
    different: tuple[tuple[str, str, str], ...] = ()  # (table, uuid, how)
    notes: tuple[str, ...] = field(default=(), compare=False)
    found: int | None = None  # a count (`counted`): what was found, where no uuid is read


    @property
    def ok(self) -> bool:
        return not self.missing and not self.different

    def line(self) -> str:
        """One line: the verdict of this check."""
        state = "ok" if self.ok else "FAILED"
        if self.found is not None:
            return f"verdict {self.what}: {state}: {self.found:,} counted, {self.expected:,} expected"
        return (f"verdict {self.what}: {state}: {self.expected - len(self.missing):,} of {self.expected:,} committed "
                f"rows arrived, {len(self.missing):,} missing, {len(self.different):,} different")

    def lines(self, limit: int = SHOWN) -> list[str]:
        """The verdict line, then the first `limit` missing and different rows by table and uuid."""
        out = [self.line(), *self.notes]
        for title, rows in (("missing", [f"{t} {u}" for t, u in self.missing]),
                            ("different", [f"{t} {u}: {how}" for t, u, how in self.different])):
            if rows:
                shown = rows[:limit]
                more = f" (first {len(shown)} of {len(rows):,})" if len(rows) > len(shown) else ""
                out.append(f"  {title}{more}:")
                out.extend(f"    {row}" for row in shown)
        return out

    def as_dict(self, limit: int = SHOWN) -> dict[str, Any]:
        return {"what": self.what, "ok": self.ok, "expected": self.expected, "missing": len(self.missing),
                "different": len(self.different), "missing_rows": [list(r) for r in self.missing[:limit]],
                "different_rows": [list(r) for r in self.different[:limit]], "notes": list(self.notes)}


def from_sets(what: str, expected: Mapping[str, Iterable[str]], found: Mapping[str, Iterable[str]],
              different: Iterable[tuple[str, str, str]] = (), notes: Iterable[str] = ()) -> Verdict:
    """Expected uuids per table against those found at central (uuids compared case-insensitively, as MariaDB
    does); the missing ones sorted by table and uuid."""
    missing: list[tuple[str, str]] = []
    total = 0
    for table, uuids in expected.items():
        there = {u.lower() for u in found.get(table, ())}
        wanted = set(uuids)
        total += len(wanted)
        missing.extend((table, u) for u in sorted(wanted) if u.lower() not in there)
    return Verdict(what, total, tuple(sorted(missing)), tuple(sorted(different)), tuple(notes))


_DIFF = re.compile(r"^(?P<table>\w+) (?P<uuid>\S+): (?P<how>.*)$")


def from_differences(what: str, expected: int, differences: Iterable[str]) -> Verdict:
    """From `devtools.workload.truth.compare`'s lines: "<table> <uuid>: missing" is a missing row, any other a
    different one (a column that differs, a duplicate identity, a deleted row still present, a table missing)."""
    missing: list[tuple[str, str]] = []
    different: list[tuple[str, str, str]] = []
    for text in differences:
        match = _DIFF.match(text)
        if match is None:
            different.append(("?", "?", text))
        elif match["how"] == "missing":
            missing.append((match["table"], match["uuid"]))
        else:
            different.append((match["table"], match["uuid"], match["how"]))
    return Verdict(what, expected, tuple(sorted(missing)), tuple(different))


def settle(poll: Callable[[], tuple[Verdict, Any]], *, timeout: float = 300, quiet: float = 30,
           interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Poll `poll()` → (verdict, progress) until the verdict is ok, or neither the verdict's missing/different rows
    nor `progress` (e.g. the receiver's applied-message count and inbox size) changed for `quiet` seconds, or
    `timeout` seconds passed; returns the last verdict."""
    started = clock()
    verdict, progress = poll()
    seen = (verdict.missing, verdict.different, progress)
    changed = started
    while not verdict.ok:
        now = clock()
        if now - changed >= quiet or now - started >= timeout:
            break
        sleep(interval)
        verdict, progress = poll()
        state = (verdict.missing, verdict.different, progress)
        if state != seen:
            seen, changed = state, clock()
    waited = clock() - started
    return Verdict(verdict.what, verdict.expected, verdict.missing, verdict.different,
                   (*verdict.notes, f"  (judged after waiting {waited:.0f} s; quiet {quiet:.0f} s, "
                                    f"timeout {timeout:.0f} s)") if not verdict.ok else verdict.notes)


class RowsMissing(RuntimeError):
    """A committed row did not arrive (or arrived different): the benchmark fails and keeps its evidence."""

    def __init__(self, verdicts: list[Verdict], extra: Iterable[str] = ()):
        self.verdicts = verdicts
        super().__init__("\n".join([*(line for v in verdicts for line in v.lines()), *extra]))


def counted(what: str, expected: int, found: int) -> Verdict:
    """A stage that ends before central (capture, enrich, publish, consume): its rows counted where it put them
    against what it was given; a shortfall fails the run like a missing row (named by count: no uuid is read there)."""
    short = max(0, expected - found)
    extra = max(0, found - expected)
    return Verdict(what, expected, tuple(("(count)", f"#{n + 1} of {short} short") for n in range(short)),
                   (("(count)", "-", f"{extra} more than expected"),) if extra else (), found=found)
