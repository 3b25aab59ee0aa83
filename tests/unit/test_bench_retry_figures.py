"""scripts/bench-retry's arithmetic (devtools/bench_retry_figures.py): which binlog bytes are the retry lane's, and
the hourly attempts that follow from a schedule read back from central."""

from __future__ import annotations

from devtools import bench_retry_figures as fig


def _tx(*maps: str, size: int = 100) -> list[fig.Event]:
    return [fig.Event("Gtid", 42, "BEGIN GTID 0-1-1"),
            *(fig.Event("Table_map", size, f"table_id: 9 ({m})") for m in maps), fig.Event("Xid", 31, "COMMIT")]


def test_a_transaction_is_the_retry_lanes_only_when_it_writes_nothing_but_the_retry_tables() -> None:
    events = [*_tx("st.receiver_retry_queue"), *_tx("st.receiver_retry_queue", "central.obs"),
              *_tx("st.entity_hash", "central.obs"), *_tx("other.receiver_retry_queue")]
    retry, live, count = fig.split_transactions(events, "st")
    assert (retry, count) == (173, 1) and live == 273 + 273 + 173


def test_hourly_attempts_follow_the_schedule_read_back() -> None:
    table = fig.schedule([("transient", 1, 60.0), ("transient", 2, 120.0), ("transient", 3, 3600.0),
                          ("transient", 3, 3600.0), ("waiting", 1, None)])
    assert table["transient"] == {1: 60.0, 2: 120.0, 3: 3600.0} and table["waiting"] == {1: None}
    assert fig.attempts_per_hour_at_cap(table["transient"]) == 1.0
    assert fig.attempts_in_first_hour(table["transient"], 60) == 3  # at 0, 1 and 3 minutes; then 63
    assert fig.attempts_in_first_hour(table["waiting"], 60) == 1 and fig.attempts_per_hour_at_cap({1: None}) == 0


def test_the_first_hour_is_the_measured_first_pass_plus_the_later_attempts_of_the_schedule() -> None:
    transient = {1: 60.0, 2: 120.0, 3: 240.0, 4: 480.0, 5: 960.0, 6: 1920.0}
    later = fig.attempts_in_first_hour(transient, 60) - 1  # at 0, 1, 3, 7, 15, 31 minutes: 5 after the first
    assert later == 5 and fig.first_hour_bytes(1000.0, 500.0, 10 * later) == 1000.0 + 500.0 * 50
    assert fig.attempts_in_first_hour({2: 120.0, 3: 240.0, 4: 3600.0}, 60) == 4  # attempt 1 unseen: the lowest wait
    events = fig.split_transactions(_tx("st.receiver_retry_cause"), "st")
    assert events[2] == 1  # a cause's schedule row is the retry lane's


def test_verdicts_are_strict_and_name_the_command() -> None:
    assert fig.verdict("x", 9.99, 10, "MB/h", "scripts/bench-retry")[0]
    ok, line = fig.verdict("x", 10.0, 10, "MB/h", "scripts/bench-retry")
    assert not ok and "FAIL" in line and "scripts/bench-retry" in line
    assert fig.percentiles([1.0] * 99 + [9.0]) == {"p50_s": 1.0, "p95_s": 1.0, "max_s": 9.0}
