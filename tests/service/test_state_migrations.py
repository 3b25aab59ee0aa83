"""State migrations run again after a crash at any statement, and never move data under a running receiver (review
finding 1; finding 5: an empty body is not copied). Checked with SQL of its own against a real central."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central

from dbsync_cli import exitcodes
from dbsync_cli.receiver import state
from dbsync_cli.sql import quote

#: (message id, entity key, body, reason) of entries a receiver before migration 14 parked
LEGACY = [
    ("site1:a", "person:1", b'{"v":1,"id":"site1:a"}', "missing reference"),
    ("site1:b", None, b'{"v":1,"id":"site1:b","bad":true}', "malformed"),
    ("site1:c", "person:2", b"", "cut short"),  # a delivery cut short: no body worth keeping (finding 5)
    ("site1:d", "person:1", b'{"v":1,"id":"site1:d"}', "waiting behind entry 1"),
]


def _legacy_state(conn: Any, schema: str) -> dict[str, int]:
    """A state schema at version 13 with parked entries, their bodies in the queue as then."""
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
    assert state.migrate(conn, schema, upto=13) == 13
    found = {}
    with conn.cursor() as cur:
        for message_id, key, body, reason in LEGACY:
            cur.execute(f"INSERT INTO `{schema}`.receiver_retry_queue (message_id, site, table_name, entity_key, "
                        "body, reason, attempts, date_created) VALUES (%s, 'site1', 'person', %s, %s, %s, 1, %s)",
                        (message_id, key, body, reason, dt.datetime(2024, 1, 1)))
            found[message_id] = int(cur.lastrowid)
    conn.commit()
    return found


def _rows(conn: Any, statement: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = list(cur.fetchall())
    conn.commit()
    return rows


def _check_upgraded(conn: Any, schema: str, ids: dict[str, int]) -> None:
    assert _rows(conn, f"SELECT MAX(version) FROM `{schema}`.schema_version") == [(len(state.MIGRATIONS),)]
    assert len(state.MIGRATIONS) >= 15
    columns = {r[0] for r in _rows(conn, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                                         f"'{schema}' AND TABLE_NAME = 'receiver_retry_queue'")}
    assert "body" not in columns and {"kind", "next_attempt", "cause", "entity_uuid", "reason_code"} <= columns
    entries = dict(_rows(conn, f"SELECT message_id, kind FROM `{schema}`.receiver_retry_queue"))
    assert entries == {"site1:a": "transient", "site1:b": "permanent", "site1:c": "transient",
                       "site1:d": "waiting"}
    bodies = dict(_rows(conn, f"SELECT id, body FROM `{schema}`.receiver_retry_body"))
    assert bodies == {ids[m]: body for m, _key, body, _reason in LEGACY if body}


@pytest.mark.parametrize("number", [14, 15, 17])
def test_a_migration_stopped_after_any_statement_completes_when_run_again(openmrs_db, number: int) -> None:
    db = openmrs_db("central")
    schema = f"{db.database}_state"[:64]
    steps = state.MIGRATIONS[number - 1]
    with db.connect(autocommit=False) as conn:
        for done in range(len(steps) + 1):  # killed after `done` statements (0: before any; all: before the version)
            ids = _legacy_state(conn, schema)
            if number > 14:
                assert state.migrate(conn, schema, upto=number - 1) == number - 1
            with conn.cursor() as cur:
                for step in steps[:done]:
                    state.run_step(cur, quote(schema), schema, step)
            conn.commit()
            assert _rows(conn, f"SELECT MAX(version) FROM `{schema}`.schema_version") == [(number - 1,)]
            assert state.migrate(conn, schema) == len(state.MIGRATIONS), done
            _check_upgraded(conn, schema, ids)
            assert state.migrate(conn, schema) == len(state.MIGRATIONS)  # and once more: nothing to do
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")


def test_a_data_moving_migration_is_refused_while_another_receiver_holds_the_applier_lock(
        openmrs_db, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        with central.db.connect(autocommit=False) as conn:
            ids = _legacy_state(conn, central.schema)
        with central.db.connect() as old_receiver, old_receiver.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (f"dbsync:{central.schema}",))  # as every receiver's applier
            assert cur.fetchone() == (1,)
            for command in (["receiver", "--idle-exit", "1"], ["sites", "list"], ["conflicts", "list"]):
                run = dbsync(*command, "--config", str(central.config), env=central.env, check=False, timeout=60)
                err = run.stderr.decode()
                assert run.returncode == exitcodes.ANOTHER_RECEIVER, (command, err)
                lines = err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("dbsync: ") and "stop the running receiver" in err
                assert "Traceback" not in err
            # nothing moved: still version 13, bodies in the queue
            assert central.sql(f"SELECT MAX(version) FROM `{central.schema}`.schema_version") == [(13,)]
            assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE body <> ''") \
                == [(3,)]
        # the old receiver stopped: the upgrade goes through
        dbsync("sites", "list", "--config", str(central.config), env=central.env)
        with central.db.connect(autocommit=False) as conn:
            _check_upgraded(conn, central.schema, ids)
    finally:
        drop_schema(central)
