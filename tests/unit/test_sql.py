"""SQL text from templates and quoted identifiers only (dbsync_cli.sql)."""

from __future__ import annotations

import pytest

from dbsync_cli.sql import Sql, chunks, columns, join, placeholders, quote, sql, value_rows


def test_quote_backticks_each_part_and_joins_them_with_dots() -> None:
    assert quote("obs") == "`obs`"
    assert quote("db", "obs", "value") == "`db`.`obs`.`value`"
    assert isinstance(quote("obs"), Sql)


def test_quote_doubles_a_backtick_inside_a_name() -> None:
    assert quote("we`ird") == "`we``ird`"
    assert quote("`; DROP TABLE x; --") == "```; DROP TABLE x; --`"
    assert quote("a.b") == "`a.b`"  # a dot inside a name stays inside the name


@pytest.mark.parametrize("names", [(), ("",), ("db", ""), ("db", None), (5,)])
def test_quote_rejects_empty_or_non_text_names(names: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        quote(*names)  # type: ignore[arg-type]


def test_sql_fills_slots_with_fragments_positional_and_named() -> None:
    text = sql("SELECT {} FROM {}", quote("uuid"), quote("obs"))
    assert text == "SELECT `uuid` FROM `obs`" and isinstance(text, Sql)
    assert sql("DELETE FROM {s}.{t} WHERE id = %s", s=quote("state"), t=quote("inbox")) == (
        "DELETE FROM `state`.`inbox` WHERE id = %s")
    assert sql("SELECT 1") == "SELECT 1"
    assert sql("SELECT ({})", sql("QUOTE({})", quote("a"))) == "SELECT (QUOTE(`a`))"


def test_sql_refuses_plain_strings_and_other_values() -> None:
    with pytest.raises(TypeError, match="not str"):
        sql("SELECT * FROM {}", "obs")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not str"):
        sql("SELECT * FROM {t}", t="obs; DROP TABLE obs")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not int"):
        sql("LIMIT {}", 5)  # type: ignore[arg-type]


def test_placeholders() -> None:
    assert placeholders(1) == "%s"
    assert placeholders(3) == "%s, %s, %s"
    assert isinstance(placeholders(2), Sql)
    for count in (0, -1):
        with pytest.raises(ValueError):
            placeholders(count)


def test_join_takes_fragments_only() -> None:
    assert join([quote("a"), quote("b")]) == "`a`, `b`"
    assert join((quote(c) for c in "xy"), " AND ") == "`x` AND `y`"
    assert join([]) == ""
    with pytest.raises(TypeError, match="not str"):
        join([quote("a"), "b"])  # type: ignore[list-item]


def test_columns_quotes_a_list_of_names() -> None:
    assert columns(["uuid", "date_changed"]) == "`uuid`, `date_changed`"
    assert columns({"a": 1, "b`": 2}) == "`a`, `b```"
    with pytest.raises(ValueError):
        columns(["ok", ""])


def test_chunks_sizes() -> None:
    assert [len(c) for c in chunks(list(range(2500)))] == [1000, 1000, 500]
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunks([1, 2], 2)) == [[1, 2]]
    assert list(chunks([], 10)) == []
    assert list(chunks((1, 2, 3), 5)) == [[1, 2, 3]]


def _connection(no_backslash_escapes: bool) -> object:
    import pymysql
    from pymysql.constants import SERVER_STATUS

    conn = pymysql.connections.Connection(defer_connect=True, charset="utf8mb4")
    conn.server_status = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES if no_backslash_escapes else 0
    return conn


@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_value_rows_is_the_text_pymysqls_parameter_binding_makes(no_backslash_escapes: bool) -> None:
    import datetime as dt
    import decimal

    import pymysql

    conn = _connection(no_backslash_escapes)
    rows = [("it's", "back\\slash", "nul\x00byte", "quote\"d\n\r\x1a", "ção 🙂", "", "%s {} %%"),
            (0, -7, 2**70, None, True, 1.25, decimal.Decimal("12.500")),
            (b"\x00'\\bin", bytearray(b"ab"), dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.date(2026, 1, 2),
             dt.time(1, 2, 3), dt.timedelta(hours=-1, seconds=5), "x"),
            # datetimes take a short path of their own: with and without microseconds, early years, the extremes,
            # an aware one (PyMySQL drops the zone) and a subclass (PyMySQL's way)
            (dt.datetime(2026, 1, 2, 3, 4, 5), dt.datetime(999, 12, 31, 23, 59, 59, 999999), dt.datetime.min,
             dt.datetime.max, dt.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=dt.UTC),
             type("Stamp", (dt.datetime,), {})(2026, 5, 6, 7, 8, 9, 10), dt.datetime(1, 1, 1, 0, 0, 0, 1))]
    cursor = pymysql.cursors.Cursor(conn)  # type: ignore[arg-type]
    for row in rows:
        expected = cursor.mogrify("(" + ",".join(["%s"] * len(row)) + ")", row)
        assert value_rows(conn, [row]) == expected
    assert value_rows(conn, rows[:2]) == ",".join(value_rows(conn, [r]) for r in rows[:2])
    assert type(value_rows(conn, rows)) is Sql
