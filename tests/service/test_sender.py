"""The sender against the real MariaDB binlog and the real Artemis broker, with data from the workload generator."""

from __future__ import annotations

import shutil
import uuid as uuidlib
from pathlib import Path

import orjson
import pytest
from helpers import data_mismatches, datetime_columns, dbsync, drain, final_state, sender_config

from devtools.workload.generator import generate


def queue_name() -> str:
    return f"test.sender.{uuidlib.uuid4().hex[:10]}"


@pytest.fixture
def site(openmrs_db, services):
    admin = openmrs_db("site1")
    return admin, services["site1"].repl.with_database(admin.database)


def test_every_synced_table_with_identity_references_types_and_time_zone(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = queue_name()
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, timezone="+02:00")
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)  # initial snapshot of the metadata rows
    baseline = drain(broker_settings, dest, idle=1.5)
    assert {m["op"] for m in baseline} == {"r"}
    truth = generate(admin, seed=7, patients=25, mutations=0.3)
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    messages = drain(broker_settings, dest)
    state = final_state(messages)
    assert data_mismatches(truth.tables, state, "+02:00", datetime_columns(admin)) == []
    for table, uuids in truth.deleted.items():
        for uuid in uuids:
            assert state.get((table, uuid)) is None, f"{table} {uuid} deleted at the site but not in messages"
    ops: dict[str, set[str]] = {}
    for message in messages:
        ops.setdefault(message["table"], set()).add(message["op"])
        assert message["v"] == 1 and message["site"] == "site1" and not message["snapshot"]
        data = message["data"]
        if data is not None:
            assert not any(k.endswith("_id") and isinstance(v, int) and k != "person_id" for k, v in data.items()
                           if k in ("obs_id", "encounter_id", "patient_id", "order_id")), "local ids on the wire"
    touched = {t for t, rows in truth.tables.items() if rows}
    assert touched <= set(ops), f"no messages for {touched - set(ops)}"
    assert len(touched) >= 18, touched
    assert {"c", "u", "d"} <= set().union(*ops.values())
    # subclasses carry the parent's uuid
    for sub, parent in (("patient", "person"), ("drug_order", "orders"), ("test_order", "orders")):
        subs = [m for m in messages if m["table"] == sub and m["op"] == "c"]
        assert subs, sub
        assert all(state.get((parent, m["uuid"])) is not None for m in subs)
    # secrets never leave the site
    users = [m for m in messages if m["table"] == "users" and m["data"]]
    assert users and all("password" not in m["data"] and "salt" not in m["data"] for m in users)
    # DATE and TIME untouched, DATETIME with the site's offset
    person = next(m for m in messages if m["table"] == "person" and m["data"] and m["data"]["birthdate"])
    assert len(person["data"]["birthdate"]) == 10
    assert person["data"]["date_created"].endswith("+02:00")
    # ids are deterministic and unique per binlog row
    ids = [m["id"] for m in messages]
    assert len(ids) == len(set(ids))


def test_pipeline_of_commands_equals_sender(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    start_home = tmp_path / "start"
    conf0, env = sender_config(tmp_path, repl, broker_settings, destination=queue_name(), home=start_home)
    dbsync("sender", "--config", str(conf0), "--until-idle", env=env)
    generate(admin, seed=11, patients=15, mutations=0.3)
    results = []
    for mode in ("sender", "pipe"):
        dest = queue_name()
        home = tmp_path / mode
        shutil.copytree(start_home, home)
        workdir = tmp_path / f"work-{mode}"
        workdir.mkdir()
        conf, env = sender_config(workdir, repl, broker_settings, destination=dest, home=home, server_id=4242)
        if mode == "sender":
            dbsync("sender", "--config", str(conf), "--until-idle", env=env)
        else:
            events = dbsync("capture", "--config", str(conf), "--until-idle", env=env).stdout
            messages = dbsync("enrich", "--config", str(conf), env=env, stdin=events).stdout
            dbsync("publish", "--config", str(conf), env=env, stdin=messages)
        got = drain(broker_settings, dest)
        results.append([{k: v for k, v in m.items() if k != "sent"} for m in got])
    assert len(results[0]) > 500
    assert results[0] == results[1]


@pytest.mark.lane2
def test_large_transaction_and_resume_inside_it(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = queue_name()
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=1000)
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    drain(broker_settings, dest, idle=1)
    # one transaction for the whole create phase, multi-row INSERTs of 1000 rows each
    truth = generate(admin, seed=3, patients=700, mutations=0.0, transaction_rows=0, batch_rows=1000)
    created = truth.stats["rows_created"]
    assert created >= 50_000, created
    assert truth.stats["transactions"] == 1
    before = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)["lag"]
    dbsync("sender", "--config", str(conf), "--max-events", "12345", env=env)
    checkpoint = _checkpoint(tmp_path / "home-site1")
    assert checkpoint["row"] == 12344  # inside the transaction
    # seen: lag.bytes frozen for the whole transaction; it moves with the rows confirmed inside it
    inside = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)
    assert inside["checkpoint"]["read_pos"] > inside["checkpoint"]["pos"], inside["checkpoint"]
    assert 0 < inside["lag"]["bytes"] < before["bytes"], (before, inside["lag"])
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    messages = drain(broker_settings, dest)
    ids = [m["id"] for m in messages]
    assert len(ids) == len(set(ids)), "a row was sent twice across the restart"
    assert len(ids) == created
    state = final_state(messages)
    for table, rows in truth.tables.items():
        missing = [u for u in rows if (table, u) not in state]
        assert not missing, f"{table}: {len(missing)} rows not captured"


def _checkpoint(home: Path) -> dict:
    import sqlite3

    with sqlite3.connect(home / "state.sqlite") as conn:
        return orjson.loads(conn.execute("SELECT value FROM checkpoint WHERE name='binlog'").fetchone()[0])
