"""The conflict rule (docs/conflicts.md) as a pure function: `judge` on rows held in memory, no database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.receiver.conflict import HASH, canonical, judge
from dbsync_cli.wire import format_time

EARLY = dt.datetime(2024, 1, 1, 9, 0)
LATE = dt.datetime(2024, 3, 1, 9, 0)


def _col(name: str, data_type: str, column_type: str | None = None, *, auto: bool = False) -> Column:
    return Column(name, data_type, column_type or data_type, True, None, auto)


def _table() -> SyncedTable:
    columns = [
        _col("thing_id", "int", "int(11)", auto=True), _col("uuid", "char", "char(38)"),
        _col("name", "varchar", "varchar(50)"), _col("birthtime", "time"), _col("voided", "tinyint", "tinyint(1)"),
        _col("void_reason", "varchar", "varchar(255)"), _col("date_changed", "datetime"),
        _col("date_voided", "datetime"), _col("date_retired", "datetime"),
    ]  # fmt: skip
    info = TableInfo("thing", {c.name: c for c in columns}, ("thing_id",), {}, {"uuid"})
    return SchemaModel("openmrs", {"thing": info}, synced=["thing"]).table("thing")


TABLE = _table()


def _current(hash_: str = "h1", **values: Any) -> dict[str, Any]:
    return {"thing_id": 7, "uuid": "u-1", "name": "Ana", "voided": 0, "void_reason": None, "date_changed": None,
            "date_voided": None, "date_retired": None, HASH: hash_, **values}  # fmt: skip


def _judge(current: dict[str, Any], stored: str | None, values: dict[str, Any] | None, *,
           incoming_time: dt.datetime | None = None, policy: str = "newer",
           last_site: str | None = "s2", owner: str | None = "s2",
           central_rows: str = "skip") -> tuple[bool, bool, str | None]:
    """`last_site` s2: the row was last written by another site than the incoming change's s1."""
    message = {"table": "thing", "uuid": "u-1", "op": "d" if values is None else "u", "site": "s1"}
    verdict = judge(TABLE, current, stored, message, values, incoming_time, policy, last_site=last_site, owner=owner,
                    central_rows=central_rows)
    return verdict.park, verdict.skip == "stale", verdict.reason


def _skip(current: dict[str, Any], stored: str | None, values: dict[str, Any] | None, **kw: Any) -> str | None:
    message = {"table": "thing", "uuid": "u-1", "op": "d" if values is None else "u", "site": "s1"}
    return judge(TABLE, current, stored, message, values, None, "newer", **kw).skip


def test_a_placeholder_is_never_a_conflict_whatever_the_hash_and_policy() -> None:
    current = _current(void_reason="[placeholder]", voided=1, date_voided=LATE)
    assert _judge(current, None, {"name": "Bo"}, policy="any") == (False, False, None)
    assert _judge(current, "other", {"name": "Bo", "date_changed": EARLY}, policy="any") == (False, False, None)
    assert _judge(current, "other", None, incoming_time=EARLY, policy="newer") == (False, False, None)


def test_a_row_dbsync_never_wrote_is_centrals_own_equal_or_not_update_or_delete() -> None:
    for values in ({"name": "Ana", "voided": 0, "date_changed": None}, {"name": "Bo"}, None):
        assert _skip(_current(), None, values, owner=None) == "central_owned"
        assert _skip(_current(), "h1", values, owner="*central") == "central_owned"  # kept as central's before


def test_centrals_own_row_is_parked_when_the_setting_says_park() -> None:
    park, stale, reason = _judge(_current(), None, {"name": "Bo"}, owner=None, central_rows="park")
    assert (park, stale) == (True, False)
    assert reason == "central's own row: central had it before any site changed it"


def test_a_placeholder_is_never_centrals_own() -> None:
    current = _current(void_reason="[placeholder]", voided=1, date_voided=LATE)
    assert _skip(current, None, {"name": "Bo"}, owner=None) is None


def test_a_row_recreated_at_central_after_its_synced_delete_is_parked_when_it_differs() -> None:
    park, _, reason = _judge(_current(), None, {"name": "Bo"}, owner="s1")
    assert park and reason is not None and reason.startswith("row re-created at central")
    assert _judge(_current(), None, {"name": "Ana"}, owner="s1") == (False, False, None)


def test_equality_before_any_sync_compares_canonical_values() -> None:
    current = _current(name="Ana", date_changed=dt.datetime(2024, 1, 1, 9, 0), voided=0)
    values = {"name": "Ana", "date_changed": dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.UTC), "voided": 0.0}
    assert _judge(current, None, values) == (False, False, None)


def test_a_time_column_read_at_central_equals_the_same_time_from_the_wire() -> None:
    birthtime = dt.timedelta(hours=7, minutes=5)  # how pymysql reads person.birthtime at central
    values = {"name": "Ana", "birthtime": format_time(birthtime)}  # how Converter.value passes it through
    assert _judge(_current(birthtime=birthtime), None, values) == (False, False, None)


def test_a_row_unchanged_since_the_last_sync_is_applied() -> None:
    current = _current(date_changed=EARLY)
    assert _judge(current, "h1", {"name": "Bo", "date_changed": LATE}) == (False, False, None)
    assert _judge(current, "h1", {"name": "Bo"}) == (False, False, None)  # undated incoming row
    assert _judge(current, "h1", {"name": "Bo", "date_changed": EARLY}) == (False, False, None)  # same date


def test_a_backdated_change_of_the_same_site_is_applied_the_binlog_orders_it() -> None:
    for last_site in ("s1", None):
        verdict = _judge(_current(date_changed=LATE), "h1", {"name": "Bo", "date_changed": EARLY}, last_site=last_site)
        assert verdict == (False, False, None)


def test_an_update_older_than_central_is_stale_when_the_row_is_unchanged() -> None:
    park, stale, reason = _judge(_current(date_changed=LATE), "h1", {"name": "Bo", "date_changed": EARLY})
    assert (park, stale) == (False, True)
    assert reason == f"incoming change ({EARLY}) is older than central ({LATE})"


def test_staleness_uses_the_latest_of_changed_voided_and_retired() -> None:
    current = _current(date_changed=EARLY, date_retired=LATE)
    middle = dt.datetime(2024, 2, 1)
    assert _judge(current, "h1", {"date_changed": middle})[1] is True
    assert _judge(current, "h1", {"date_changed": EARLY, "date_voided": LATE + dt.timedelta(1)})[1] is False


def test_a_delete_of_an_unchanged_row_is_never_stale() -> None:
    assert _judge(_current(date_changed=LATE), "h1", None, incoming_time=EARLY) == (False, False, None)


def test_policy_any_parks_every_change_to_a_row_edited_centrally() -> None:
    expected = (True, False, "row edited centrally since its last sync")
    assert _judge(_current(date_changed=EARLY), "h0", {"date_changed": LATE}, policy="any") == expected
    assert _judge(_current(), "h0", None, incoming_time=LATE, policy="any") == expected


def test_policy_newer_parks_when_central_edit_is_after_the_incoming_one() -> None:
    park, stale, reason = _judge(_current(date_changed=LATE), "h0", {"name": "Bo", "date_changed": EARLY})
    assert (park, stale) == (True, False)
    assert reason == f"row edited centrally at {LATE}, after the incoming change ({EARLY})"


def test_policy_newer_applies_an_incoming_change_newer_than_central() -> None:
    assert _judge(_current(date_voided=EARLY), "h0", {"date_changed": LATE}) == (False, False, None)


def test_policy_newer_compares_the_latest_of_the_three_dates_on_both_sides() -> None:
    current = _current(date_changed=EARLY, date_voided=LATE)
    assert _judge(current, "h0", {"date_changed": LATE + dt.timedelta(1)})[0] is False
    assert _judge(current, "h0", {"date_retired": dt.datetime(2024, 2, 1), "date_changed": EARLY})[0] is True


def test_policy_newer_parks_an_undated_change_to_a_dated_central_edit() -> None:
    park, _, reason = _judge(_current(date_changed=LATE), "h0", {"name": "Bo"})
    assert park is True
    assert reason == f"row edited centrally at {LATE}, after the incoming change (undated)"


def test_policy_newer_applies_when_central_edit_is_undated() -> None:
    assert _judge(_current(), "h0", {"name": "Bo"}) == (False, False, None)


def test_a_delete_is_judged_by_its_incoming_time() -> None:
    current = _current(date_changed=dt.datetime(2024, 2, 1))
    assert _judge(current, "h0", None, incoming_time=EARLY)[0] is True
    assert _judge(current, "h0", None, incoming_time=LATE)[0] is False
    assert _judge(current, "h0", None, incoming_time=None)[0] is True


def test_canonical_values() -> None:
    assert canonical(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05"
    assert canonical(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2024-01-02 03:04:05"
    assert canonical(dt.date(1990, 5, 1)) == "1990-05-01"
    assert canonical(Decimal("1.50")) == "1.50"
    assert canonical(b"\x00\xff") == "00ff"
    assert canonical(bytearray(b"\x01")) == "01"
    assert canonical(2.0) == 2 and isinstance(canonical(2.0), int)
    assert canonical(2.5) == 2.5
    assert canonical("x") == "x" and canonical(None) is None and canonical(3) == 3


# ---- issue 25, case 5: a site clock ahead dates its changes in central's future ------------------------------

NOW = dt.datetime(2024, 3, 1, 12, 0)  # central's clock, in central's time zone


def _verdict(current: dict[str, Any], stored: str | None, values: dict[str, Any] | None, *,
             incoming_time: dt.datetime | None = None, policy: str = "newer", owner: str | None = "s1",
             last_site: str | None = "s1", skew_ms: int | None = None, tolerance: float = 120) -> Any:
    source = {} if skew_ms is None else {"skew_ms": skew_ms}
    message = {"table": "thing", "uuid": "u-1", "op": "d" if values is None else "u", "site": "s1",
               "source": source}
    return judge(TABLE, current, stored, message, values, incoming_time, policy, last_site=last_site, owner=owner,
                 central_now=NOW, tolerance=tolerance)


def test_future_seconds_only_past_the_tolerance() -> None:
    from dbsync_cli.receiver.conflict import future_seconds

    assert future_seconds(NOW + dt.timedelta(minutes=10), NOW, 120) == 600
    assert future_seconds(NOW + dt.timedelta(seconds=120), NOW, 120) is None  # at the tolerance: not yet
    assert future_seconds(NOW + dt.timedelta(seconds=121), NOW, 120) == 121
    assert future_seconds(NOW - dt.timedelta(hours=5), NOW, 120) is None  # the past is lag, not skew
    assert future_seconds(None, NOW, 120) is None and future_seconds(NOW, None, 120) is None


def test_a_change_dated_in_centrals_future_never_beats_a_central_edit() -> None:
    """The case: central edited at 12:01 (real time); the site's edit, made at 12:00, is dated 12:10 by a clock
    ten minutes ahead. By dates alone it is newer and overwrote central's edit; now it is parked, naming the skew."""
    central = _current("edited", date_changed=NOW + dt.timedelta(minutes=1))
    verdict = _verdict(central, "synced", {"name": "Bo", "date_changed": NOW + dt.timedelta(minutes=10)})
    assert verdict.park and verdict.future == 600
    assert verdict.reason.startswith("dated 10 min in central's future (site clock ahead?): row edited centrally "
                                     "at 2024-03-01 12:01:00, incoming change dated 2024-03-01 12:10:00"), verdict
    # without a future date the same pair is judged by the dates as before (the site's change applies)
    assert not _verdict(central, "synced", {"name": "Bo", "date_changed": NOW + dt.timedelta(minutes=2)}).park


def test_the_future_rule_parks_even_an_undated_central_edit_and_names_the_senders_measurement() -> None:
    central = _current("edited")  # central's edit changed no date column
    verdict = _verdict(central, "synced", {"name": "Bo", "date_voided": NOW + dt.timedelta(hours=3)},
                       skew_ms=10_801_000)
    assert verdict.park and verdict.reason.startswith("dated 3.0 h in central's future (site clock ahead?): row "
                                                      "edited centrally, incoming")
    assert verdict.reason.endswith("; site s1 measured its server's clock 3.0 h ahead"), verdict.reason
    # policy any parks too, with the reason that says why
    assert "central's future" in (_verdict(central, "synced", {"date_changed": NOW + dt.timedelta(hours=1)},
                                           policy="any").reason or "")


def test_a_delete_dated_in_centrals_future_never_removes_a_central_edit() -> None:
    central = _current("edited", date_changed=NOW)
    verdict = _verdict(central, "synced", None, incoming_time=NOW + dt.timedelta(minutes=10))
    assert verdict.park and "central's future" in verdict.reason
    assert not _verdict(central, "synced", None, incoming_time=NOW + dt.timedelta(minutes=1)).park  # within tolerance


def test_a_future_dated_change_of_a_row_central_never_edited_applies_and_says_so() -> None:
    """Nothing to protect: applied as before, but the verdict carries how far ahead it was dated (apply counts it
    per site as future_dated and logs it once per site)."""
    later = {"name": "Bo", "date_changed": NOW + dt.timedelta(minutes=10)}
    unchanged = _verdict(_current("synced", date_changed=NOW), "synced", later)
    assert not unchanged.park and unchanged.skip is None and unchanged.future == 600
    placeholder = _verdict(_current("x", void_reason="[placeholder]", voided=1), None, later)
    assert not placeholder.park and placeholder.future == 600
    owned = _verdict(_current("x"), "x", later, owner=None)  # central's own row: skipped as ever, and counted
    assert owned.skip == "central_owned" and owned.future == 600
    assert _verdict(_current("synced"), "synced", {"date_changed": NOW}).future is None
    # the tolerance is the receiver's setting
    assert not _verdict(_current("edited", date_changed=NOW), "synced", later, tolerance=900).park


def test_amount_reads_like_a_person_would_say_it() -> None:
    from dbsync_cli.receiver.conflict import amount

    assert [amount(s) for s in (45, 598, 600, 7300, 200_000)] == ["45 s", "10 min", "10 min", "2.0 h", "2.3 d"]


def test_skew_ms_on_the_wire_is_optional_and_range_checked() -> None:
    from dbsync_cli import wire

    base = {"v": 1, "id": "s1:e:f:1:0", "site": "s1", "table": "thing", "op": "u", "uuid": "u-1", "snapshot": False,
            "data": {}, "source": {"file": "mysql-bin.000001", "pos": 4, "row": 0, "ts_ms": 1}}
    assert wire._source_problem(base["source"]) is None  # an older sender's message: no skew_ms
    assert wire._source_problem({**base["source"], "skew_ms": 600_000}) is None
    assert wire._source_problem({**base["source"], "skew_ms": -600_000}) is None
    assert "skew_ms" in (wire._source_problem({**base["source"], "skew_ms": 10**15}) or "")
    assert "skew_ms" in (wire._source_problem({**base["source"], "skew_ms": "600"}) or "")
