"""Workload generator without a database: repeatable streams, truth shape, JSON round trip, metadata fixture."""

from __future__ import annotations

import re
from pathlib import Path

from devtools.workload import metadata as md
from devtools.workload.book import TABLES, ListSink
from devtools.workload.generator import run_workload
from devtools.workload.truth import GroundTruth

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openmrs-metadata.sql"
DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def _run(seed: int = 7, site: str = "site1", **kw) -> tuple[GroundTruth, ListSink]:
    sink = ListSink()
    kw.setdefault("patients", 40)
    return run_workload(sink, seed=seed, site=site, **kw), sink


def test_same_seed_gives_identical_operations_and_truth() -> None:
    a, sa = _run()
    b, sb = _run()
    assert sa.ops == sb.ops
    assert a.to_dict() == b.to_dict()


def test_other_seed_or_site_gives_other_rows() -> None:
    a, sa = _run(seed=7)
    b, sb = _run(seed=8)
    c, _ = _run(seed=7, site="site2")
    assert sa.ops != sb.ops
    assert not set(a.tables["person"]) & set(b.tables["person"])
    assert not set(a.tables["obs"]) & set(c.tables["obs"]), "same seed at two sites must not share uuids"


def test_json_round_trip(tmp_path: Path) -> None:
    truth, _ = _run()
    path = tmp_path / "truth.json"
    truth.to_json(path)
    back = GroundTruth.from_json(path)
    assert back == truth
    back.to_json(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_truth_uses_uuids_never_local_ids() -> None:
    truth, _ = _run()
    for table, rows in truth.tables.items():
        pk, _cols, refs = TABLES[table]
        for row in rows.values():
            assert pk not in row and "password" not in row and "salt" not in row
            for col in refs:
                if col in row and row[col] is not None:
                    assert set(row[col]) == {"$ref", "uuid"} and len(row[col]["uuid"]) == 36, (table, col, row[col])
            for col in ("date_created", "date_changed", "date_voided", "obs_datetime", "date_started"):
                if row.get(col) is not None:
                    assert DATETIME.match(row[col]), (table, col, row[col])
    # tables without a uuid are keyed by their parent's uuid
    assert set(truth.tables["patient"]) <= set(truth.tables["person"])
    assert set(truth.tables["drug_order"]) | set(truth.tables["test_order"]) <= set(truth.tables["orders"])
    location_attr = md.UUIDS["person_attribute_type"][md.ATTR_HEALTH_CENTER]
    values = [r["value"] for r in truth.tables["person_attribute"].values()
              if r["person_attribute_type_id"]["uuid"] == location_attr]
    assert values and all(v == {"$ref": "location", "uuid": md.UUIDS["location"][md.LOCATION_SITE1]} for v in values)


def test_mutations_update_void_unvoid_and_delete() -> None:
    truth, sink = _run(patients=60, mutations=0.5)
    kinds = {op[0] for op in sink.ops}
    assert {"insert", "update", "delete", "commit"} <= kinds
    deleted = {t: len(u) for t, u in truth.deleted.items()}
    for table in ("obs", "person_attribute", "person", "patient", "encounter", "orders"):
        assert deleted.get(table), table
    for table, uuids in truth.deleted.items():
        assert not set(uuids) & set(truth.tables.get(table, {})), table
    obs = truth.tables["obs"].values()
    assert any(r["voided"] and r["void_reason"] == "Value corrected" for r in obs)
    assert any(r["previous_version"] is not None for r in obs)
    assert any(r["date_changed"] for r in truth.tables["person_name"].values())
    unvoided = [op for op in sink.ops if op[0] == "update" and op[1] == "encounter" and op[4][0][1] == 0]
    assert unvoided, "some voided encounters are un-voided"


def test_no_mutations_means_inserts_only() -> None:
    truth, sink = _run(mutations=0.0)
    assert {op[0] for op in sink.ops} == {"insert", "commit"}
    assert not truth.deleted


def test_metadata_fixture_file_is_generated_from_the_module() -> None:
    assert FIXTURE.read_text(encoding="utf-8") == md.metadata_sql()


def test_metadata_uuids_fixed_and_unique() -> None:
    seen: list[str] = []
    for table, ids in md.UUIDS.items():
        for uuid in ids.values():
            assert len(uuid) == 36, (table, uuid)
            seen.append(uuid)
    assert len(seen) == len(set(seen))
    assert md.UUIDS["concept"][md.CONCEPT_WEIGHT] == "5089AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    assert md.derived_uuid("concept_name", md.CONCEPT_WEIGHT, "en") == "ab111909-d16d-5be7-8394-d28f4d60e61d"
