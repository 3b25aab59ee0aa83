"""Column values on the wire: one converter per column type, chosen once per table from the schema model.

DATETIME carries the site's UTC offset; TIMESTAMP (read with the session at +00:00) carries +00:00; DATE and TIME
are plain strings and are never shifted; DECIMAL is a string; binary is base64; BIT is an int.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from dbsync_cli.openmrs.introspect import Column
from dbsync_cli.records import format_time

Converter = Callable[[Any], Any]
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_BINARY = {"blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"}


def parse_timezone(name: str) -> dt.tzinfo:
    """An IANA name ("Africa/Kigali"), "UTC", or a fixed offset ("+02:00")."""
    match = _OFFSET.match(name.strip())
    if match:
        sign = -1 if match.group(1) == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    if name.upper() == "UTC":
        return dt.UTC
    return ZoneInfo(name)


def _identity(value: Any) -> Any:
    return value


def datetime_out(tz: dt.tzinfo) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value.replace(tzinfo=tz).isoformat()
        return None if value in (None, "0000-00-00 00:00:00") else value

    return convert


def _timestamp_out(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat()
    return None if value in (None, "0000-00-00 00:00:00") else value


def _date_out(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    return None if value in (None, "0000-00-00") else value


def _time_out(value: Any) -> Any:
    return format_time(value) if isinstance(value, dt.timedelta) else value


def _decimal_out(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal | float) else value


def _bit_out(value: Any) -> Any:
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value, 2) if isinstance(value, str) else value


def _binary_out(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    return value


def wire_converter(column: Column, tz: dt.tzinfo) -> Converter:
    kind = column.data_type
    if kind == "datetime":
        return datetime_out(tz)
    if kind == "timestamp":
        return _timestamp_out
    if kind == "date":
        return _date_out
    if kind == "time":
        return _time_out
    if kind in ("decimal", "float", "double"):
        return _decimal_out if kind == "decimal" else _identity
    if kind == "bit":
        return _bit_out
    if kind in _BINARY:
        return _binary_out
    return _identity


def wire_to_local_datetime(value: str, tz: dt.tzinfo) -> dt.datetime:
    """An ISO datetime with offset as a naive value in `tz`: how central stores a site's DATETIME."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed
    return parsed.astimezone(tz).replace(tzinfo=None)
