"""The benchmarks' committed-vs-arrived verdict (devtools/bench_verdict.py): pure, no services."""

from __future__ import annotations

from devtools.bench_verdict import RowsMissing, Verdict, from_differences, from_sets, settle


def test_all_arrived_is_ok() -> None:
    verdict = from_sets("probe", {"obs": ["a", "b"]}, {"obs": ["B", "a", "x"]})  # case-insensitive, extras ignored
    assert verdict.ok
    assert verdict.line() == "verdict probe: ok: 2 of 2 committed rows arrived, 0 missing, 0 different"


def test_missing_rows_are_named_first_20_and_counted() -> None:
    expected = {"obs": [f"u{i:02d}" for i in range(25)], "person": ["p1"]}
    verdict = from_sets("fairness", expected, {"obs": ["u00"], "person": []})
    assert not verdict.ok
    assert len(verdict.missing) == 25
    lines = verdict.lines()
    assert lines[0] == "verdict fairness: FAILED: 1 of 26 committed rows arrived, 25 missing, 0 different"
    assert lines[1] == "  missing (first 20 of 25):"
    assert lines[2] == "    obs u01"
    assert len([line for line in lines if line.startswith("    ")]) == 20


def test_a_row_that_arrived_different_fails() -> None:
    verdict = from_sets("probe", {"obs": ["a"]}, {"obs": ["a"]}, different=[("obs", "a", "value_numeric 1 ≠ 2")])
    assert not verdict.ok
    assert "    obs a: value_numeric 1 ≠ 2" in verdict.lines()


def test_truth_compare_lines() -> None:
    verdict = from_differences("load", 10, ["obs 1-2: missing", "person 3: gender expected 'F', found 'M'",
                                            "users: table missing"])
    assert verdict.missing == (("obs", "1-2"),)
    assert verdict.different == (("person", "3", "gender expected 'F', found 'M'"), ("?", "?", "users: table missing"))
    assert verdict.line().endswith("9 of 10 committed rows arrived, 1 missing, 2 different")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_settle_waits_for_rows_in_flight() -> None:
    clock = Clock()
    found: list[str] = []

    def poll() -> tuple[Verdict, int]:
        if clock.now >= 5:
            found.append("b")  # arrives late, while the receiver makes progress
        return from_sets("x", {"obs": ["a", "b"]}, {"obs": ["a", *found]}), int(clock.now)

    verdict = settle(poll, quiet=3, timeout=100, clock=clock, sleep=clock.sleep)
    assert verdict.ok
    assert clock.now == 5


def test_settle_judges_when_nothing_moves_for_quiet_seconds() -> None:
    clock = Clock()
    polls = []

    def poll() -> tuple[Verdict, int]:
        polls.append(clock.now)
        return from_sets("x", {"obs": ["a"]}, {"obs": []}), 7

    verdict = settle(poll, quiet=10, timeout=100, clock=clock, sleep=clock.sleep)
    assert not verdict.ok and verdict.missing == (("obs", "a"),)
    assert clock.now == 10
    assert "judged after waiting 10 s" in verdict.lines()[1]


def test_settle_gives_up_at_the_timeout_while_progress_goes_on() -> None:
    clock = Clock()

    def poll() -> tuple[Verdict, int]:
        return from_sets("x", {"obs": ["a"]}, {"obs": []}), int(clock.now)  # progress never stops

    verdict = settle(poll, quiet=3, timeout=20, clock=clock, sleep=clock.sleep)
    assert not verdict.ok
    assert clock.now == 20


def test_rows_missing_message_holds_every_failed_verdict() -> None:
    failed = from_sets("probe", {"obs": ["a"]}, {"obs": []})
    exc = RowsMissing([failed])
    assert str(exc).splitlines()[:3] == ["verdict probe: FAILED: 0 of 1 committed rows arrived, 1 missing, 0 different",
                                         "  missing:", "    obs a"]


def test_a_count_that_falls_short_fails_and_says_by_how_much() -> None:
    from devtools.bench_verdict import counted

    assert counted("publish: rows on the broker", 300, 300).ok
    short = counted("publish: rows on the broker", 300, 298)
    assert not short.ok and len(short.missing) == 2
    assert short.line() == "verdict publish: rows on the broker: FAILED: 298 counted, 300 expected"
    assert not counted("consume: inbox", 4, 5).ok  # more than expected is wrong too
