"""Placeholder fillers without a database: what create() writes when a required reference's table is empty."""

from __future__ import annotations

from typing import Any

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, ForeignKey, TableInfo
from dbsync_cli.openmrs.rules import PLACEHOLDER_FILLER_REASON, PLACEHOLDER_REASON
from dbsync_cli.receiver import placeholder
from dbsync_cli.receiver.state import schema_name


def _col(name: str, data_type: str = "int", nullable: bool = False, auto: bool = False) -> Column:
    kind = {"int": "int(11)", "char": "char(38)", "varchar": "varchar(255)", "datetime": "datetime",
            "tinyint": "tinyint(1)"}[data_type]
    return Column(name, data_type, kind, nullable, None, auto)


def _table(name: str, key: str, columns: list[Column], fks: dict[str, str], auto: bool = True) -> TableInfo:
    cols = [_col(key, auto=auto), *columns]
    return TableInfo(name, {c.name: c for c in cols}, (key,),
                     {c: ForeignKey(c, t, t + "_id" if t != "person" else "person_id") for c, t in fks.items()})


def _model() -> SchemaModel:
    audit = [_col("creator"), _col("date_created", "datetime"), _col("voided", "tinyint"),
             _col("voided_by", nullable=True), _col("date_voided", "datetime", nullable=True),
             _col("void_reason", "varchar", nullable=True), _col("uuid", "char")]
    tables = {
        "users": _table("users", "user_id", [_col("uuid", "char")], {}),
        "person": _table("person", "person_id", audit, {"creator": "users"}),
        "patient": _table("patient", "patient_id", [_col("creator"), _col("date_created", "datetime"),
                                                    _col("voided", "tinyint"),
                                                    _col("void_reason", "varchar", nullable=True)],
                          {"patient_id": "person", "creator": "users"}, auto=False),
        "encounter": _table("encounter", "encounter_id", [_col("patient_id"), *audit],
                            {"patient_id": "patient", "creator": "users"}),
    }
    return SchemaModel("openmrs", tables, [])


class FakeCursor:
    """SELECT MIN(…) finds nothing (every table is empty); INSERTs get consecutive keys."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.lastrowid = 0

    def execute(self, statement: str, args: Any = None) -> None:
        self.statements.append((statement, args))
        if statement.startswith("INSERT INTO `"):
            self.lastrowid += 1

    def fetchone(self) -> tuple[Any, ...]:
        return (None,)


def _inserts(cur: FakeCursor, table: str) -> list[dict[str, Any]]:
    found = []
    for statement, args in cur.statements:
        if statement.startswith(f"INSERT INTO `{table}` "):
            names = statement.split("(", 1)[1].split(")", 1)[0].replace("`", "").split(", ")
            found.append(dict(zip(names, args, strict=True)))
    return found


def test_a_placeholder_needing_a_row_of_an_empty_table_gets_a_recorded_filler() -> None:
    model, cur = _model(), FakeCursor()
    key = placeholder.create(cur, model, "encounter", "e-uuid", 1, fillers=schema_name("state"))
    encounter = _inserts(cur, "encounter")[0]
    person, patient = _inserts(cur, "person")[0], _inserts(cur, "patient")[0]
    assert encounter["uuid"] == "e-uuid" and encounter["void_reason"] == PLACEHOLDER_REASON
    # the filler: a patient (with its person) of a random uuid, marked as a filler, recorded with its key
    assert person["void_reason"] == patient["void_reason"] == PLACEHOLDER_FILLER_REASON
    assert person["uuid"] != "e-uuid" and encounter["patient_id"] == patient["patient_id"] == 1 and key == cur.lastrowid
    recorded = [args for statement, args in cur.statements if "receiver_filler" in statement]
    assert [(r[0], r[1], r[2]) for r in recorded] == [("patient", "1", person["uuid"])]


def test_without_a_state_schema_nothing_is_recorded() -> None:
    cur = FakeCursor()
    placeholder.create(cur, _model(), "encounter", "e-uuid", 1)
    assert not any("receiver_filler" in statement for statement, _args in cur.statements)


def test_a_filler_is_a_placeholder_and_its_subclass_row_goes_first() -> None:
    assert placeholder.is_placeholder({"void_reason": PLACEHOLDER_FILLER_REASON})
    assert placeholder.is_placeholder({"retire_reason": PLACEHOLDER_REASON})
    assert not placeholder.is_placeholder({"void_reason": "duplicate"})
    model = _model()
    assert placeholder._filler_tables(model, "patient") == ["patient", "person"]
    assert placeholder._filler_tables(model, "encounter") == ["encounter"]
    assert placeholder._filler_tables(model, "gone") == []
