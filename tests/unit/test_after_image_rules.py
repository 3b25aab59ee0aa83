"""The rules of when a binlog after image is the row a read gives (sender/after_image.py); the byte-for-byte proof
against a real read is tests/service/test_after_image.py."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from types import SimpleNamespace

from dbsync_cli.openmrs.introspect import Column
from dbsync_cli.sender import after_image


def _column(name: str, data_type: str, column_type: str | None = None, charset: str | None = None) -> Column:
    return Column(name=name, data_type=data_type, column_type=column_type or data_type, nullable=True, default=None,
                  auto_increment=False, charset=charset)


def _table(*columns: Column, secrets: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(name="t", secret_columns=secrets, info=SimpleNamespace(columns={c.name: c for c in columns}))


TABLE = _table(_column("id", "int", "int(11)"), _column("uuid", "char", "char(38)", "utf8mb3"),
               _column("when", "datetime"), _column("stamp", "timestamp"), _column("day", "date"),
               _column("at", "time"), _column("amount", "decimal", "decimal(10,2)"), _column("value", "double"),
               _column("big", "bigint", "bigint(20) unsigned"), _column("note", "text", charset="utf8mb4"),
               _column("password", "varchar", "varchar(255)", "latin1"), secrets=("password",))
IMAGE = {"id": 7, "uuid": "u-7", "when": "2024-03-01T10:00:00.000001", "stamp": "2024-03-01 10:00:00",
         "day": "2024-02-29", "at": "23:30:00", "amount": "-0.50", "value": 2, "big": 2**64 - 1, "note": None}


def _row(image: dict, **extra) -> dict | None:
    read = after_image.reader(TABLE)  # type: ignore[arg-type]
    assert read is not None
    return read({"op": "u", "after": image, **extra})


def test_an_image_becomes_the_row_a_read_gives() -> None:
    assert _row(IMAGE) == {"id": 7, "uuid": "u-7", "when": dt.datetime(2024, 3, 1, 10, 0, 0, 1),
                           "stamp": dt.datetime(2024, 3, 1, 10), "day": dt.date(2024, 2, 29), "at": "23:30:00",
                           "amount": Decimal("-0.50"), "value": 2.0, "big": 2**64 - 1, "note": None}


def test_values_a_read_gives_otherwise_are_never_trusted() -> None:
    assert _row({**IMAGE, "stamp": "1970-01-01T00:00:00"}) is None  # the zero TIMESTAMP
    assert _row({**IMAGE, "at": "-12:30:05.750000"}) is None  # a negative TIME: the decoder's fraction is wrong
    assert _row({**IMAGE, "big": -1}) is None  # an unsigned column decoded signed (no row metadata)
    assert _row({**IMAGE, "id": "7"}) is None
    assert _row({**IMAGE, "note": {"$b64": "AA=="}}) is None  # text the decoder could not decode
    assert _row({**IMAGE, "when": "2024-00-10 00:00:00"}) is None


def test_gaps_and_other_columns_are_read_again() -> None:
    assert _row(IMAGE, gaps=["when"]) is None  # a zero date, a column not logged
    assert _row({k: v for k, v in IMAGE.items() if k != "note"}) is None  # DDL since the model was read
    assert _row({**IMAGE, "added": 1}) is None
    assert _row({**IMAGE, "password": "x"}) is None  # capture strips secrets: an image with one is not capture's


def test_tables_with_types_never_trusted_are_always_read() -> None:
    for column in (_column("f", "float"), _column("j", "json"), _column("e", "enum", "enum('a','b')"),
                   _column("s", "set", "set('a','b')"), _column("b", "bit", "bit(1)"), _column("y", "year"),
                   _column("v", "varbinary", "varbinary(16)"), _column("l", "varchar", "varchar(9)", "latin1")):
        assert after_image.reader(_table(_column("id", "int"), column)) is None, column  # type: ignore[arg-type]
