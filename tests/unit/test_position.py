"""The order guard's comparison: older in the same binlog and loaded no later → skipped; anything else applies."""

from __future__ import annotations

import datetime as dt

from dbsync_cli.receiver.guard import SourcePosition


def message(file: str = "mysql-bin.000009", pos: int = 500, row: int = 0, sent: str = "2026-11-26T06:00:00.000+00:00",
            site: str = "site1", server_id: int = 11, snapshot: bool = False) -> dict:
    return {"site": site, "sent": sent,
            "source": {"server_id": server_id, "file": file, "pos": pos, "row": row, "snapshot": snapshot}}


def pos(**kw) -> SourcePosition:
    found = SourcePosition.of(message(**kw))
    assert found is not None
    return found


def test_an_older_row_of_the_same_binlog_loaded_earlier_is_older() -> None:
    last = pos(pos=900, sent="2026-11-26T06:00:01.000+00:00")
    assert pos(pos=500).older_than(last)
    assert pos(pos=900, row=-5).older_than(pos(pos=900, row=2))
    assert not last.older_than(pos(pos=500))
    assert not last.older_than(last)  # the same change again is not older (its id makes it a duplicate)


def test_binlog_files_compare_by_number_not_text() -> None:
    assert pos(file="mysql-bin.000009", pos=9_000).older_than(pos(file="mysql-bin.000010", pos=4))
    assert pos(file="mysql-bin.999999", pos=4).older_than(pos(file="mysql-bin.1000000", pos=4))


def test_a_snapshot_row_comes_before_binlog_events_at_the_snapshot_position() -> None:
    assert pos(pos=700, row=12, snapshot=True).older_than(pos(pos=700, row=0))


def test_a_resend_loaded_later_applies_even_from_an_older_position() -> None:
    last = pos(pos=900, sent="2026-11-26T06:00:00.000+00:00")
    assert not pos(pos=500, sent="2026-11-26T06:05:00.000+00:00").older_than(last)


def test_other_sites_servers_and_binlog_names_are_not_compared() -> None:
    last = pos(pos=900)
    assert not pos(pos=5, site="site2").older_than(last)
    assert not pos(pos=5, server_id=12).older_than(last)
    assert not pos(file="mariadb-bin.000009", pos=5).older_than(last)


def test_messages_without_a_usable_position_are_never_skipped() -> None:
    assert SourcePosition.of({"site": "s"}) is None
    assert SourcePosition.of(message(file="binlog")) is None
    undated = SourcePosition.of(message(sent="yesterday"))
    assert undated is not None and not undated.older_than(pos(pos=900))


def test_sent_is_stored_as_naive_utc_milliseconds() -> None:
    found = pos(sent="2026-11-26T08:00:00.123456+02:00")
    assert found.sent == dt.datetime(2026, 11, 26, 6, 0, 0, 123000)
    assert SourcePosition.from_row(found.row_values()) == found


def test_the_stored_position_never_moves_back_within_one_binlog() -> None:
    last = pos(pos=900, sent="2026-11-26T06:00:00.000+00:00")
    resend = pos(pos=500, sent="2026-11-26T06:05:00.000+00:00")  # applied: loaded later
    stored = resend.since(last)
    assert (stored.pos, stored.sent) == (900, dt.datetime(2026, 11, 26, 6, 5))
    assert pos(pos=700, sent="2026-11-26T06:01:00.000+00:00").older_than(stored)
    other = pos(pos=5, site="site2")
    assert other.since(last) == other
