"""When a grouped INSERT's keys may be taken from the statement, and how big a group may grow."""

from __future__ import annotations

from typing import Any

import pytest

from dbsync_cli.receiver.inserts import _literal_bytes, consecutive_keys


class _Variables:
    """A cursor answering SHOW VARIABLES."""

    def __init__(self, **values: str) -> None:
        self.values = values

    def execute(self, sql: str, args: Any = None) -> None:
        assert sql.startswith("SHOW VARIABLES")

    def fetchall(self) -> list[tuple[str, str]]:
        return list(self.values.items())


@pytest.mark.parametrize(("variables", "expected"), [
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "1", "wsrep_on": "OFF"}, True),  # MariaDB
    ({"innodb_autoinc_lock_mode": "0", "auto_increment_increment": "1"}, True),  # MySQL 5.7, traditional mode
    ({"innodb_autoinc_lock_mode": "2", "auto_increment_increment": "1"}, False),  # MySQL 8 default: interleaved
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "2", "wsrep_on": "OFF"}, False),
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "1", "wsrep_on": "ON"}, False),  # Galera
    ({}, False),
])
def test_keys_come_from_the_statement_only_when_the_server_makes_them_consecutive(variables, expected) -> None:
    assert consecutive_keys(_Variables(**variables)) is expected


def test_a_value_is_counted_at_its_largest_possible_size_in_the_statement() -> None:
    assert _literal_bytes("é" * 10) >= len(("é" * 10).encode()) + 2
    assert _literal_bytes(b"\x00" * 10) >= 2 * 10 + 2
    assert _literal_bytes(12345678901234567890) >= 20


class _Recorder:
    """A cursor that records INSERTs and answers with consecutive keys from 100 on, per table."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.next: dict[str, int] = {}
        self.rowcount = 0
        self.lastrowid = 0

    def execute(self, statement: str, params: list[Any]) -> None:
        table = statement.split("`")[1]
        rows = statement.count("(") - 1
        self.statements.append((table, params))
        self.rowcount = rows
        self.lastrowid = self.next.get(table, 100)
        self.next[table] = self.lastrowid + rows


def _table(name: str, identity: str | None = None) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(name=name, key=f"{name}_id", identity=SimpleNamespace(table=identity or name),
                           is_subclass=identity is not None and identity != name)


def test_held_rows_go_in_waves_and_references_to_held_rows_get_their_keys() -> None:
    """person → patient (shares the key) → encounter → obs → obs of a group: one INSERT per table and wave, in an
    order that satisfies every reference, whatever the order the messages came in."""
    from dbsync_cli.receiver.batch import Batch
    from dbsync_cli.receiver.inserts import GroupedInserts
    from dbsync_cli.receiver.resolve import DeferredKey, UuidToId

    person, patient, encounter, obs = _table("person"), _table("patient", "person"), _table("encounter"), \
        _table("obs")
    ids = UuidToId(model=None)  # type: ignore[arg-type]
    inserts = GroupedInserts(ids, consecutive=True)
    cur, batch = _Recorder(), Batch()
    for n in (1, 2):
        p = DeferredKey("person", f"p{n}")
        inserts.hold(cur, batch, person, {"gender": "F", "uuid": f"p{n}"}, f"p{n}", "site1", None)
        inserts.hold(cur, batch, patient, {"patient_id": p}, f"p{n}", "site1", p)
        assert inserts.deferred("patient", "person", f"p{n}") == DeferredKey("patient", f"p{n}")
        e = DeferredKey("encounter", f"e{n}")
        inserts.hold(cur, batch, encounter, {"patient_id": DeferredKey("patient", f"p{n}"), "uuid": f"e{n}"},
                     f"e{n}", "site1", None)
        inserts.hold(cur, batch, obs, {"encounter_id": e, "obs_group_id": None, "uuid": f"g{n}"}, f"g{n}",
                     "site1", None)
        inserts.hold(cur, batch, obs, {"encounter_id": e, "obs_group_id": DeferredKey("obs", f"g{n}"),
                                       "uuid": f"o{n}"}, f"o{n}", "site1", None)
    assert inserts.deferred("obs", "obs", "nope") is None
    inserts.flush(cur, batch)
    assert [t for t, _ in cur.statements] == ["person", "patient", "encounter", "obs", "obs"]
    assert cur.statements[1][1] == [100, 101]  # patient rows take their persons' keys
    assert cur.statements[2][1] == [100, "e1", 101, "e2"]  # encounters reference the patients
    assert cur.statements[3][1] == [100, None, "g1", 101, None, "g2"]  # group obs first
    assert cur.statements[4][1] == [100, 100, "o1", 101, 101, "o2"]  # then their members
    assert ids.get("obs", "o2") == 103 and ids.get("person", "p2") == 101
    assert batch.touched[("patient", 101)] == ("p2", "site1")
    assert not inserts.held and not inserts.entries


def test_a_reference_to_a_subclass_row_whose_parent_alone_is_held_needs_the_parent_written_first() -> None:
    from dbsync_cli.receiver.batch import Batch
    from dbsync_cli.receiver.inserts import GroupedInserts
    from dbsync_cli.receiver.resolve import HeldRow, UuidToId

    inserts = GroupedInserts(UuidToId(model=None), consecutive=True)  # type: ignore[arg-type]
    inserts.hold(_Recorder(), Batch(), _table("person"), {"uuid": "p1"}, "p1", "site1", None)
    with pytest.raises(HeldRow):
        inserts.deferred("patient", "person", "p1")
