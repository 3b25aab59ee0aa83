import datetime as dt
from decimal import Decimal

from dbsync_cli.openmrs import class_table
from dbsync_cli.openmrs.introspect import Column
from dbsync_cli.timezones import parse_timezone
from dbsync_cli.values import wire_converter
from dbsync_cli.wire import dumps, format_time
from dbsync_cli.wire import local_datetime as wire_to_local_datetime


def col(data_type: str) -> Column:
    return Column("c", data_type, data_type, True, None, False)


def test_datetime_carries_site_offset_and_date_time_are_untouched() -> None:
    tz = parse_timezone("+02:00")
    assert wire_converter(col("datetime"), tz)(dt.datetime(2024, 1, 1, 10, 0)) == "2024-01-01T10:00:00+02:00"
    assert wire_converter(col("timestamp"), tz)(dt.datetime(2024, 1, 1, 8, 0)) == "2024-01-01T08:00:00+00:00"
    assert wire_converter(col("date"), tz)(dt.date(1990, 5, 1)) == "1990-05-01"
    assert wire_converter(col("time"), tz)(dt.timedelta(hours=7, minutes=5)) == "07:05:00"
    assert wire_converter(col("decimal"), tz)(Decimal("1.50")) == "1.50"
    assert wire_converter(col("bit"), tz)(b"\x01") == 1
    assert wire_converter(col("blob"), tz)(b"\x00\xff") == {"$b64": "AP8="}


def test_iana_zone_uses_the_offset_of_that_date() -> None:
    tz = parse_timezone("Europe/Paris")
    assert wire_converter(col("datetime"), tz)(dt.datetime(2024, 7, 1, 12, 0)).endswith("+02:00")
    assert wire_converter(col("datetime"), tz)(dt.datetime(2024, 1, 1, 12, 0)).endswith("+01:00")


def test_shift_to_central_zone() -> None:
    assert wire_to_local_datetime("2024-01-01T10:00:00+02:00", dt.UTC) == dt.datetime(2024, 1, 1, 8, 0)


def test_negative_and_long_times() -> None:
    assert format_time(dt.timedelta(days=-1, seconds=82677)) == "-01:02:03"
    assert format_time(dt.timedelta(hours=30, microseconds=5)) == "30:00:00.000005"


def test_records_encode_database_types() -> None:
    assert dumps({"d": Decimal("2.5"), "t": dt.timedelta(minutes=1), "b": b"x"}) == (
        b'{"d":"2.5","t":"00:01:00","b":{"$b64":"eA=="}}'
    )


def test_attribute_format_class_to_table() -> None:
    assert class_table("org.openmrs.Location") == "location"
    assert class_table("org.openmrs.ProgramWorkflow") == "program_workflow"
    assert class_table("org.openmrs.User") == "users"
    assert class_table("java.lang.String") is None
