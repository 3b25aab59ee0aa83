"""SQL text from fixed templates and quoted identifiers only; values always travel as query parameters, or as
literals the connection's own escaping made (`value_rows`: the text PyMySQL's parameters become, built faster).

`quote` is the one place an identifier is quoted. `sql` fills a template's ``{}`` slots and accepts nothing but
`Sql` fragments (made by `quote`, `sql`, `placeholders` and `join`), so a value from a message can never be
spliced into a statement by mistake: it raises TypeError instead. Table and column names come from the
introspected schema (`SchemaModel.ident`) or from the receiver's validated state schema name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_datetime, escape_string

from dbsync_cli.lru import LruMap

T = TypeVar("T")


class Sql(str):
    """A fragment of SQL text that is safe to splice into a statement."""

    __slots__ = ()


def quote(*names: str) -> Sql:
    """`db`.`table`.`column`: each part in backticks, a backtick inside a name doubled."""
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"not an identifier: {names!r}")
    if not names:
        raise ValueError("not an identifier: nothing to quote")
    return Sql(".".join(["`" + name.replace("`", "``") + "`" for name in names]))


def sql(template: str, *parts: Sql, **named: Sql) -> Sql:
    """`template` with its ``{}`` / ``{name}`` slots filled by SQL fragments (never by plain strings)."""
    for part in parts:
        if type(part) is not Sql:
            raise TypeError(f"only quoted identifiers and SQL fragments go into SQL text, not {type(part).__name__}")
    for part in named.values():
        if type(part) is not Sql:
            raise TypeError(f"only quoted identifiers and SQL fragments go into SQL text, not {type(part).__name__}")
    return Sql(template.format(*parts, **named))


def placeholders(count: int) -> Sql:
    """``%s, %s, …`` for an IN list or a VALUES row of `count` parameters."""
    if count < 1:
        raise ValueError("an IN list or VALUES row needs at least one parameter")
    return Sql(", ".join(["%s"] * count))


def join(parts: Iterable[Sql], separator: str = ", ") -> Sql:
    """Fragments joined (column lists, SET clauses)."""
    items = list(parts)
    for part in items:
        if type(part) is not Sql:
            raise TypeError(f"only quoted identifiers and SQL fragments can be joined, not {type(part).__name__}")
    return Sql(separator.join(items))


def value_rows(conn: Any, rows: Iterable[Sequence[Any]]) -> Sql:
    """``(v, v), (v, v)``: the rows' values as literals, escaped by PyMySQL's connection exactly as its parameter
    binding escapes them (PyMySQL binds on the client: a statement's text is the same either way). Apply's set path
    sends a batch's rows this way because PyMySQL's per-value dispatch cost about as much as the server's insert
    (scripts/bench); text, integers and NULL take a short path here (PyMySQL's own string escaping), everything else
    PyMySQL's escape; a naive datetime as PyMySQL's escape_datetime writes it (ISO 8601, microseconds only when
    there are any), unless the connection encodes datetimes its own way."""
    escape, encoders = conn.escape, conn.encoders
    datetimes = encoders.get(dt.datetime) is escape_datetime
    plain_quotes = bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)
    out: list[str] = []
    for row in rows:
        values: list[str] = []
        for value in row:
            kind = type(value)
            if kind is str:  # as Connection.escape: backslash escapes unless the server's sql_mode turned them off
                values.append("'" + (value.replace("'", "''") if plain_quotes else escape_string(value)) + "'")
            elif kind is int:
                values.append(str(value))
            elif value is None:
                values.append("NULL")
            elif kind is dt.datetime and datetimes and value.tzinfo is None:
                values.append("'" + value.isoformat(" ") + "'")
            else:
                values.append(escape(value, encoders))
        out.append("(" + ",".join(values) + ")")
    return Sql(",".join(out))


def columns(names: Iterable[str]) -> Sql:
    """A quoted column list: `a`, `b`."""
    return Sql(", ".join([quote(name) for name in names]))


def chunks(values: Sequence[T], size: int = 1000) -> Iterator[list[T]]:
    """IN lists of at most `size` parameters, so a statement stays far below max_allowed_packet."""
    for i in range(0, len(values), size):
        yield list(values[i : i + size])


class StatementCache:
    """Statements built once per shape (a table and its columns): on apply's hot path composing the text of an
    UPDATE of 25 columns costs more than sending it, so each shape is built once and kept (bounded)."""

    def __init__(self, size: int = 2000):
        self._built = LruMap(size)

    def get(self, key: Hashable, build: Callable[[], Sql]) -> Sql:
        found: Sql | None = self._built.get(key)
        if found is None:
            found = build()
            self._built.put(key, found)
        return found
