"""The archive of what was synced (issue 28): a row's whole history by uuid and by patient after a sync with a
conflict and a retry, read through `dbsync archive … --json`; pruning by age and by size cap in the receiver's
housekeeping. The checks read the CLI's JSON and central's tables with plain SQL."""

from __future__ import annotations

import getpass
import os
from typing import Any

import orjson
from helpers import dbsync
from receiver_helpers import Central, drop_schema, make_central, make_site
from test_apply import new_person

from devtools.workload import metadata as md

LOCATION = "bbbbbbbb-2222-4222-8222-bbbbbbbbbbbb"


def _archive(central: Central, *args: str) -> Any:
    return orjson.loads(dbsync("archive", *args, "--json", "--config", str(central.config), env=central.env).stdout)


def _cli(central: Central, *args: str) -> str:
    return dbsync(*args, "--config", str(central.config), env=central.env).stdout.decode()


def test_a_rows_whole_history_by_uuid_and_by_patient(openmrs_db, services, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        site = make_site(openmrs_db, services, tmp_path, broker_settings)
        person, name = new_person(site, "Ann")
        central.apply(site.messages())
        (person_id,) = site.sql("SELECT person_id FROM person WHERE uuid = %s", (person,))[0]
        # a visit at a location central does not have yet (retry), an obs of the person (applied)
        site.sql("INSERT INTO location (name, creator, date_created, uuid, retired) VALUES ('New clinic', 1, NOW(), "
                 "%s, 0)", (LOCATION,))
        site.sql("INSERT INTO visit (patient_id, visit_type_id, date_started, location_id, creator, date_created, "
                 "uuid) SELECT %s, %s, '2024-03-01 08:00:00', location_id, 1, NOW(), UUID() FROM location "
                 "WHERE uuid = %s", (person_id, md.VISIT_OUTPATIENT, LOCATION))
        site.sql("INSERT INTO obs (person_id, concept_id, obs_datetime, location_id, creator, date_created, uuid, "
                 "value_datetime, voided) VALUES (%s, %s, '2024-03-01 09:00:00', 2, 1, NOW(), UUID(), "
                 "'2024-03-08 09:00:00', 0)", (person_id, md.CONCEPT_RETURN_VISIT))
        ((visit,),) = site.sql("SELECT uuid FROM visit WHERE patient_id = %s", (person_id,))
        ((obs,),) = site.sql("SELECT uuid FROM obs WHERE person_id = %s", (person_id,))
        first = {r["table"]: r["outcome"] for r in central.apply(site.messages())}
        assert first == {"visit": "retry", "obs": "applied"}, central.last_stderr
        # a conflict: central edited the name after the site's edit; the obs is deleted at the site (no data: its
        # person comes from its archived create)
        central.sql("UPDATE person_name SET given_name = 'Central Ann', date_changed = '2030-01-01' WHERE uuid = %s",
                    (name,))
        site.sql("UPDATE person_name SET family_name = 'Site', date_changed = '2024-06-01 10:00:00' WHERE uuid = %s",
                 (name,))
        site.sql("DELETE FROM obs WHERE uuid = %s", (obs,))
        second = {r["table"]: r["outcome"] for r in central.apply(site.messages())}
        assert second == {"person_name": "conflict", "obs": "applied"}, central.last_stderr
        # the operator fixes the retry's cause and retries, then resolves the conflict for the site
        central.sql("INSERT INTO location (name, creator, date_created, uuid, retired) VALUES ('New clinic', 1, "
                    "NOW(), %s, 0)", (LOCATION,))
        _cli(central, "retry", "again")
        ((conflict,),) = central.sql(f"SELECT id FROM `{central.schema}`.receiver_conflict_queue")
        _cli(central, "conflicts", "resolve", str(conflict), "--take-incoming")
        me = getpass.getuser()

        named = _archive(central, "list", "--uuid", name.upper())  # a uuid is one uuid whatever its case
        assert [(r["outcome"], r["by"]) for r in named] == [
            ("applied", "receiver"), ("conflict", "receiver"), ("applied", me), ("resolved", me)], named
        assert named[1]["reason"].startswith("row edited centrally at 2030-01-01")
        assert named[3]["reason"] == "conflict resolved: take-incoming"
        assert {r["patient"] for r in named} == {person}
        assert [(r["outcome"], r["by"]) for r in _archive(central, "list", "--uuid", visit)] == [
            ("retry", "receiver"), ("applied", me)]
        obs_history = _archive(central, "list", "--uuid", obs)
        assert [(r["op"], r["outcome"], r["patient"]) for r in obs_history] == [
            ("c", "applied", person), ("d", "applied", person)]

        everything = _archive(central, "list", "--patient", person)
        assert {(r["table"], r["uuid"]) for r in everything} == {
            ("person", person), ("patient", person), ("person_name", name), ("visit", visit), ("obs", obs)}
        assert len(everything) == 2 + len(named) + 2 + len(obs_history)
        assert [r["table"] for r in _archive(central, "list", "--patient", person, "--outcome", "retry")] == ["visit"]
        assert _archive(central, "list", "--patient", person, "--since", "1h", "--table", "obs") == obs_history
        assert _archive(central, "list", "--patient", person, "--until", "2000-01-01") == []

        shown = _archive(central, "show", str(named[1]["id"]))  # the conflict: what the site said, and the story
        assert shown["message"]["uuid"] == name and shown["message"]["data"]["family_name"] == "Site"
        assert [e["outcome"] for e in shown["history"]] == ["conflict", "applied", "resolved"]
        assert _archive(central, "show", str(named[2]["id"]))["message"] == shown["message"]  # body kept once
        bodies = central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.archive WHERE message_id = %s AND part IS NOT "
                             "NULL", (shown["message_id"],))
        assert bodies == [(1,)]
        text = _cli(central, "archive", "show", str(named[1]["id"]))
        assert "resolved" in text and '"family_name": "Site"' in text
    finally:
        drop_schema(central)


def _receiver_once(central: Central, **settings: object) -> None:
    """The receiver's housekeeping (it prunes at start), then idle exit."""
    extra = {f"DBSYNC_RECEIVER__{k.upper()}": str(v) for k, v in settings.items()}
    dbsync("receiver", "--config", str(central.config), "--idle-exit", "1", env={**central.env, **extra})


def test_the_archive_prunes_itself_by_age_and_by_size(openmrs_db, services, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings)
    s = central.schema
    try:
        site = make_site(openmrs_db, services, tmp_path, broker_settings)
        batches = []
        for given in ("Old", "Older", "Today"):
            person, _ = new_person(site, given)
            central.apply(site.messages())
            batches.append(person)
        (total,) = central.sql(f"SELECT COUNT(*) FROM `{s}`.archive")[0]
        assert total > 6

        def age(person: str, days: int) -> None:  # what an archive written `days` ago looks like
            blobs = f"SELECT blob_id FROM `{s}`.archive WHERE patient_uuid = '{person}'"
            ids = ", ".join(str(b) for (b,) in central.sql(blobs)) or "0"
            for table, key in (("archive", "blob_id"), ("archive_blob", "id")):
                extra = ", date_handled = date_handled - INTERVAL %s DAY" if table == "archive" else ""
                central.sql(f"UPDATE `{s}`.{table} SET day = day - INTERVAL %s DAY{extra} WHERE {key} IN ({ids})",
                            (days, days) if extra else (days,))

        age(batches[0], 40)  # older than archive_days (30)
        age(batches[1], 2)
        central.apply([])  # the pipe's `dbsync apply` keeps the archive's limits as `dbsync receiver` does
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive WHERE patient_uuid = %s", (batches[0],)) == [(0,)]
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive WHERE patient_uuid = %s", (batches[1],)) != [(0,)]
        ((why, pruned),) = central.sql(f"SELECT why, n_rows FROM `{s}`.archive_pruned")
        assert why == "age" and 0 < pruned < total
        partitions = central.sql("SELECT COUNT(*) FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = %s AND "
                                 "TABLE_NAME = 'archive'", (s,))
        assert partitions[0][0] >= 8  # a week of day partitions made ahead, and pmax

        # a size cap below what is left: the oldest day goes first, today's rows stay
        (size,) = central.sql(f"SELECT SUM(bytes) FROM `{s}`.archive_blob")[0]
        _receiver_once(central, archive_max_mb=(int(size) - 1) / 1024 / 1024)
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive WHERE patient_uuid = %s", (batches[1],)) == [(0,)]
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive WHERE patient_uuid = %s", (batches[2],)) != [(0,)]
        assert dict(central.sql(f"SELECT why, n_rows > 0 FROM `{s}`.archive_pruned")) == {"age": 1, "size": 1}
        status = orjson.loads(_cli(central, "status", "--json"))
        assert status["archive"]["pruned"]["size"]["rows"] > 0 and status["archive"]["rows"] > 0

        # archive_days = 0 turns it off: nothing is written, and what it held goes, whole partitions dropped
        _receiver_once(central, archive_days=0)
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive") == [(0,)]
        after = central.sql("SELECT COUNT(*) FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = %s AND "
                            "TABLE_NAME = 'archive'", (s,))
        assert after[0][0] == partitions[0][0] - 1  # the partition of the rows so far dropped whole (DDL)
        person, _ = new_person(site, "Unarchived")
        env = {**central.env, "DBSYNC_RECEIVER__ARCHIVE_DAYS": "0"}
        dbsync("apply", "--config", str(central.config), env=env,
               stdin=b"".join(orjson.dumps(m) + b"\n" for m in site.messages()))
        assert central.sql(f"SELECT COUNT(*) FROM `{s}`.archive") == [(0,)]
        assert os.environ.get("DBSYNC_RECEIVER__ARCHIVE_DAYS") is None
    finally:
        drop_schema(central)
