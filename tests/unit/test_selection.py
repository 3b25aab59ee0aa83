"""The filter rules of bulk actions (receiver/selection.py): ages, kinds, and the WHERE clause they make."""

from __future__ import annotations

import datetime as dt

import pytest

from dbsync_cli.receiver.selection import Selection, SelectionError, parse_age


def test_ages_take_a_number_and_a_unit() -> None:
    assert parse_age("90m") == dt.timedelta(minutes=90)
    assert parse_age(" 2h ") == dt.timedelta(hours=2)
    assert parse_age("3D") == dt.timedelta(days=3)
    assert parse_age("1w") == dt.timedelta(weeks=1)
    assert parse_age("1.5h") == dt.timedelta(minutes=90)
    for bad in ("", "2", "h", "2 hours", "-1d", "soon"):
        with pytest.raises(SelectionError):
            parse_age(bad)


def test_kinds_belong_to_their_queue() -> None:
    assert Selection("retry", kind="permanent").kind == "permanent"
    assert Selection("conflicts", kind="edited").kind == "edited"
    with pytest.raises(SelectionError):
        Selection("retry", kind="edited")
    with pytest.raises(SelectionError):
        Selection("conflicts", kind="permanent")


def test_the_where_clause_carries_values_as_parameters_only() -> None:
    where, params = Selection("retry", site="site1", table="obs", reason="50%_off", kind="transient",
                              older_than=dt.timedelta(hours=2), upto=99).where()
    assert where == (" WHERE site = %s AND table_name = %s AND reason LIKE %s AND kind = %s AND date_created < %s "
                     "AND id <= %s")
    assert params[:4] == ["site1", "obs", "%50\\%\\_off%", "transient"]  # LIKE wildcards typed are literal
    assert isinstance(params[4], dt.datetime) and params[5] == 99
    assert Selection("retry").where() == ("", [])
    where, params = Selection("conflicts", kind="edited").where()
    assert where == " WHERE resolved = 0 AND (reason LIKE %s)" and params == ["row edited centrally%"]


def test_a_selection_travels_as_json_and_says_what_it_selects() -> None:
    chosen = Selection("retry", site="site1", reason="disk", older_than=dt.timedelta(days=3), upto=7)
    assert Selection.of(chosen.args()) == chosen
    assert chosen.describe() == "--site site1 --reason 'disk' --older-than 3d"
    assert chosen.filtered and not Selection("retry", upto=7).filtered
