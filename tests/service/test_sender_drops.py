"""Issue 25, case 7: what the sender reads and does not send is counted per reason, durably, in `dbsync status`.

Before, a row over `broker.max_message_bytes` was only logged (and kept in `<home>/rejected/`), and an event enrich
could not complete (a subclass row whose parent row is gone, a row deleted since) was dropped with a log line:
counted nowhere. The counts live in the sender's state beside the checkpoint that moves past them, so the combined
sender and the `capture | enrich | publish` pipe count the same, and a second run counts nothing twice.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import orjson
import pytest
from helpers import dbsync, sender_config

from devtools.bench import delete_queues

pytestmark = [pytest.mark.slow]

_QUEUES: list[str] = []


@pytest.fixture(autouse=True)
def _delete_queues(services):
    yield
    names, _QUEUES[:] = list(_QUEUES), []
    with contextlib.suppress(Exception):
        delete_queues(services.artemis.settings(), names, timeout=30)


def _config(tmp_path: Path, repl, broker, name: str) -> tuple[Path, dict[str, str]]:
    destination = f"test.drops.{uuidlib.uuid4().hex[:10]}"
    _QUEUES.append(destination)
    work = tmp_path / name
    work.mkdir()
    conf, env = sender_config(work, repl, broker, destination=destination, home=tmp_path / f"home-{name}")
    # a small limit, so that one obs with a long text is over it (an envelope's room is 11,024 bytes)
    conf.write_text(conf.read_text().replace("[broker]\n", "[broker]\nmax_message_bytes = 20000\n"
                                                           "message_bytes = 8000\n"))
    return conf, env


def _status(conf: Path, env: dict[str, str]) -> dict:
    run = dbsync("status", "--json", "--config", str(conf), env=env, check=False)
    return orjson.loads(run.stdout)


def _pipe(conf: Path, env: dict[str, str]) -> None:
    """capture --until-idle | enrich | publish, as three processes."""
    cmd = [sys.executable, "-m", "dbsync_cli"]
    capture = subprocess.Popen([*cmd, "capture", "--until-idle", "--config", str(conf)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    enrich = subprocess.Popen([*cmd, "enrich", "--config", str(conf)], env=env, stdin=capture.stdout,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert capture.stdout is not None and enrich.stdout is not None
    capture.stdout.close()
    publish = subprocess.run([*cmd, "publish", "--config", str(conf)], env=env, stdin=enrich.stdout,
                             capture_output=True, timeout=300)
    enrich.stdout.close()
    assert capture.wait(60) == 0 and enrich.wait(60) == 0
    assert publish.returncode == 0, publish.stderr.decode()[-3000:]


def _copy_state(src: Path, dst: Path) -> None:
    """The same checkpoint in another home (SQLite's backup: WAL included)."""
    dst.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src / "state.sqlite") as a, sqlite3.connect(dst / "state.sqlite") as b:
        a.backup(b)
    for extra in ("schema_history.sqlite",):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)


def test_rows_the_sender_does_not_send_are_counted_per_reason(openmrs_db, services, tmp_path,
                                                              broker_settings) -> None:
    admin = openmrs_db("site1")
    repl = services["site1"].repl.with_database(admin.database)
    conf, env = _config(tmp_path, repl, broker_settings, "combined")
    pipe_conf, pipe_env = _config(tmp_path, repl, broker_settings, "pipe")
    dbsync("sender", "--until-idle", "--config", str(conf), env=env)  # the initial snapshot
    assert not any((_status(conf, env).get("dropped") or {}).values())
    _copy_state(tmp_path / "home-combined", tmp_path / "home-pipe")  # the pipe resumes from the same checkpoint

    def sql(statement: str, args: tuple = ()) -> list[tuple]:
        with admin.connect() as conn, conn.cursor() as cur:
            cur.execute("SET foreign_key_checks = 0")
            cur.execute(statement, args)
            return list(cur.fetchall())

    def person() -> int:
        sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, NOW(), UUID())")
        return sql("SELECT MAX(person_id) FROM person")[0][0]

    # 1. a row over the limit (an obs with 30 kB of text): publish keeps it in <home>/rejected/, never sends it
    big = person()
    (concept,) = sql("SELECT concept_id FROM concept ORDER BY concept_id LIMIT 1")[0]
    sql("INSERT INTO obs (person_id, concept_id, obs_datetime, value_text, creator, date_created, uuid) "
        "VALUES (%s, %s, NOW(), %s, 1, NOW(), UUID())", (big, concept, "x" * 30_000))
    big_uuid = sql("SELECT uuid FROM obs WHERE person_id = %s", (big,))[0][0]
    # 2. a patient whose person row is gone (deleted with foreign key checks off): enrich cannot complete it
    orphan = person()
    sql("INSERT INTO patient (patient_id, creator, date_created) VALUES (%s, 1, NOW())", (orphan,))
    dbsync("sender", "--until-idle", "--config", str(conf), env=env)
    _copy_state(tmp_path / "home-combined", tmp_path / "home-pipe")
    sql("DELETE FROM person WHERE person_id = %s", (orphan,))
    sql("UPDATE patient SET date_changed = NOW() WHERE patient_id = %s", (orphan,))
    # 3. a row created and deleted before the sender read it, whose reference is gone too (its after image cannot
    # be sent: the person it names has no uuid any more), so enrich reads it again: the create is superseded by the
    # delete. (The person's own create goes out from its after image, followed by its delete.)
    gone = person()
    sql("INSERT INTO person_name (person_id, given_name, creator, date_created, preferred, uuid) "
        "VALUES (%s, 'Gone', 1, NOW(), 1, UUID())", (gone,))
    sql("DELETE FROM person_name WHERE person_id = %s", (gone,))
    sql("DELETE FROM person WHERE person_id = %s", (gone,))

    # the obs went out in step 2 already: send it again by changing it
    sql("UPDATE obs SET comments = 'again' WHERE person_id = %s", (big,))
    dbsync("sender", "--until-idle", "--config", str(conf), env=env)

    report = _status(conf, env)
    dropped = report.get("dropped")
    assert dropped is not None, f"sender status has no 'dropped': {sorted(report)}"
    counted = {reason: n for reason, n in dropped.items() if n}
    # too_large twice: the obs's create (step 2's run) and its update; the patient update; the person_name's create
    assert counted == {"too_large": 2, "parent_gone": 1, "row_deleted": 1}, dropped
    last = report["dropped_last"]["too_large"]
    assert last["table"] == "obs" and last["uuid"] == big_uuid, last
    assert (tmp_path / "home-combined" / "rejected").is_dir()
    assert any(p["check"] == "dropped" and p["state"] == "WARNING" for p in report["problems"]), report["problems"]

    # a second run re-reads nothing it confirmed: nothing is counted twice
    dbsync("sender", "--until-idle", "--config", str(conf), env=env)
    assert {r: n for r, n in _status(conf, env)["dropped"].items() if n} == counted

    # the pipe, from a copy of the state after step 2's run (the obs's create counted: too_large 1), counts the
    # same events as the combined sender: the patient update, the person_name created and deleted, the obs's update
    _pipe(pipe_conf, pipe_env)
    piped = {r: n for r, n in _status(pipe_conf, pipe_env)["dropped"].items() if n}
    assert piped == counted, piped

    # the table of `dbsync status` shows them
    table = dbsync("status", "--config", str(conf), env=env, check=False).stdout.decode()
    assert "too_large" in table and "parent_gone" in table, table
