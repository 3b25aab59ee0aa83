"""The canonical row `dbsync verify` compares: the same row digests the same from either side of the wire."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

from dbsync_cli import wire
from dbsync_cli.openmrs.canonical import Buckets, canonical_value, prefix_length, row_digest
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.openmrs.model import SchemaModel
from dbsync_cli.values import wire_converter


def _column(name: str, data_type: str) -> Column:
    return Column(name=name, data_type=data_type, column_type=data_type, nullable=True, default=None,
                  auto_increment=False)


def _model() -> SchemaModel:
    person = TableInfo("person", {c.name: c for c in (_column("person_id", "int"), _column("uuid", "char"),
                                                      _column("birthdate", "date"),
                                                      _column("date_created", "datetime"),
                                                      _column("gender", "varchar"))}, ("person_id",), {},
                       {"uuid"})
    return SchemaModel("db", {"person": person}, ["person"])


def test_a_datetime_digests_the_same_in_any_zone_and_a_date_is_never_shifted() -> None:
    table = _model().synced["person"]
    instant = dt.datetime(2024, 3, 31, 0, 30, tzinfo=dt.UTC)
    rows = []
    for zone in ("Africa/Maputo", "America/Sao_Paulo", "UTC"):
        tz = ZoneInfo(zone)
        local = instant.astimezone(tz).replace(tzinfo=None)
        convert = wire_converter(table.info.columns["date_created"], tz)
        rows.append({"date_created": convert(local), "birthdate": "1990-05-01", "gender": "F"})
    assert len({row_digest(table, "u-1", r) for r in rows}) == 1
    shifted = {**rows[0], "birthdate": "1990-05-02"}
    assert row_digest(table, "u-1", shifted) != row_digest(table, "u-1", rows[0])
    assert row_digest(table, "u-2", rows[0]) != row_digest(table, "u-1", rows[0])


def test_references_and_binary_values_in_canonical_form() -> None:
    assert canonical_value("int", wire.ref("person", "abc")) == "abc"
    assert canonical_value("blob", wire.b64(b"\x00\x01")) == "AAE="
    assert canonical_value("timestamp", "2024-01-01T10:00:00+00:00") == "2024-01-01 10:00:00"
    assert canonical_value("varchar", "2024-01-01T10:00:00+02:00") == "2024-01-01T10:00:00+02:00"  # text stays text
    assert canonical_value("time", "07:05:00") == "07:05:00"


def test_buckets_do_not_depend_on_the_order_rows_are_read_in() -> None:
    rows = [(f"{random.Random(i).getrandbits(128):032x}", f"{i:032x}") for i in range(3000)]
    a, b = Buckets(prefix_length(len(rows))), Buckets(prefix_length(len(rows)))
    for uuid, digest in rows:
        a.add(uuid, digest)
    for uuid, digest in reversed(rows):
        b.add(uuid, digest)
    assert a.as_wire() == b.as_wire() and a.differing(b.as_wire()) == []
    c = Buckets(a.length)
    for uuid, digest in rows[1:]:
        c.add(uuid, digest if uuid != rows[5][0] else "f" * 32)
    assert set(c.differing(a.as_wire())) == {rows[0][0][: a.length], rows[5][0][: a.length]}
    assert prefix_length(10) == 0 and prefix_length(3000) == 1 and prefix_length(1_000_000) == 3


def test_a_differing_bucket_is_narrowed_to_its_differing_sixteenths() -> None:
    rows = [(f"{random.Random(i).getrandbits(128):032x}", f"{i:032x}") for i in range(20_000)]
    site, central = Buckets(2), Buckets(2)
    for uuid, digest in rows:
        site.add(uuid, digest)
        central.add(uuid, digest if uuid != rows[7][0] else "0" * 32)
    central.add("ffff" + "0" * 28, "1" * 32)  # a row only central has
    differing = site.differing(central.as_wire())
    assert differing == sorted({rows[7][0][:2], "ff"})
    narrowed = site.differing_subs(differing, central.sub_wire(differing))
    assert narrowed == sorted({rows[7][0][:3], "fff"})
    assert len(central.sub_wire(differing)) <= 32


def test_a_uuid_digests_the_same_in_either_letter_case() -> None:
    """Central stores a site's row under its canonical (lower-case) uuid; a site may hold it in upper case, and
    a reference to a CIEL concept is upper case on both sides: verify compares them case-insensitively."""
    table = _model().synced["person"]
    row = {"gender": "F", "birthdate": "1990-05-01", "date_created": None}
    assert row_digest(table, "ABC-1", row) == row_digest(table, "abc-1", row)
    ref = wire.ref("person", "1065AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert canonical_value("int", ref) == canonical_value("int", wire.ref("person", ref["uuid"].lower()))
