"""Issue 25, case 3: a uuid in another letter case is the same uuid (MariaDB compares them case-insensitively), so it
gets no second central row and no way around ownership; references to metadata stored in upper case (CIEL concepts)
keep resolving whatever case they arrive in."""

from __future__ import annotations

import uuid as uuidlib
from collections import Counter

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import outcomes
from test_verify import pair, receiver, sync, verify  # noqa: F401 - fixtures

from devtools.workload import metadata as md

ADMIN = "5f5c8cb5-b095-11eb-9be5-0242c0a82002"  # users.uuid of `admin` in every OpenMRS 2.5 dump
CIEL = "1065AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"  # a CIEL concept uuid: 36 characters, upper case, as central holds it


def _forged(message: dict, site: str, suffix: str, **changes) -> dict:
    return dict(message, site=site, id=f"{site}:{message['id']}:{suffix}", **changes)


def _errors(central) -> list[tuple]:
    return central.sql(f"SELECT site, table_name, reason FROM `{central.schema}`.receiver_retry_queue")


def _skipped(central, site: str) -> dict:
    run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
    (row,) = [s for s in orjson.loads(run.stdout)["sites"] if s["identifier"] == site]
    return row["skipped"]


def test_centrals_admin_in_upper_case_is_refused_not_a_second_user(openmrs_db, services, tmp_path,
                                                                     broker_settings) -> None:
    """Seen: site2 sent central's `admin` users row with its uuid in upper case and central got a second `users`
    row `hijack2|site2`; `users` has no unique index on uuid."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site = make_site(openmrs_db, services, tmp_path, broker_settings)
        (admin,) = [m for m in site.initial if m["table"] == "users" and m["uuid"] == ADMIN]
        before = central.sql("SELECT user_id, username, system_id FROM users WHERE uuid=%s", (ADMIN,))
        hijack = _forged(admin, "site2", "upper", uuid=ADMIN.upper(), data={**admin["data"], "username": "hijack2"})
        results = central.apply([hijack])
        assert outcomes(results) == Counter({"error": 1}), results
        assert results[0]["reason"] == (
            f"users {ADMIN} was sent as {ADMIN.upper()!r}, which differs only in letter case from central's own row "
            f"{ADMIN!r}: refused (a uuid names one row whatever its letter case)")
        assert central.sql("SELECT COUNT(*) FROM users WHERE uuid=%s", (ADMIN,)) == [(1,)]
        assert central.sql("SELECT COUNT(*) FROM users WHERE username LIKE 'hijack%%'") == [(0,)]
        assert central.sql("SELECT user_id, username, system_id FROM users WHERE uuid=%s", (ADMIN,)) == before
        assert [(e[0], e[1]) for e in _errors(central)] == [("site2", "users")]
        assert _skipped(central, "site2") == {"uuid_case": 1}
        # the same row in its own case stays what it always was: central's own, skipped and counted
        same = _forged(admin, "site2", "same", data={**admin["data"], "username": "hijack3"})
        assert outcomes(central.apply([same])) == Counter({"central_owned": 1})
        assert central.sql("SELECT user_id, username, system_id FROM users WHERE uuid=%s", (ADMIN,)) == before
    finally:
        drop_schema(central)


def test_a_sites_own_user_in_upper_case_is_the_same_row_and_no_other_sites(openmrs_db, services, tmp_path,
                                                                           broker_settings) -> None:
    """Seen: a site1 user's upper-case twin was created at central (and then blocked site1's own copy on a duplicate
    email). From its owner the upper-case uuid is an update of the same row; from another site it is refused."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site = make_site(openmrs_db, services, tmp_path, broker_settings)
        site.sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, NOW(), UUID())")
        person_id = site.sql("SELECT MAX(person_id) FROM person")[0][0]
        site.sql("INSERT INTO users (system_id, username, email, creator, date_created, person_id, uuid) "
                 "VALUES ('clerk', 'clerk', 'clerk@example.org', 1, NOW(), %s, UUID())", (person_id,))
        (uuid,) = site.sql("SELECT uuid FROM users WHERE username='clerk'")[0]
        created = site.messages()
        assert set(outcomes(central.apply(created))) == {"applied"}, central.last_stderr[-2000:]
        (user,) = [m for m in created if m["table"] == "users"]
        renamed = _forged(user, "site1", "upper", uuid=uuid.upper(), data={**user["data"], "username": "clerk2"})
        assert outcomes(central.apply([renamed])) == Counter({"applied": 1}), central.last_stderr[-2000:]
        assert central.sql("SELECT username, email FROM users WHERE uuid=%s", (uuid,)) == [
            ("clerk2|site1", "clerk@example.org")]
        # a reference in upper case names the same user too (no placeholder twin)
        (person,) = [m for m in created if m["table"] == "person"]
        upper_ref = {"$ref": "users", "uuid": uuid.upper()}
        person = _forged(person, "site1", "upper-ref", data={**person["data"], "changed_by": upper_ref})
        assert outcomes(central.apply([person])) == Counter({"applied": 1}), central.last_stderr[-2000:]
        assert central.sql("SELECT u.uuid FROM person p JOIN users u ON u.user_id = p.changed_by WHERE p.uuid=%s",
                           (person["uuid"],)) == [(uuid,)]
        assert central.sql("SELECT COUNT(*) FROM users WHERE uuid=%s", (uuid,)) == [(1,)]
        other = _forged(user, "site2", "upper", uuid=uuid.upper(), data={**user["data"], "username": "taken"})
        results = central.apply([other])
        assert outcomes(results) == Counter({"error": 1}), results
        assert results[0]["reason"].startswith(f"users {uuid} belongs to site site1: a change from site site2 is "
                                               "refused"), results
        assert central.sql("SELECT COUNT(*) FROM users WHERE uuid=%s", (uuid,)) == [(1,)]
        assert central.sql("SELECT username FROM users WHERE uuid=%s", (uuid,)) == [("clerk2|site1",)]
    finally:
        drop_schema(central)


def test_a_ciel_concept_reference_resolves_in_either_letter_case(openmrs_db, services, tmp_path,
                                                                 broker_settings) -> None:
    """CIEL concept uuids are upper case at central and at the sites. A reference to one resolves to central's row
    whether it arrives as stored or in lower case; it never becomes a missing reference."""
    central = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        site = make_site(openmrs_db, services, tmp_path, broker_settings)
        add_concept = ("INSERT INTO concept (concept_id, datatype_id, class_id, creator, date_created, uuid) "
                       "SELECT 991065, datatype_id, class_id, 1, '2020-01-01', %s FROM concept WHERE concept_id=%s")
        for db in (site, central):
            db.sql(add_concept, (CIEL, md.CONCEPT_RETURN_VISIT))
        site.sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('M', 1, NOW(), UUID())")
        person_uuid = site.sql("SELECT uuid FROM person ORDER BY person_id DESC LIMIT 1")[0][0]
        for value in ("as stored", "lower"):
            site.sql("INSERT INTO obs (person_id, concept_id, obs_datetime, location_id, creator, date_created, "
                     "uuid, value_text, voided) SELECT person_id, 991065, NOW(), 2, 1, NOW(), UUID(), %s, 0 "
                     "FROM person WHERE uuid=%s", (value, person_uuid))
        messages = site.messages()
        obs = [m for m in messages if m["table"] == "obs"]
        assert [m["data"]["concept_id"]["uuid"] for m in obs] == [CIEL, CIEL]
        lowered = obs[1]["data"]["concept_id"]
        lowered["uuid"] = lowered["uuid"].lower()
        results = central.apply(messages)
        assert set(outcomes(results)) == {"applied"}, results
        rows = central.sql("SELECT o.value_text, c.uuid FROM obs o JOIN concept c ON c.concept_id = o.concept_id "
                           "WHERE o.value_text IN ('as stored', 'lower') ORDER BY o.value_text")
        assert rows == [("as stored", CIEL), ("lower", CIEL)]
        assert central.sql("SELECT COUNT(*) FROM concept WHERE uuid=%s", (CIEL,)) == [(1,)]
        assert _errors(central) == []
    finally:
        drop_schema(central)


@pytest.mark.lane2  # a receiver and a sender, like test_verify.py
def test_verify_matches_rows_whose_uuid_the_site_holds_in_upper_case(pair, receiver,  # noqa: F811
                                                                     broker_settings) -> None:
    """Central stores a new row under its canonical (lower-case) uuid; the site may hold it in upper case, and a
    CIEL concept is upper case on both sides: verify compares uuids case-insensitively and finds nothing."""
    central, site = pair
    for db in (site, central):
        db.sql("INSERT INTO concept (concept_id, datatype_id, class_id, creator, date_created, uuid) "
               "SELECT 991065, datatype_id, class_id, 1, '2020-01-01', %s FROM concept WHERE concept_id=%s",
               (CIEL, md.CONCEPT_RETURN_VISIT))
    person = str(uuidlib.uuid4()).upper()
    site.sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, '2024-03-01', %s)", (person,))
    site.sql("INSERT INTO person_name (person_id, given_name, family_name, creator, date_created, preferred, uuid) "
             "SELECT person_id, 'Upper', 'Case', 1, '2024-03-01', 1, %s FROM person WHERE uuid=%s",
             (str(uuidlib.uuid4()).upper(), person))
    site.sql("INSERT INTO obs (person_id, concept_id, obs_datetime, location_id, creator, date_created, uuid, "
             "value_text, voided) SELECT person_id, 991065, '2024-03-01', 2, 1, '2024-03-01', UUID(), 'ciel', 0 "
             "FROM person WHERE uuid=%s", (person,))
    sync(central, site, broker_settings)
    assert central.sql("SELECT uuid FROM person WHERE uuid=%s", (person,)) == [(person.lower(),)]
    report = verify(site, code=0)
    assert report["differences"] == 0, report
    assert all(report["tables"][t]["matched"] >= 1 for t in ("person", "person_name", "obs")), report
