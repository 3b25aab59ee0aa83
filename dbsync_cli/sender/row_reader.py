"""A faster reader of a row event's column values for mysql-replication 1.0, giving the library's own values.

Decoding is about 90 % of capture's CPU, and most of the library's decoding is bookkeeping around the bytes: for
every column of every row it looks the table map up twice, tests two bitmaps bit by bit and walks a chain of 25
type tests. This reader does that work once per table map and column bitmap (a plan), reads the common types of
OpenMRS tables (integers, floats, strings, text, DATETIME) straight from the packet's buffer, and hands every other
type to the library's own code at the same place in the packet, so values and `none_sources` are the library's.

`install()` sets it on the library's RowsEvent for mysql-replication 1.0.x (the version pinned and tested:
tests/service/test_row_reader.py decodes every column type both ways and compares); with another version, or for
what it does not cover (MySQL 8's partial JSON updates, columns without names from MySQL 5.7's MINIMAL metadata,
an event whose bytes were read ahead), the library's reader runs unchanged.
"""

from __future__ import annotations

import codecs
import datetime as dt
import struct
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pymysqlreplication import row_event
from pymysqlreplication.constants import BINLOG, FIELD_TYPE, NONE_SOURCE

#: a column's reader: (the event, the packet's bytes, where its value starts) → (value, where the next one starts)
Reader = Callable[[Any, bytes, int], tuple[Any, int]]

_LIBRARY_READ = row_event.RowsEvent._read_column_data
_LIBRARY_NONE_SOURCES = row_event.RowsEvent._get_none_sources
_ABSENT = -1  # a column's place in the null bitmap when the row image leaves it out
_OUT_OF_RANGE = object()  # a DATETIME2 that is no date: None, with its none source


def install() -> bool:
    """Use this reader in this process (mysql-replication 1.0.x only); True when it is in use."""
    if getattr(row_event.RowsEvent, "_dbsync_reader", False):
        return True
    try:
        if not version("mysql-replication").startswith("1.0."):
            return False
    except PackageNotFoundError:
        return False
    row_event.RowsEvent._read_column_data = _read_column_data
    row_event.RowsEvent._get_none_sources = _get_none_sources
    row_event.RowsEvent._dbsync_reader = True
    return True


def uninstall() -> None:
    """The library's own reader again (tests compare the two)."""
    row_event.RowsEvent._read_column_data = _LIBRARY_READ
    row_event.RowsEvent._get_none_sources = _LIBRARY_NONE_SOURCES
    row_event.RowsEvent._dbsync_reader = False


def _struct_reader(fmt: str) -> Reader:
    unpack, size = struct.Struct(fmt).unpack_from, struct.calcsize(fmt)

    def read(event: Any, data: bytes, at: int) -> tuple[Any, int]:
        return unpack(data, at)[0], at + size
    return read


def _int24(signed: bool) -> Reader:
    def read(event: Any, data: bytes, at: int) -> tuple[Any, int]:
        value = data[at] | data[at + 1] << 8 | data[at + 2] << 16
        if signed and value >= 0x800000:
            value -= 0x1000000
        return value, at + 3
    return read


def _string(length_size: int, column: Any) -> Reader | None:
    """VARCHAR, CHAR, TEXT and BLOB as the library reads them (decoded by the column's character set, UTF-8 when
    the binlog names none); None when Python has no codec for the set (the library keeps the bytes then)."""
    encoding = "utf-8"
    if column.character_set_name is not None:
        encoding = row_event.RowsEvent.charset_to_encoding(column.character_set_name)
        try:
            codecs.lookup(encoding)
        except LookupError:
            return None
    length = struct.Struct({1: "<B", 2: "<H", 4: "<I"}[length_size]).unpack_from if length_size != 3 else None

    def read(event: Any, data: bytes, at: int) -> tuple[Any, int]:
        size = data[at] | data[at + 1] << 8 | data[at + 2] << 16 if length is None else length(data, at)[0]
        at += length_size
        end = at + size
        if end > len(data):
            raise AssertionError(f"row event: a {size}-byte value runs past the packet's {len(data)} bytes")
        errors = "ignore" if event._ignore_decode_errors else "strict"
        return data[at:end].decode(encoding, errors), end
    return read


def _datetime2(column: Any) -> Reader:
    fsp = column.fsp
    fraction = (fsp + 1) // 2  # bytes of the fractional part
    fraction_struct = {1: ">b", 2: ">h"}.get(fraction)
    unpack = struct.Struct(">IB").unpack_from

    def read(event: Any, data: bytes, at: int) -> tuple[Any, int]:
        high, low = unpack(data, at)
        packed = low + (high << 8)
        at += 5
        year_month = (packed >> 22) & 0x1FFFF
        micro = 0
        if fraction:
            if fraction_struct is not None:
                micro = struct.unpack_from(fraction_struct, data, at)[0]
            else:
                micro = data[at] << 16 | data[at + 1] << 8 | data[at + 2]
                if micro >= 0x800000:
                    micro -= 0x1000000
            at += fraction
            if fsp % 2:
                micro = int(micro / 10)
            micro *= 10 ** (6 - fsp)
        try:
            value = dt.datetime(year_month // 13, year_month % 13, (packed >> 17) & 0x1F, (packed >> 12) & 0x1F,
                                (packed >> 6) & 0x3F, packed & 0x3F)
        except ValueError:
            return _OUT_OF_RANGE, at
        if micro > 0:
            value = value.replace(microsecond=micro)
        return value, at
    return read




def _reader(column: Any) -> Reader | None:
    """The reader of `column`'s values, or None for the library's code."""
    kind, unsigned = column.type, column.unsigned
    if kind == FIELD_TYPE.TINY:
        return _struct_reader("<B" if unsigned else "<b")
    if kind == FIELD_TYPE.SHORT:
        return _struct_reader("<H" if unsigned else "<h")
    if kind == FIELD_TYPE.LONG:
        return _struct_reader("<I" if unsigned else "<i")
    if kind == FIELD_TYPE.LONGLONG:
        return _struct_reader("<Q" if unsigned else "<q")
    if kind == FIELD_TYPE.INT24:
        return _int24(not unsigned)
    if kind == FIELD_TYPE.FLOAT:
        return _struct_reader("<f")
    if kind == FIELD_TYPE.DOUBLE:
        return _struct_reader("<d")
    if kind in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING):
        return _string(2 if column.max_length > 255 else 1, column)
    if kind == FIELD_TYPE.BLOB and column.length_size in (1, 2, 3, 4):
        return _string(column.length_size, column)
    if kind == FIELD_TYPE.DATETIME2:
        return _datetime2(column)
    return None


class _Plan:
    """What a row image of one table map and column bitmap needs: per column its name, whether it is in the image
    (and its place in the null bitmap), and its reader."""

    __slots__ = ("columns", "null_bytes")

    def __init__(self, table: Any, cols_bitmap: bytes) -> None:
        self.columns: list[tuple[str, int, Reader | None, int, Any]] = []
        present = 0
        for index, column in enumerate(table.columns):
            if cols_bitmap[index // 8] & (1 << (index & 7)):
                self.columns.append((column.name, present, _reader(column), index, column))
                present += 1
            else:
                self.columns.append((column.name, _ABSENT, None, index, column))
        self.null_bytes = (present + 7) // 8


def _plan(event: Any, cols_bitmap: bytes) -> _Plan | None:
    table = event.table_map[event.table_id]
    plans = table.__dict__.setdefault("_dbsync_plans", {})
    plan = plans.get(cols_bitmap)
    if plan is None:
        if not all(c.name for c in table.columns):
            return None  # names to be fetched from information_schema: the library's way
        plan = plans[cols_bitmap] = _Plan(table, cols_bitmap)
    return plan


def _read_column_data(self: Any, cols_bitmap: bytes, row_image_type: Any = None) -> dict[str, Any]:
    """RowsEvent._read_column_data: one row image's values by column name."""
    wrapper = self.packet
    if self.event_type == BINLOG.PARTIAL_UPDATE_ROWS_EVENT or wrapper._BinLogPacketWrapper__data_buffer:
        return _LIBRARY_READ(self, cols_bitmap, row_image_type)
    plan = _plan(self, cols_bitmap)
    if plan is None:
        return _LIBRARY_READ(self, cols_bitmap, row_image_type)
    self.is_partial_json_update = False
    packet = wrapper.packet
    data: bytes = packet._data
    row_start = start = at = packet._position
    read_before = wrapper.read_bytes
    null_bitmap = data[at:at + plan.null_bytes]
    nulls = int.from_bytes(null_bitmap, "little")
    at += plan.null_bytes
    none_sources = self._RowsEvent__none_sources
    values: dict[str, Any] = {}
    for name, place, reader, index, column in plan.columns:
        if place == _ABSENT:  # not in this image (binlog_row_image MINIMAL or NOBLOB)
            none_sources[name] = NONE_SOURCE.COLS_BITMAP
            values[name] = None
        elif nulls >> place & 1:
            none_sources[name] = NONE_SOURCE.NULL
            values[name] = None
        elif reader is not None:
            value, at = reader(self, data, at)
            if value is _OUT_OF_RANGE:
                none_sources[name] = NONE_SOURCE.OUT_OF_DATETIME2_RANGE
                value = None
            values[name] = value
        else:  # the library's code, from here in the packet
            packet._position = at
            wrapper.read_bytes += at - start
            values[name] = self._RowsEvent__read_values_name(column, null_bitmap, place, False, cols_bitmap,
                                                             column.unsigned, index)
            if wrapper._BinLogPacketWrapper__data_buffer:  # read ahead (DECIMAL does): the row the library's way
                packet._position, wrapper.read_bytes = row_start, read_before
                wrapper._BinLogPacketWrapper__data_buffer = b""
                return _LIBRARY_READ(self, cols_bitmap, row_image_type)
            start = at = packet._position
    if at > len(data):
        raise AssertionError(f"row event: the row runs past the packet's {len(data)} bytes")
    packet._position = at
    wrapper.read_bytes += at - start
    return values


def _get_none_sources(self: Any, column_data: dict[str, Any]) -> dict[str, str]:
    """RowsEvent._get_none_sources: why each None of a row image is None."""
    sources = self._RowsEvent__none_sources
    return {name: sources.get(name, "null") for name, value in column_data.items()
            if value is None and name is not None}
