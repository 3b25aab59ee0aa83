"""The retry queue's backoff rules (issue 26, item 3): growing, capped, per kind."""

from __future__ import annotations

import datetime as dt

from dbsync_cli.receiver import retry_rules as rules

MINUTE = dt.timedelta(minutes=1)


def test_transient_entries_start_at_the_interval_and_double_to_an_hour() -> None:
    waits = [rules.backoff(rules.TRANSIENT, n, MINUTE) for n in range(1, 10)]
    assert waits[:4] == [MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE]
    assert waits[-1] == rules.TRANSIENT_CAP == dt.timedelta(hours=1)


def test_permanent_entries_back_off_from_five_minutes_to_six_hours() -> None:
    assert rules.backoff(rules.PERMANENT, 1, MINUTE) == 5 * MINUTE
    assert rules.backoff(rules.PERMANENT, 2, MINUTE) == 10 * MINUTE
    assert rules.backoff(rules.PERMANENT, 50, MINUTE) == dt.timedelta(hours=6)


def test_never_more_often_than_the_loop_and_waiting_entries_have_no_schedule() -> None:
    assert rules.backoff(rules.PERMANENT, 1, dt.timedelta(minutes=10)) == dt.timedelta(minutes=10)
    assert rules.backoff(rules.WAITING, 3, MINUTE) is None
    now = dt.datetime(2025, 1, 1)
    assert rules.next_attempt(rules.WAITING, 1, MINUTE, now) is None
    assert rules.next_attempt(rules.TRANSIENT, 1, MINUTE, now) == now + MINUTE
    assert rules.due(None, now) and rules.due(now, now) and not rules.due(now + MINUTE, now)


def test_outcomes_map_to_kinds_and_references_to_causes() -> None:
    assert [rules.queue_kind_of(o) for o in ("retry", "error", "waiting")] == ["transient", "permanent", "waiting"]
    assert rules.reference_cause("ABC") == "ref:abc" and rules.reference_cause(None) is None


def test_an_entry_its_fix_makes_due_backs_off_longer_the_clock_being_a_safety_net_only() -> None:
    """A queue of 20,000 at the plain caps wrote ~17 MB of central's binlog an hour (scripts/bench-retry)."""
    assert rules.backoff(rules.TRANSIENT, 50, MINUTE, "ref:abc") == dt.timedelta(hours=6)
    assert rules.backoff(rules.PERMANENT, 50, MINUTE, "site:site9") == dt.timedelta(hours=24)
    assert rules.backoff(rules.PERMANENT, 50, MINUTE, "central") == dt.timedelta(hours=24)
    assert rules.backoff(rules.TRANSIENT, 50, MINUTE, None) == dt.timedelta(hours=1)  # nothing tells it is fixed
    assert rules.backoff(rules.PERMANENT, 1, MINUTE, "site:site9") == 5 * MINUTE  # the first waits are the same
    assert rules.backoff(rules.WAITING, 3, MINUTE, "ref:abc") is None
    assert not rules.retriggered("references") and rules.retriggered("ref:x")


def test_entries_of_a_cause_wait_while_it_backs_off_and_entries_without_one_never_do() -> None:
    assert rules.waits_for_cause("site:site9", failed={"site:site9"}, backed_off=set())  # its representative failed
    assert rules.waits_for_cause("ref:x", failed=set(), backed_off={"ref:x"})  # failed before, not due yet
    assert not rules.waits_for_cause("ref:x", failed={"ref:y"}, backed_off={"central"})  # due: tried (a representative)
    assert not rules.waits_for_cause(None, failed={"central"}, backed_off={"central"})  # its own schedule
