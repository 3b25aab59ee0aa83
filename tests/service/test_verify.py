"""`dbsync verify` and `--repair` with real MariaDB + Artemis: the site asks, the running receiver answers."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import Central, Site, drop_schema, make_central, make_site

from dbsync_cli.broker_queue import queue_stats
from devtools.workload.generator import generate


@pytest.fixture
def pair(openmrs_db, services, tmp_path, broker_settings) -> Iterator[tuple[Central, Site]]:
    destination = f"test.verify.{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    site.env["DBSYNC_BROKER__DESTINATION"] = destination
    yield central, site
    drop_schema(central)


@pytest.fixture
def receiver(pair) -> Iterator[subprocess.Popen[bytes]]:
    central, _site = pair
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "receiver", "--config", str(central.config)],
                            env=central.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def verify(site: Site, *args: str, code: int | None = None) -> dict[str, Any]:
    run = dbsync("verify", "--config", str(site.config), "--json", "--settle", "1", *args, env=site.env,
                 check=False, timeout=600)
    assert run.returncode in ((0, 1) if code is None else (code,)), run.stderr.decode()[-3000:]
    return orjson.loads(run.stdout)


def found(report: dict[str, Any], kind: str) -> set[tuple[str, str]]:
    return {(table, uuid) for table, t in report["tables"].items() for uuid, k in t["rows"].items() if k == kind}


def sync(central: Central, site: Site, broker) -> None:
    """The site's changes since its checkpoint through the real sender; the running receiver applies them."""
    dbsync("sender", "--config", str(site.config), "--until-idle", env=site.env)
    wait_applied(central, broker)


def wait_applied(central: Central, broker, timeout: float = 120) -> None:
    """The running receiver has applied everything: its queue on the broker and its inbox stay empty a while."""
    destination = central.config.read_text().split('destination = "')[1].split('"')[0]
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        waiting = queue_stats(broker, destination).messages
        pending = central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox")[0][0]
        quiet = quiet + 1 if waiting == pending == 0 else 0
        if quiet >= 4:
            return
        time.sleep(0.5)
    raise AssertionError("the receiver did not apply everything in time")


def test_verify_reports_exactly_what_differs_and_repair_mends_it(pair, receiver, broker_settings) -> None:
    central, site = pair
    generate(site.admin, seed=31, patients=25, mutations=0.2)
    sync(central, site, broker_settings)
    clean = verify(site, code=0)
    assert clean["differences"] == 0
    assert clean["tables"]["obs"]["site_rows"] == clean["tables"]["obs"]["matched"] > 100
    assert clean["bytes_sent"] < 0.05 * sum(t["site_rows"] for t in clean["tables"].values()) * 1000

    obs = [r[0] for r in site.sql("SELECT uuid FROM obs WHERE obs_group_id IS NULL AND uuid NOT IN "
                                  "(SELECT o.uuid FROM obs o JOIN obs g ON g.obs_group_id = o.obs_id) "
                                  "ORDER BY obs_id LIMIT 6")]
    names = [r[0] for r in site.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 2")]
    # at central: one obs deleted, one name changed (no date: not a central edit the conflict rule keeps)
    central.sql("DELETE FROM obs WHERE uuid = %s", (obs[0],))
    central.sql("UPDATE person_name SET family_name = 'Tampered' WHERE uuid = %s", (names[0],))
    # at the site, behind the sender's back (no binlog): one obs deleted, one obs value changed, one obs added
    with site.admin.connect() as conn, conn.cursor() as cur:
        cur.execute("SET sql_log_bin = 0")
        cur.execute("DELETE FROM obs WHERE uuid = %s", (obs[1],))
        cur.execute("UPDATE obs SET comments = 'changed at the site' WHERE uuid = %s", (obs[2],))
        cur.execute("INSERT INTO obs (person_id, concept_id, encounter_id, obs_datetime, location_id, value_text, "
                    "creator, date_created, voided, status, uuid) SELECT person_id, concept_id, encounter_id, "
                    "obs_datetime, location_id, 'added behind the sender', creator, date_created, 0, status, UUID() "
                    "FROM obs WHERE uuid = %s", (obs[3],))
        cur.execute("SELECT uuid FROM obs ORDER BY obs_id DESC LIMIT 1")
        added = cur.fetchone()[0]
    report = verify(site, code=1)
    assert found(report, "missing") == {("obs", obs[0]), ("obs", added)}
    assert found(report, "different") == {("person_name", names[0]), ("obs", obs[2])}
    assert found(report, "extra") == {("obs", obs[1])}
    assert report["differences"] == 5
    assert report["tables"]["obs"]["matched"] == report["tables"]["obs"]["site_rows"] - 3

    status = dbsync("verify", "--status", "--json", "--config", str(central.config), env=central.env)
    stored = orjson.loads(status.stdout)
    assert [(r["site"], r["differences"], r["totals"]["missing"], r["totals"]["extra"]) for r in stored] == [
        ("site1", 5, 2, 1)]

    repaired = verify(site, "--repair", code=1)
    assert repaired["repaired"] == {"rows_sent": 4, "deletes_sent": 1}
    wait_applied(central, broker_settings)
    after = verify(site, code=0)
    assert after["differences"] == 0, after
    assert central.sql("SELECT family_name FROM person_name WHERE uuid = %s", (names[0],)) != [("Tampered",)]
    assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid IN (%s, %s)", (obs[0], added)) == [(2,)]
    assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid = %s", (obs[1],)) == [(0,)]


def test_a_central_edit_is_reported_and_repair_parks_it_as_a_conflict(pair, receiver, broker_settings) -> None:
    central, site = pair
    generate(site.admin, seed=32, patients=5, mutations=0.0)
    sync(central, site, broker_settings)
    name = site.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0][0]
    central.sql("UPDATE person_name SET family_name = 'Central', date_changed = NOW() WHERE uuid = %s", (name,))
    report = verify(site, "--repair", code=1)
    assert found(report, "different") == {("person_name", name)}
    assert report["tables"]["person_name"]["edited_at_central"] == 1
    wait_applied(central, broker_settings)
    assert central.sql("SELECT family_name FROM person_name WHERE uuid = %s", (name,)) == [("Central",)]
    parked = central.sql(f"SELECT entity_uuid FROM `{central.schema}`.receiver_conflict_queue WHERE resolved = 0")
    assert parked == [(name,)]


def test_verify_without_a_receiver_says_so(pair) -> None:
    _central, site = pair
    run = dbsync("verify", "--config", str(site.config), "--timeout", "3", env=site.env, check=False)
    assert run.returncode == 17
    err = run.stderr.decode()
    assert "no answer from central" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
