"""Complex obs files through the composable commands: `capture | enrich | publish` at the site and `consume | apply`
at central carry the files `dbsync sender` and `dbsync receiver` carry (the pipe behaves like the combined command),
and a bounded `dbsync sender --until-idle` sends the files due before it exits.

The checks read central's folder and tables directly (pymysql, hashlib): no dbsync code judges dbsync."""

from __future__ import annotations

import hashlib
import os
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from helpers import dbsync
from receiver_helpers import Central, Site, make_central, make_site, plain_sql

pytestmark = [pytest.mark.service]



def _obs_with_file(site: Site, folder: Path, name: str, size: int) -> tuple[str, bytes]:
    """An obs naming a file OpenMRS wrote into the site's folder."""
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    site.sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, NOW(), UUID())")
    person = site.sql("SELECT MAX(person_id) FROM person")[0][0]
    concept = site.sql("SELECT concept_id FROM concept ORDER BY concept_id LIMIT 1")[0][0]
    uuid = str(uuidlib.uuid4())
    site.sql("INSERT INTO obs (person_id, concept_id, obs_datetime, value_complex, creator, date_created, voided, "
             "status, uuid) VALUES (%s, %s, NOW(), %s, 1, NOW(), 0, 'FINAL', %s)",
             (person, concept, f"image/png|{name}", uuid))
    return uuid, data


def _at_central(central: Central, folder: Path, uuid: str, name: str, data: bytes) -> None:
    """The obs row is at central and the file beside it holds the site's bytes (after `apply --retry` if it
    waited for its file)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = plain_sql(central.db, "SELECT value_complex FROM obs WHERE uuid = %s", (uuid,))
        path = folder / name
        if row and path.is_file():
            assert row[0][0] == f"image/png|{name}"
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
            return
        dbsync("apply", "--config", str(central.config), "--retry", env=central.env)
        time.sleep(0.5)
    raise AssertionError(f"obs {uuid} with {name} not at central: row {row}, file {path.is_file()}")


def test_the_pipe_and_a_bounded_sender_carry_complex_obs_files(openmrs_db, services, tmp_path,
                                                                broker_settings) -> None:
    destination = f"test.cobspipe.{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    folders = {name: tmp_path / f"obs-{name}" for name in ("site1", "central")}
    for folder in folders.values():
        folder.mkdir()
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    site.env.update({"DBSYNC_BROKER__DESTINATION": destination,
                     "DBSYNC_SENDER__COMPLEX_OBS_DIR": str(folders["site1"])})
    central.env["DBSYNC_RECEIVER__COMPLEX_OBS_DIR"] = str(folders["central"])
    conf = str(site.config)

    # the site's pipe, one command after another as a shell pipe runs them to the end
    piped, piped_data = _obs_with_file(site, folders["site1"], "pipe_scan.png", 150_000)
    events = dbsync("capture", "--config", conf, "--until-idle", env=site.env).stdout
    messages = dbsync("enrich", "--config", conf, env=site.env, stdin=events).stdout
    dbsync("publish", "--config", conf, env=site.env, stdin=messages)
    # central's pipe: consume runs the file lane beside the rows
    inbox = dbsync("consume", "--config", str(central.config), "--idle-exit", "3", env=central.env).stdout
    central.apply(inbox, check=False)
    _at_central(central, folders["central"], piped, "pipe_scan.png", piped_data)

    # the combined command, bounded: the files due when its chain ends are sent before it exits
    bounded, bounded_data = _obs_with_file(site, folders["site1"], "bounded_scan.png", 70_000)
    dbsync("sender", "--config", conf, "--until-idle", env=site.env)
    inbox = dbsync("consume", "--config", str(central.config), "--idle-exit", "3", env=central.env).stdout
    central.apply(inbox, check=False)
    _at_central(central, folders["central"], bounded, "bounded_scan.png", bounded_data)
