"""`dbsync sites add|list|disable|enable|remove` on a fresh receiver state schema on the central server."""

from __future__ import annotations

import datetime as dt
import json
import uuid as uuidlib

import orjson
import pytest
from helpers import dbsync, drop_schema, receiver_config


@pytest.fixture
def receiver(openmrs_db, services, broker_settings, tmp_path):
    db = openmrs_db("central", metadata=False)
    schema = f"t_state_{uuidlib.uuid4().hex[:10]}"
    conf, env = receiver_config(tmp_path, db, broker_settings, destination="openmrs.sync", state_schema=schema)
    yield db, schema, conf, env
    drop_schema(services["central"].admin, schema)


def sites(conf, env) -> list[dict]:
    return json.loads(dbsync("sites", "list", "--json", "--config", str(conf), env=env).stdout)


def test_sites_lifecycle(receiver) -> None:
    db, schema, conf, env = receiver
    assert sites(conf, env) == []
    run = dbsync("sites", "add", "clinic-a", "--name", "Clinic A", "--config", str(conf), env=env)
    assert "clinic-a" in run.stdout.decode()
    dbsync("sites", "add", "clinic-b", "--config", str(conf), env=env)

    listed = sites(conf, env)
    assert [(s["identifier"], s["name"], s["disabled"], s["last_sync_date"]) for s in listed] == [
        ("clinic-a", "Clinic A", False, None), ("clinic-b", "clinic-b", False, None)]
    assert all(dt.datetime.fromisoformat(s["date_created"]) for s in listed)

    # the last sync date comes from receiver_sync_status when apply has recorded one
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO `{schema}`.receiver_sync_status (site_id, last_sync_date, messages) "  # noqa: S608
                        f"SELECT id, '2024-05-06 07:08:09.123', 3 FROM `{schema}`.site_info WHERE identifier='clinic-a'")
    finally:
        conn.close()
    dbsync("sites", "disable", "clinic-b", "--config", str(conf), env=env)
    listed = {s["identifier"]: s for s in sites(conf, env)}
    assert listed["clinic-a"]["last_sync_date"].startswith("2024-05-06 07:08:09.123")
    assert listed["clinic-b"]["disabled"] is True
    dbsync("sites", "enable", "clinic-b", "--config", str(conf), env=env)
    assert {s["identifier"]: s["disabled"] for s in sites(conf, env)} == {"clinic-a": False, "clinic-b": False}

    table = dbsync("sites", "list", "--config", str(conf), env=env).stdout.decode()
    assert "clinic-a" in table and "Clinic A" in table and "never" in table

    refused = dbsync("sites", "remove", "clinic-a", "--config", str(conf), env=env, check=False)  # no tty: asks for --yes
    assert refused.returncode == 2 and "confirm with --yes" in refused.stderr.decode()
    dbsync("sites", "remove", "clinic-a", "--yes", "--config", str(conf), env=env)
    assert [s["identifier"] for s in sites(conf, env)] == ["clinic-b"]


@pytest.mark.parametrize("args, message", [
    (("remove", "nowhere", "--yes"), "dbsync: site 'nowhere' is not registered"),
    (("disable", "nowhere"), "dbsync: site 'nowhere' is not registered"),
    (("enable", "nowhere"), "dbsync: site 'nowhere' is not registered"),
])
def test_unknown_site_is_one_line_and_exit_1(receiver, args, message) -> None:
    _db, _schema, conf, env = receiver
    run = dbsync("sites", *args, "--config", str(conf), env=env, check=False)
    assert run.returncode == 1
    assert run.stderr.decode().strip().splitlines()[-1] == message


def test_adding_a_site_twice_is_fine_but_a_different_registration_fails(receiver) -> None:
    _db, _schema, conf, env = receiver
    dbsync("sites", "add", "clinic-a", "--config", str(conf), env=env)
    again = dbsync("sites", "add", "clinic-a", "--config", str(conf), env=env)
    assert again.stdout.decode().startswith("site 'clinic-a' is already registered")
    run = dbsync("sites", "add", "clinic-a", "--broker-user", "other", "--config", str(conf), env=env, check=False)
    assert run.returncode == 1
    assert run.stderr.decode().strip().splitlines()[-1] == (
        "dbsync: site 'clinic-a' is already registered with broker user 'clinic-a', not 'other' (to change it: "
        "dbsync sites update clinic-a --broker-user other)")


def test_a_site_registered_without_a_broker_user_gets_one_by_update(receiver) -> None:
    """Sites registered before broker users were recorded (state migration 6) accept any broker user until an
    operator names theirs."""
    _db, _schema, conf, env = receiver
    dbsync("sites", "add", "clinic-old", "--any-broker-user", "--config", str(conf), env=env)
    run = dbsync("sites", "update", "clinic-old", "--broker-user", "clinic-old-user", "--name", "Old clinic",
                 "--config", str(conf), env=env)
    assert run.stdout.decode().strip() == "site 'clinic-old' updated (Old clinic; sends as broker user " \
                                          "'clinic-old-user')"
    (row,) = [r for r in orjson.loads(dbsync("sites", "list", "--json", "--config", str(conf), env=env).stdout)
              if r["identifier"] == "clinic-old"]
    assert row["broker_user"] == "clinic-old-user" and row["name"] == "Old clinic"
    nothing = dbsync("sites", "update", "clinic-old", "--config", str(conf), env=env, check=False)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr.decode()
    unknown = dbsync("sites", "update", "nowhere", "--any-broker-user", "--config", str(conf), env=env, check=False)
    assert unknown.returncode == 1 and unknown.stderr.decode().strip() == "dbsync: site 'nowhere' is not registered"


def test_adopt_is_registered_shown_and_never_dropped_silently(receiver) -> None:
    """Issue 12 item 4: `sites add --adopt` records it and `sites list` shows it; adding an already registered site
    with --adopt names `sites update … --adopt` instead of ignoring the flag; --no-adopt ends it."""
    _db, _schema, conf, env = receiver
    run = dbsync("sites", "add", "clinic-dump", "--adopt", "--config", str(conf), env=env)
    assert "adopts central's equal rows" in run.stdout.decode(), run.stdout
    dbsync("sites", "add", "clinic-plain", "--config", str(conf), env=env)
    again = dbsync("sites", "add", "clinic-plain", "--adopt", "--config", str(conf), env=env, check=False)
    lines = again.stderr.decode().strip().splitlines()
    assert again.returncode == 1 and len(lines) == 1 and "sites update clinic-plain --adopt" in lines[0], lines
    dbsync("sites", "update", "clinic-dump", "--no-adopt", "--config", str(conf), env=env)
    listed = {r["identifier"]: r["adopt"] for r in sites(conf, env)}
    assert listed["clinic-dump"] is False and listed["clinic-plain"] is False, listed
