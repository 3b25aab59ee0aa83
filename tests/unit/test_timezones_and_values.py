"""Every column type both ways: the sender's wire value (values) and how central stores it (resolve)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.receiver.resolve import Converter, MessageError, UuidToId
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.values import wire_converter

SITE = dt.timezone(dt.timedelta(hours=2))
PARIS = ZoneInfo("Europe/Paris")


def out(data_type: str, value: Any, tz: dt.tzinfo = SITE) -> Any:
    return wire_converter(Column("c", data_type, data_type, True, None, False), tz)(value)


def _model() -> SchemaModel:
    columns = [Column("obs_id", "int", "int(11)", False, None, True), Column("uuid", "char", "char(38)", False,
               None, False)]  # fmt: skip
    return SchemaModel("openmrs", {"obs": TableInfo("obs", {c.name: c for c in columns}, ("obs_id",))}, ["obs"])


def into(data_type: str, value: Any, central: dt.tzinfo = dt.UTC) -> Any:
    model = _model()
    return Converter(model, UuidToId(model), central, default_user=1).value(data_type, value, "obs", "c")


# ---- sender: database value → wire -------------------------------------------------------------------------
def test_datetime_carries_the_site_offset() -> None:
    assert out("datetime", dt.datetime(2024, 1, 1, 10, 0)) == "2024-01-01T10:00:00+02:00"
    assert out("datetime", dt.datetime(2024, 1, 1, 10, 0, 0, 5)) == "2024-01-01T10:00:00.000005+02:00"


def test_datetime_in_a_dst_zone_carries_the_offset_of_its_own_date() -> None:
    assert out("datetime", dt.datetime(2024, 7, 1, 12, 0), PARIS) == "2024-07-01T12:00:00+02:00"
    assert out("datetime", dt.datetime(2024, 1, 15, 12, 0), PARIS) == "2024-01-15T12:00:00+01:00"


def test_timestamp_is_utc_whatever_the_site_zone() -> None:
    assert out("timestamp", dt.datetime(2024, 7, 1, 8, 0), PARIS) == "2024-07-01T08:00:00+00:00"


def test_date_and_time_are_never_shifted() -> None:
    assert out("date", dt.date(1990, 5, 1), PARIS) == "1990-05-01"
    assert out("time", dt.timedelta(hours=7, minutes=5), PARIS) == "07:05:00"
    assert out("time", -dt.timedelta(hours=1, minutes=2, seconds=3)) == "-01:02:03"
    assert out("time", dt.timedelta(hours=838, microseconds=1)) == "838:00:00.000001"
    assert out("time", "07:05:00") == "07:05:00"


def test_zero_dates_become_null() -> None:
    assert out("datetime", "0000-00-00 00:00:00") is None
    assert out("timestamp", "0000-00-00 00:00:00") is None
    assert out("date", "0000-00-00") is None
    assert out("datetime", None) is None and out("date", None) is None and out("time", None) is None


def test_decimal_is_text_and_floats_are_as_they_are() -> None:
    assert out("decimal", Decimal("1.50")) == "1.50"
    assert out("decimal", None) is None
    assert out("float", 1.5) == 1.5 and isinstance(out("float", 1.5), float)
    assert out("double", 0.1) == 0.1


def test_bit_is_an_int_from_bytes_or_bit_strings() -> None:
    assert out("bit", b"\x01") == 1 and out("bit", b"\x00") == 0
    assert out("bit", b"\x01\x00") == 256
    assert out("bit", "1") == 1 and out("bit", "0") == 0 and out("bit", "101") == 5
    assert out("bit", 1) == 1 and out("bit", None) is None


@pytest.mark.parametrize("kind", ["blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"])
def test_binary_types_travel_as_base64(kind: str) -> None:
    assert out(kind, b"\x00\xff") == {"$b64": "AP8="}
    assert out(kind, bytearray(b"x")) == {"$b64": "eA=="}
    assert out(kind, None) is None


def test_text_and_integers_are_as_they_are() -> None:
    assert out("varchar", "Ana") == "Ana" and out("text", "x") == "x"
    assert out("int", 7) == 7 and out("tinyint", None) is None


# ---- receiver: wire → central value ------------------------------------------------------------------------
def test_datetime_is_stored_naive_in_central_zone() -> None:
    maputo = parse_timezone("Africa/Maputo")
    assert into("datetime", "2024-01-01T10:00:00+00:00", maputo) == dt.datetime(2024, 1, 1, 12, 0)
    assert into("datetime", "2024-07-01T12:00:00+02:00", PARIS) == dt.datetime(2024, 7, 1, 12, 0)
    assert into("datetime", "2024-01-15T12:00:00+02:00", PARIS) == dt.datetime(2024, 1, 15, 11, 0)
    assert into("datetime", "2024-01-01T10:00:00") == dt.datetime(2024, 1, 1, 10, 0)  # no offset: as it is


def test_timestamp_is_stored_naive_in_utc_whatever_central_zone() -> None:
    assert into("timestamp", "2024-07-01T12:00:00+02:00", PARIS) == dt.datetime(2024, 7, 1, 10, 0)


def test_a_site_datetime_round_trips_to_central() -> None:
    sent = out("datetime", dt.datetime(2024, 3, 31, 1, 30), PARIS)  # just before the spring change
    assert into("datetime", sent, parse_timezone("+05:30")) == dt.datetime(2024, 3, 31, 6, 0)


def test_date_time_text_and_numbers_are_untouched() -> None:
    assert into("date", "1990-05-01") == "1990-05-01"
    assert into("time", "-01:02:03") == "-01:02:03"
    assert into("decimal", "1.50") == "1.50" and into("int", 3) == 3 and into("varchar", None) is None


def test_base64_becomes_bytes() -> None:
    assert into("blob", {"$b64": "AP8="}) == b"\x00\xff"


@pytest.mark.parametrize(("data_type", "value", "reason"), [
    ("blob", {"$b64": "not base64!"}, "obs.c: invalid base64"),
    ("varchar", {"x": 1}, "obs.c: unexpected object value"),
    ("varchar", ["a"], "obs.c: unexpected list value"),
    ("datetime", "yesterday", "obs.c: invalid datetime 'yesterday'"),
    ("timestamp", "2024-13-01T00:00:00", "obs.c: invalid datetime '2024-13-01T00:00:00'"),
])  # fmt: skip
def test_bad_values_are_message_errors_naming_the_column(data_type: str, value: Any, reason: str) -> None:
    with pytest.raises(MessageError) as caught:
        into(data_type, value)
    assert str(caught.value) == reason


# ---- time zones --------------------------------------------------------------------------------------------
def test_parse_timezone_names_and_offsets() -> None:
    assert parse_timezone("UTC") is dt.UTC and parse_timezone("utc") is dt.UTC
    assert parse_timezone("+02:00") == dt.timezone(dt.timedelta(hours=2))
    assert parse_timezone("-0530") == dt.timezone(-dt.timedelta(hours=5, minutes=30))
    assert parse_timezone(" +02:00 ") == dt.timezone(dt.timedelta(hours=2))
    assert parse_timezone("Africa/Maputo") == ZoneInfo("Africa/Maputo")


def test_parse_timezone_rejects_unknown_names_and_impossible_offsets() -> None:
    with pytest.raises(ZoneInfoNotFoundError):  # a KeyError
        parse_timezone("Mars/Olympus_Mons")
    with pytest.raises(ValueError):
        parse_timezone("../etc/passwd")
    with pytest.raises(ValueError):
        parse_timezone("+24:00")


def test_parse_timezone_rejects_an_offset_with_99_minutes() -> None:
    with pytest.raises(ValueError):
        parse_timezone("+02:99")


def test_equal_zones_convert_nothing_even_in_a_dst_gap_or_the_repeated_hour() -> None:
    """Issue 10 case 9: 2024-03-31 02:30 does not exist in Europe/Berlin; it used to become 03:30 at a Berlin
    central. The same for the repeated hour of 2024-10-27."""
    berlin = ZoneInfo("Europe/Berlin")
    for wall in (dt.datetime(2024, 3, 31, 2, 30), dt.datetime(2024, 10, 27, 2, 30), dt.datetime(2024, 7, 1, 9, 0)):
        assert into("datetime", out("datetime", wall, berlin), berlin) == wall
    # another zone still converts through UTC
    assert into("datetime", out("datetime", dt.datetime(2024, 7, 1, 9, 0), berlin)) == dt.datetime(2024, 7, 1, 7, 0)
