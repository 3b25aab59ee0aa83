"""The archive's pure rules: which people a row hangs off (from the schema model), and the blob of bodies."""

from __future__ import annotations

from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, ForeignKey, TableInfo
from dbsync_cli.openmrs.patients import Links
from dbsync_cli.receiver.archive import pack, unpack
from dbsync_cli.wire import ref

ANN, BEA, ENC, ORDER, PROVIDER = ("aaaa0000-0000-4000-8000-00000000000" + c for c in "12345")


def _table(name: str, pk: str, *refs: tuple[str, str], uuid: bool = True) -> TableInfo:
    names = [pk, *(["uuid"] if uuid else []), *(column for column, _ in refs)]
    columns = {n: Column(n, "int", "int(11)", n != pk, None, n == pk and uuid) for n in names}
    return TableInfo(name, columns, (pk,), {c: ForeignKey(c, t, f"{t}_id") for c, t in refs}, {"uuid"} if uuid else set())


TABLES = {t.name: t for t in (
    _table("users", "users_id", ("person_id", "person"), ("creator", "users")),
    _table("person", "person_id", ("creator", "users")),
    _table("patient", "patient_id", ("patient_id", "person"), ("creator", "users"), uuid=False),
    _table("location", "location_id"),
    _table("provider", "provider_id", ("person_id", "person")),
    _table("encounter", "encounter_id", ("patient_id", "patient"), ("location_id", "location"), ("creator", "users")),
    _table("encounter_provider", "encounter_provider_id", ("encounter_id", "encounter"), ("provider_id", "provider")),
    _table("relationship", "relationship_id", ("person_a", "person"), ("person_b", "person")),
    _table("orders", "orders_id", ("patient_id", "patient")),
    _table("drug_order", "orders_id", ("orders_id", "orders"), uuid=False),
)}  # fmt: skip
MODEL = SchemaModel("openmrs", TABLES, synced=[n for n in TABLES if n != "location"])
LINKS = Links(MODEL.synced)


def test_a_row_names_its_people_through_person_and_patient_references_not_audit_columns() -> None:
    synced = MODEL.synced
    assert LINKS.people(synced["person"], ANN.upper(), {"creator": ref("users", BEA)}) == [ANN]
    assert LINKS.people(synced["patient"], ANN, None) == [ANN]  # its identity is person
    encounter = {"patient_id": ref("patient", ANN), "creator": ref("users", BEA), "location_id": ref("location", ENC)}
    assert LINKS.people(synced["encounter"], ENC, encounter) == [ANN]
    both = {"person_a": ref("person", ANN), "person_b": ref("person", BEA)}
    assert LINKS.people(synced["relationship"], ENC, both) == [ANN, BEA]
    assert LINKS.people(synced["encounter_provider"], ENC, {"encounter_id": ref("encounter", ENC)}) == []


def test_a_row_without_people_hangs_off_its_own_identity_then_synced_rows_but_not_providers_or_metadata() -> None:
    synced = MODEL.synced
    data = {"encounter_id": ref("encounter", ENC), "provider_id": ref("provider", PROVIDER)}
    assert LINKS.parents(synced["encounter_provider"], ORDER, data) == [ORDER, ENC]
    assert LINKS.parents(synced["drug_order"], ORDER, None) == [ORDER]  # a delete: no data
    assert LINKS.parents(synced["encounter"], ENC, {"location_id": ref("location", ANN)}) == [ENC]


def test_bodies_come_back_from_their_blob_in_order() -> None:
    bodies = [b'{"v":1}', b"", b"\x00\xff not json", b"x" * 70_000]
    assert list(unpack(pack(bodies))) == bodies
    similar = [b'{"v":1,"table":"obs","data":{"value_numeric":%d}}' % n for n in range(500)]
    assert len(pack(similar)) < sum(map(len, similar)) / 10  # a batch deflates together
