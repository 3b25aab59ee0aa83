"""Which rows of a batch the set path keeps, and in which wave each is written (receiver/set_select.py)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from dbsync_cli.receiver.set_select import Need, Row, future_dated, settle


class Ids:
    """The one part of UuidToId that `settle` reads: which subclass rows central is known to hold."""

    def __init__(self, known: set[tuple[str, Any]] = frozenset()) -> None:  # type: ignore[assignment]
        self.subclass_rows = {k: True for k in known}


def row(table: str, uuid: str, *, ek: str | None = None, needs: tuple[Need, ...] = (), parent: Any = None,
        checks: tuple[tuple[str, Any, Need], ...] = ()) -> Row:
    r = Row(0, None, SimpleNamespace(name=table), uuid, "site1", ek or f"{table}:{uuid}", (), [],  # type: ignore[arg-type]
            None, parent)
    r.needs, r.checks = list(needs), list(checks)
    return r


def waves(rows: list[Row]) -> dict[str, int]:
    return {f"{r.table.name}:{r.uuid}": r.wave for r in rows}


def test_a_row_goes_after_every_row_of_the_batch_it_references() -> None:
    person = row("person", "p", ek="person:p")
    patient = row("patient", "p", ek="person:p", parent=Need("person", "p"))
    encounter = row("encounter", "e", checks=(("patient", 7, Need("patient", "p")),))
    group = row("obs", "g", needs=(Need("encounter", "e"),))
    member = row("obs", "m", needs=(Need("encounter", "e"), Need("obs", "g")))
    kept = settle([member, group, encounter, patient, person], set(), Ids())
    assert waves(kept) == {"person:p": 0, "patient:p": 1, "encounter:e": 2, "obs:g": 3, "obs:m": 4}


def test_a_row_whose_reference_no_row_satisfies_leaves_with_its_entity_and_its_dependents() -> None:
    person = row("person", "p", ek="person:p")
    patient = row("patient", "p", ek="person:p", parent=Need("person", "p"),
                  needs=(Need("location", "missing"),))  # a placeholder or a retry: the per-row path's
    name = row("person_name", "n", needs=(Need("person", "p"),))
    other = row("person", "q")
    unfit: set[str] = set()
    kept = settle([person, patient, name, other], unfit, Ids())
    assert [r.uuid for r in kept] == ["q"]
    assert unfit == {"person:p", "person_name:n"}


def test_an_entity_with_an_unfit_message_leaves_whole() -> None:
    person = row("person", "p", ek="person:p")
    kept = settle([person, row("person_name", "n", needs=(Need("person", "p"),))], {"person:p"}, Ids())
    assert kept == []


def test_references_that_go_round_leave_for_the_per_row_path() -> None:
    a = row("users", "a", needs=(Need("users", "b"),))
    b = row("users", "b", needs=(Need("users", "a"),))
    c = row("person", "c")
    kept = settle([a, b, c], set(), Ids())
    assert [r.uuid for r in kept] == ["c"]


def test_a_reference_to_a_subclass_row_needs_that_row_known_or_in_the_batch() -> None:
    known = row("encounter", "e1", checks=(("patient", 5, Need("patient", "p5")),))
    unknown = row("encounter", "e2", checks=(("patient", 6, Need("patient", "p6")),))
    kept = settle([known, unknown], set(), Ids({("patient", 5)}))
    assert [r.uuid for r in kept] == ["e1"] and kept[0].wave == 0


def test_an_update_dated_past_centrals_clock_is_left_to_the_per_row_path() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0)
    update = row("person_name", "n")
    update.columns, update.values = ("given_name", "date_changed"), ["Ann", now + dt.timedelta(minutes=5)]
    assert future_dated(update, now, tolerance=120)
    update.values = ["Ann", now + dt.timedelta(seconds=60)]
    assert not future_dated(update, now, tolerance=120)
    update.columns, update.values = ("given_name",), ["Ann"]
    assert not future_dated(update, now, tolerance=120)


def synced_table(name: str = "users") -> Any:
    """A table as the schema model describes it: what `Plans` and `convert` read."""
    from dbsync_cli.openmrs.introspect import Column
    from dbsync_cli.openmrs.model import Identity, Reference

    def column(col: str, data_type: str) -> Column:
        return Column(col, data_type, data_type, True, None, False)

    columns = {c.name: c for c in (column("user_id", "int"), column("uuid", "char"), column("username", "varchar"),
                                   column("retired", "tinyint"), column("date_changed", "datetime"),
                                   column("photo", "blob"), column("creator", "int"), column("password", "varchar"))}
    person = Identity("person", "person_id")
    return SimpleNamespace(name=name, key="user_id", secret_columns=("password",), site_suffix_columns=("username",),
                           info=SimpleNamespace(columns=columns),
                           references={"creator": Reference("creator", "person", person)})


def converted(data: dict[str, Any], known: dict[str, int] | None = None) -> Row:
    from dbsync_cli.receiver.set_select import Plans, convert

    class Known:
        def get(self, table: str, uuid: str) -> Any:
            return (known or {}).get(uuid)

    table = synced_table()
    target = row("users", "u")
    target.site = "s1"
    convert(Plans(None), Known(), lambda kind, value, t, c: dt.datetime.fromisoformat(value).replace(tzinfo=None),  # type: ignore[arg-type]
            table, data, target)
    return target


def test_values_convert_as_the_per_row_path_does_or_go_its_way() -> None:
    import pytest

    from dbsync_cli.receiver.set_select import Unfit

    done = converted({"username": "ann", "retired": True, "date_changed": "2024-01-01T10:00:00+00:00",
                      "creator": {"$ref": "person", "uuid": "p1"}}, known={"p1": 7})
    assert done.columns == ("username", "retired", "date_changed", "creator")
    assert done.values == ["ann|s1", 1, dt.datetime(2024, 1, 1, 10, 0), 7]
    waiting = converted({"creator": {"$ref": "person", "uuid": "p2"}})
    assert waiting.values == [Need("person", "p2")] and waiting.needs == [Need("person", "p2")]
    for unfit in ({"retired": 1.5}, {"retired": "1"}, {"photo": {"$b64": "AA=="}}, {"password": "x"},
                  {"nonesuch": 1}, {"creator": {"uuid": "p1"}}, {"creator": 7}, {"date_changed": 5}):
        with pytest.raises(Unfit):
            converted(unfit, known={"p1": 7})
