"""Workload generator against real MariaDB: repeatability, ground truth, tamper detection, big transactions."""

from __future__ import annotations

from collections.abc import Callable

from helpers import query

from dbsync_cli.db import DbParams
from devtools.workload import metadata as md
from devtools.workload.book import TABLES
from devtools.workload.generator import generate
from devtools.workload.truth import compare

MakeDb = Callable[..., DbParams]


def _dump(db: DbParams) -> dict[str, list[tuple]]:
    """Every row of every table the generator writes, all columns (ids and uuids included), in key order."""
    conn = db.connect()
    try:
        out = {}
        with conn.cursor() as cur:
            for table, (pk, _cols, _refs) in TABLES.items():
                cur.execute(f"SELECT * FROM `{table}` ORDER BY `{pk}`")  # noqa: S608 - fixed names
                out[table] = list(cur.fetchall())
        return out
    finally:
        conn.close()



def test_load_openmrs_schema_and_metadata(openmrs_db: MakeDb) -> None:
    db = openmrs_db("site1")
    assert query(db, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema=%s", (db.database,)) == [(128,)]
    assert query(db, "SELECT uuid FROM concept WHERE concept_id=%s", (md.CONCEPT_WEIGHT,)) == [(md.concept_uuid(md.CONCEPT_WEIGHT),)]
    assert query(db, "SELECT COUNT(*) FROM concept_answer WHERE concept_id=%s", (md.CONCEPT_HIV_TEST,)) == [(3,)]
    assert query(db, "SELECT format FROM person_attribute_type WHERE person_attribute_type_id=%s",
                (md.ATTR_HEALTH_CENTER,)) == [("org.openmrs.Location",)]
    bare = openmrs_db("site1", metadata=False)
    assert query(bare, "SELECT COUNT(*) FROM concept") == [(2,)]


def test_same_seed_same_data_other_seed_other_data(openmrs_db: MakeDb) -> None:
    kw = dict(patients=60, mutations=0.3)
    a, b, c = openmrs_db("site1"), openmrs_db("site1"), openmrs_db("site1")
    ta = generate(a, seed=11, **kw)
    tb = generate(b, seed=11, **kw)
    generate(c, seed=12, **kw)
    dump_a, dump_b, dump_c = _dump(a), _dump(b), _dump(c)
    assert sum(map(len, dump_a.values())) > 5000
    for table in TABLES:
        assert dump_a[table] == dump_b[table], table
    assert ta.to_dict() == tb.to_dict()
    assert dump_a["obs"] != dump_c["obs"]
    uuids_a, uuids_c = (set(query(d, "SELECT uuid FROM person WHERE person_id > 1")) for d in (a, c))
    assert uuids_a and not uuids_a & uuids_c


def test_compare_clean_then_reports_tampering(openmrs_db: MakeDb) -> None:
    db = openmrs_db("site1")
    truth = generate(db, seed=5, patients=80, mutations=0.3, transaction_rows=500, batch_rows=200)
    assert compare(db, truth) == []
    assert compare(db, truth, strict=True) == []
    assert truth.deleted and truth.stats["rows_per_second"] > 0

    name_uuid = next(iter(truth.tables["person_name"]))
    obs_uuid = next(u for u, r in truth.tables["obs"].items() if r["value_numeric"] is not None and not r["voided"])
    enc_uuid = next(iter(truth.tables["encounter"]))
    deleted_attr = next(iter(truth.deleted["person_attribute"]))
    query(db, "UPDATE person_name SET given_name='Tampered' WHERE uuid=%s", (name_uuid,))
    query(db, "DELETE FROM obs WHERE uuid=%s", (obs_uuid,))
    query(db, "UPDATE encounter SET location_id=%s WHERE uuid=%s", (md.LOCATION_UNKNOWN, enc_uuid))
    query(db, "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, date_created, uuid) "
             "VALUES (1, 'x', %s, 1, '2024-01-01', %s)", (md.ATTR_TELEPHONE, deleted_attr))
    query(db, "INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, '2024-01-01', %s)",
         ("00000000-0000-4000-8000-000000000001",))
    diffs = compare(db, truth)
    assert any(d.startswith(f"person_name {name_uuid}: given_name expected") and "'Tampered'" in d for d in diffs)
    assert f"obs {obs_uuid}: missing" in diffs
    assert any(d.startswith(f"encounter {enc_uuid}: location_id") and md.UUIDS["location"][1] in d for d in diffs)
    assert f"person_attribute {deleted_attr}: deleted at the site but still present" in diffs
    assert len(diffs) == 4, diffs
    strict = compare(db, truth, strict=True)
    assert "person 00000000-0000-4000-8000-000000000001: extra row" in strict and len(strict) == 5


def test_compare_with_central_suffixes(openmrs_db: MakeDb) -> None:
    db = openmrs_db("site1")
    truth = generate(db, seed=9, patients=10, mutations=0.0)
    query(db, "UPDATE users SET username=CONCAT(username, '|site1'), system_id=CONCAT(system_id, '|site1') "
             "WHERE user_id > 2")
    query(db, "UPDATE provider SET identifier=CONCAT(identifier, '|site1')")
    assert compare(db, truth, username_suffix="|site1") == []
    assert len(compare(db, truth)) == 2 * len(truth.tables["users"]) + len(truth.tables["provider"])


def test_one_transaction_of_50000_rows(openmrs_db: MakeDb) -> None:
    db = openmrs_db("site1")
    truth = generate(db, seed=3, patients=560, mutations=0.0, transaction_rows=0, batch_rows=2000)
    assert truth.stats["rows_created"] >= 50_000
    assert truth.stats["transactions"] == 1
    assert compare(db, truth) == []
