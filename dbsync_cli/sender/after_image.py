"""The binlog's after image as the row a re-read of the site database would give, where it can be trusted.

With binlog_row_image=FULL a create's or update's after image holds every column of the row as it was at that
point of the binlog, so enrich need not read the row again. It is used only when it gives exactly what the re-read
(PyMySQL, session time zone +00:00) gives, column for column; otherwise the row is read from the site database as
before. Never trusted:
- a column capture marked as a gap (``gaps``: not logged, a zero or invalid DATE/DATETIME, an empty SET);
- an image whose columns are not the model's (DDL since the model was read, a column not logged);
- a column type OpenMRS does not use, whose binlog decoding differs from the re-read's or was not compared: FLOAT
  (1.1 comes as 1.100000023841858), JSON (parsed), SET (a set), BIT, ENUM, YEAR, binary, BLOB and spatial types;
- text in a character set other than utf8/utf8mb3/utf8mb4/ascii (without binlog_row_metadata=FULL the decoder
  guesses UTF-8);
- a negative value in an unsigned column (decoded signed without row metadata);
- a TIMESTAMP of 1970-01-01 00:00:00 (how the decoder gives the zero TIMESTAMP);
- a negative TIME (the decoder gets the fraction of a negative TIME(n) wrong: -12:30:05.25 as -12:30:05.75).

The image may come as the decoder's values (capture in the same process) or through NDJSON (the capture process,
`dbsync capture | dbsync enrich`): DATETIME as ``YYYY-MM-DD HH:MM:SS[.ffffff]``, DECIMAL as text, TIME as text.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.openmrs.introspect import Column

log = logging.getLogger("dbsync.enrich")

#: a change event → its row as the re-read gives it, or None
Reader = Callable[[dict[str, Any]], dict[str, Any] | None]

_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "bigint"}
_TEXTS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext"}
_UTF8 = {"utf8", "utf8mb3", "utf8mb4", "ascii"}
_EPOCH = dt.datetime(1970, 1, 1)


class _Untrusted(Exception):
    """The image's value is not what the re-read gives."""


def _integer(unsigned: bool) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if type(value) is not int or (unsigned and value < 0):
            raise _Untrusted
        return value

    return convert


def _text(value: Any) -> Any:
    if type(value) is not str:
        raise _Untrusted
    return value


def _from_text(kind: type, parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """DATETIME, DATE, DECIMAL: the decoder's value, or its text from NDJSON."""

    def convert(value: Any) -> Any:
        if type(value) is str:
            try:
                return parse(value)
            except (ValueError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
                raise _Untrusted from None
        if type(value) is not kind:
            raise _Untrusted
        return value

    return convert


_datetime = _from_text(dt.datetime, dt.datetime.fromisoformat)
_date = _from_text(dt.date, dt.date.fromisoformat)
_decimal = _from_text(Decimal, Decimal)


def _timestamp(value: Any) -> Any:
    value = _datetime(value)
    if value == _EPOCH:  # the zero TIMESTAMP, which the re-read gives as "0000-00-00 00:00:00"
        raise _Untrusted
    return value


def _time(value: Any) -> Any:
    if type(value) is str:  # already the wire form (format_time)
        if value.startswith("-"):
            raise _Untrusted
        return value
    if type(value) is not dt.timedelta or value < dt.timedelta(0):
        raise _Untrusted
    return value


def _double(value: Any) -> Any:
    if type(value) is int:  # NDJSON gives 2.0 back as 2.0, but be safe with integral text
        return float(value)
    if type(value) is not float:
        raise _Untrusted
    return value


def converter(column: Column) -> Callable[[Any], Any] | None:
    """How an image value of `column` becomes the re-read's value; None when the type is never trusted."""
    kind = column.data_type
    if kind in _INTEGERS:
        return _integer("unsigned" in column.column_type)
    if kind in _TEXTS:
        return _text if (column.charset or "") in _UTF8 else None
    return {"datetime": _datetime, "timestamp": _timestamp, "date": _date, "time": _time, "decimal": _decimal,
            "double": _double}.get(kind)


def reader(table: SyncedTable) -> Reader | None:
    """A function from a change event to its row as the re-read would give it (None: read it), or None when a
    column type of `table` is never trusted (the table is always read again)."""
    secrets = set(table.secret_columns)
    # per column: the value's type when it goes as it is (int, str, float), else what converts it
    plan: list[tuple[str, type | None, Callable[[Any], Any] | None]] = []
    for name, column in table.info.columns.items():
        if name in secrets:
            continue  # capture strips them from the image; the message never carries them
        convert = converter(column)
        if convert is None:
            return None
        exact: type | None = None
        if column.is_integer:
            exact = None if "unsigned" in column.column_type else int
        elif convert is _text:
            exact = str
        elif convert is _double:
            exact = float
        plan.append((name, exact, None if exact in (int, str) else convert))  # not of that type: read again
    names = {name for name, _exact, _convert in plan}

    def row_of(event: dict[str, Any]) -> dict[str, Any] | None:
        image = event.get("after")
        if event.get("gaps") or not isinstance(image, dict) or image.keys() != names:
            return None
        row: dict[str, Any] = {}
        try:
            for name, exact, convert in plan:
                value = image[name]
                if value is None or type(value) is exact:
                    row[name] = value
                elif convert is None:
                    raise _Untrusted
                else:
                    row[name] = convert(value)
        except _Untrusted:
            log.debug("%s: the after image's %s is not what a read gives: the row is read again", table.name, name)
            return None
        return row

    return row_of
