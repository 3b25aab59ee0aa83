"""What the verify service tests share (tests/service/test_verify*.py): a site and central over one broker
destination, central's running receiver, and `dbsync verify` run as a site's operator runs it."""

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

#: a new obs (its own uuid) copied from the obs with the given uuid, with the given value_text
COPY_OBS = ("INSERT INTO obs (person_id, concept_id, encounter_id, obs_datetime, location_id, value_text, creator, "
            "date_created, voided, status, uuid) SELECT person_id, concept_id, encounter_id, obs_datetime, location_id, "
            "%s, creator, date_created, 0, status, UUID() FROM obs WHERE uuid = %s")


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
