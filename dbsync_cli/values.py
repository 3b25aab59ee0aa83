"""Column values on the wire: one converter per column type, chosen once per table from the schema model.

DATETIME carries the site's UTC offset; TIMESTAMP (read with the session at +00:00) carries +00:00; DATE and TIME
are plain strings and are never shifted; DECIMAL is a string; binary is base64; BIT is an int.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from dbsync_cli import wire
from dbsync_cli.openmrs.introspect import Column

Converter = Callable[[Any], Any]
_BINARY = {"blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary"}


def _identity(value: Any) -> Any:
    return value


#: the converter of columns whose value goes on the wire as it is (callers may skip calling it)
UNCHANGED: Converter = _identity


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
    return wire.format_time(value) if isinstance(value, dt.timedelta) else value


def _decimal_out(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal | float) else value


def _bit_out(value: Any) -> Any:
    if isinstance(value, bytes):
        return int.from_bytes(value, "big")
    return int(value, 2) if isinstance(value, str) else value


def _binary_out(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return wire.b64(value)
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
