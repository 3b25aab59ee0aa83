"""Placeholder rows (receiver.placeholder) for tables whose required columns need no lookup: no cursor at all."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, ForeignKey, TableInfo
from dbsync_cli.receiver.placeholder import _values, is_placeholder

UUID = "3f9a1c2e-0000-4000-8000-00000000abcd"
USER = 4


def _c(name: str, column_type: str, *, null: bool = True, default: str | None = None, auto: bool = False) -> Column:
    return Column(name, column_type.split("(", maxsplit=1)[0], column_type, null, default, auto)


def _info(name: str, pk: str, *columns: Column, fks: dict[str, ForeignKey] | None = None) -> TableInfo:
    return TableInfo(name, {c.name: c for c in columns}, (pk,), fks or {}, set())


THING = _info(
    "thing", "thing_id",
    _c("thing_id", "int(11)", null=False, auto=True), _c("uuid", "char(38)", null=False),
    _c("name", "varchar(10)", null=False), _c("code", "char(50)", null=False), _c("label", "varchar", null=False),
    _c("description", "text", null=False), _c("notes", "mediumtext", null=False),
    _c("voided", "tinyint(1)", null=False, default="0"), _c("void_reason", "varchar(255)"),
    _c("voided_by", "int(11)"), _c("date_voided", "datetime"), _c("creator", "int(11)", null=False, default="0"),
    _c("changed_by", "int(11)", null=False), _c("date_created", "datetime", null=False),
    _c("stamp", "timestamp", null=False), _c("born", "date", null=False), _c("at", "time", null=False),
    _c("weight", "double", null=False), _c("count", "int(11)", null=False),
    _c("optional", "varchar(50)"), _c("with_default", "int(11)", null=False, default="3"),
)  # fmt: skip
MEMBER = _info(
    "member", "member_id",
    _c("member_id", "int(11)", null=False), _c("retired", "tinyint(1)", null=False, default="0"),
    _c("retire_reason", "varchar(255)"), _c("retired_by", "int(11)"), _c("date_retired", "datetime"),
    fks={"member_id": ForeignKey("member_id", "thing", "thing_id")},
)  # fmt: skip
MODEL = SchemaModel("openmrs", {"thing": THING, "member": MEMBER}, synced=[])


def _placeholder(info: TableInfo, key: Any = None) -> tuple[dict[str, Any], dt.datetime, dt.datetime]:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    values = _values(None, MODEL, info, UUID, USER, key=key)
    return values, before, dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def test_a_placeholder_is_recognised_by_its_void_or_retire_reason() -> None:
    assert is_placeholder({"void_reason": "[placeholder]"})
    assert is_placeholder({"voided": 0, "retire_reason": "[placeholder]"})
    assert not is_placeholder({"void_reason": "duplicate", "retire_reason": None})
    assert not is_placeholder({"voided": 1, "date_voided": dt.datetime(2024, 1, 1)})
    assert not is_placeholder({"void_reason": "[placeholder] "})
    assert not is_placeholder({})


def test_a_placeholder_carries_the_uuid_and_is_voided_with_the_reason() -> None:
    values, _, _ = _placeholder(THING)
    assert values["uuid"] == UUID
    assert values["voided"] == 1 and values["void_reason"] == "[placeholder]"
    assert is_placeholder(values)


def test_audit_columns_are_the_given_user() -> None:
    values, _, _ = _placeholder(THING)
    assert values["voided_by"] == USER and values["creator"] == USER and values["changed_by"] == USER


def test_dates_are_now_in_utc_without_microseconds() -> None:
    values, before, after = _placeholder(THING)
    for column in ("date_voided", "date_created", "stamp"):
        assert before <= values[column] <= after and values[column].microsecond == 0
    assert values["born"] in (before.date(), after.date())
    assert values["at"] == "00:00:00"


def test_required_text_is_the_uuid_cut_to_the_column_length() -> None:
    values, _, _ = _placeholder(THING)
    assert values["name"] == UUID[:10]
    assert values["code"] == UUID  # longer than the uuid: the whole uuid
    assert values["label"] == UUID  # no length in the column type
    assert values["description"] == "[placeholder]" and values["notes"] == "[placeholder]"


def test_other_required_columns_are_zero_and_the_rest_is_left_to_the_database() -> None:
    values, _, _ = _placeholder(THING)
    assert values["count"] == 0 and values["weight"] == 0
    assert "thing_id" not in values  # auto_increment
    assert "optional" not in values and "with_default" not in values


def test_a_subclass_placeholder_takes_the_given_key_and_is_retired() -> None:
    values, before, after = _placeholder(MEMBER, key=42)
    assert values["member_id"] == 42
    assert values["retired"] == 1 and values["retire_reason"] == "[placeholder]" and values["retired_by"] == USER
    assert before <= values["date_retired"] <= after
    assert "uuid" not in values and is_placeholder(values)
