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


def test_verdicts_are_strict_and_name_the_command() -> None:
    assert fig.verdict("x", 9.99, 10, "MB/h", "scripts/bench-retry")[0]
    ok, line = fig.verdict("x", 10.0, 10, "MB/h", "scripts/bench-retry")
    assert not ok and "FAIL" in line and "scripts/bench-retry" in line
    assert fig.percentiles([1.0] * 99 + [9.0]) == {"p50_s": 1.0, "p95_s": 1.0, "max_s": 9.0}
