"""Issue 27 item 10: sync by file for a clinic with no network. `dbsync export --to FILE` at the site, `dbsync import
FILE` at central while the receiver runs for the other sites; a bundle carried twice is applied once; the live
sender later sends nothing the bundle carried; a bundle not signed by the site's recorded key is refused whole.

The checks read the databases and the broker's queue, not dbsync's own figures."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import Central, Site, drop_schema, make_central, make_site

from devtools.workload.generator import generate

pytestmark = pytest.mark.lane2

#: tables whose rows the workload writes (person and its names, encounters, obs)
TABLES = ("person", "person_name", "patient_identifier", "encounter", "obs")


@pytest.fixture
def clinics(openmrs_db, services, tmp_path, broker_settings) -> Iterator[tuple[Central, Site, Site]]:
    """Central with a running receiver; site1 carries its changes by file, site2 syncs live over the broker."""
    destination = f"test.bundle.{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"), destination=destination)
    site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
    site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
    for site in (site1, site2):
        site.env["DBSYNC_BROKER__DESTINATION"] = destination
        site.env["DBSYNC_BROKER__BATCH_MESSAGES"] = "40"  # many batches: an export can be cut between two
    receiver = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "receiver", "--config", str(central.config)],
                                env=central.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield central, site1, site2
    receiver.terminate()
    try:
        receiver.wait(timeout=30)
    except subprocess.TimeoutExpired:
        receiver.kill()
    drop_schema(central)


def uuids(db: Any, table: str) -> set[str]:
    return {u.lower() for (u,) in db.sql(f"SELECT uuid FROM `{table}`")}


def register_key(central: Central, site: Site) -> str:
    key = dbsync("export", "--public-key", "--config", str(site.config), env=site.env).stdout.decode().strip()
    assert key.startswith("ed25519:"), key
    dbsync("sites", "update", "site1", "--public-key", key, "--config", str(central.config), env=central.env)
    return key


def import_file(central: Central, path: Path, *, code: int = 0) -> tuple[dict[str, Any], str]:
    run = dbsync("import", str(path), "--wait", "180", "--json", "--config", str(central.config), env=central.env,
                 check=False, timeout=300)
    assert run.returncode == code, (run.returncode, run.stderr.decode()[-2000:])
    return (orjson.loads(run.stdout) if code == 0 else {}), run.stderr.decode()


def messages_applied(central: Central, site: str) -> int:
    rows = central.sql(f"SELECT COALESCE(SUM(messages), 0) FROM `{central.schema}`.receiver_sync_status s JOIN "
                       f"`{central.schema}`.site_info i ON i.id = s.site_id WHERE i.identifier = %s", (site,))
    return int(rows[0][0])


def test_a_clinic_syncs_by_file_twice_applied_once_while_central_serves_a_live_site(clinics, tmp_path) -> None:
    central, site1, site2 = clinics
    register_key(central, site1)
    generate(site1.admin, seed=91, patients=25, mutations=0.3)
    site1.sql("DELETE FROM obs ORDER BY obs_id DESC LIMIT 3")  # deletes travel by file too
    bundle = tmp_path / "site1-week1.dbsync"
    out = orjson.loads(dbsync("export", "--to", str(bundle), "--json", "--config", str(site1.config),
                              env=site1.env).stdout)
    assert out["rows"] > 500 and bundle.exists() and not Path(str(bundle) + ".part").exists(), out

    live = threading.Thread(target=lambda: (generate(site2.admin, seed=92, patients=15, mutations=0.2), dbsync(
        "sender", "--config", str(site2.config), "--until-idle", env=site2.env)))
    live.start()  # the receiver serves site2 from the broker meanwhile
    first, _ = import_file(central, bundle)
    applied = messages_applied(central, "site1")
    second, _ = import_file(central, bundle)  # the stick was carried twice
    live.join(300)
    assert first["stored"] == first["envelopes"] > 0 and first["waiting"] == 0, first
    assert applied >= first["rows"] - 10, (applied, first)  # (an update that changes nothing is skipped, counted)
    assert second["times"] == 2 and second["waiting"] == 0, second
    for table in TABLES:  # every site1 row is at central, the deleted obs are not
        assert uuids(site1, table) <= uuids(central, table), table
    person_names = {tuple(r) for r in site1.sql("SELECT uuid, given_name, family_name FROM person_name")}
    assert person_names <= {tuple(r) for r in central.sql("SELECT uuid, given_name, family_name FROM person_name")}
    assert uuids(site2, "obs") <= uuids(central, "obs")
    assert messages_applied(central, "site1") == applied  # the second import applied nothing again
    # the second copy's rows were recognised, not applied: counted as duplicates for site1 (never silent)
    skipped = central.sql(f"SELECT COALESCE(SUM(count), 0) FROM `{central.schema}`.receiver_skipped "
                          "WHERE site = 'site1' AND reason = 'duplicate'")[0][0]
    assert int(skipped) >= second["rows"], (skipped, second)

    # both ends say so in `dbsync status`
    central_status = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                         check=False).stdout)
    (row,) = [r for r in central_status["sites"] if r["identifier"] == "site1"]
    assert row["last_bundle"]["times"] == 2 and row["last_bundle"]["file"] == bundle.name, row
    site_status = orjson.loads(dbsync("status", "--json", "--config", str(site1.config), env=site1.env,
                                      check=False).stdout)
    assert site_status["exported"]["file"] == str(bundle) and site_status["export_part"] is None, site_status

    # the live sender starts later: it continues after the bundle and sends only what changed since
    site1.sql("UPDATE person_name SET family_name = 'After-the-bundle' ORDER BY person_name_id DESC LIMIT 1")
    sent = dbsync("sender", "--config", str(site1.config), "--until-idle", env=site1.env)
    assert b"sender: 1 messages confirmed" in sent.stderr, sent.stderr.decode()[-2000:]
    deadline = time.monotonic() + 120
    while not central.sql("SELECT 1 FROM person_name WHERE family_name = 'After-the-bundle'"):
        assert time.monotonic() < deadline, sent.stderr.decode()[-2000:]
        time.sleep(0.5)
    assert messages_applied(central, "site1") == applied + 1


def test_an_export_cut_short_resumes_and_a_bundle_of_another_key_or_damaged_is_refused(clinics, tmp_path) -> None:
    central, site1, _site2 = clinics
    generate(site1.admin, seed=93, patients=60, mutations=0.3)
    bundle = tmp_path / "site1.dbsync"
    part = Path(str(bundle) + ".part")
    export = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "export", "--to", str(bundle), "--json",
                               "--config", str(site1.config)], env=site1.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _part_rows(site1.home) < 200:  # some batches are on disk and recorded: cut it there
        assert export.poll() is None and time.monotonic() < deadline, export.communicate()[1].decode()[-2000:]
        time.sleep(0.02)
    export.send_signal(signal.SIGKILL)
    export.wait()
    assert part.exists() and not bundle.exists()
    out = orjson.loads(dbsync("export", "--to", str(bundle), "--json", "--config", str(site1.config),
                              env=site1.env).stdout)
    assert out["resumed"] is True and bundle.exists() and not part.exists(), out

    # no key recorded yet: refused whole, in one line, nothing stored
    _, err = import_file(central, bundle, code=20)
    assert "no public key is recorded for site 'site1'" in err and "Traceback" not in err, err
    other = tmp_path / "other-home"  # a key that is not site1's
    env = {**site1.env, "DBSYNC_HOME": str(other)}
    wrong = dbsync("export", "--public-key", "--config", str(site1.config), env=env).stdout.decode().strip()
    dbsync("sites", "update", "site1", "--public-key", wrong, "--config", str(central.config), env=central.env)
    _, err = import_file(central, bundle, code=20)
    assert "not signed by the key recorded for site 'site1'" in err, err
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox")[0][0] == 0

    register_key(central, site1)
    damaged = tmp_path / "damaged.dbsync"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    _, err = import_file(central, damaged, code=20)
    assert "damaged" in err, err
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox")[0][0] == 0

    result, _ = import_file(central, bundle)
    assert result["waiting"] == 0, result
    for table in TABLES:  # the resumed bundle holds every row: none lost at the cut
        assert uuids(site1, table) <= uuids(central, table), table
    # none twice: no row of the bundle was a duplicate of another (the cut batch was not kept beside its rewrite)
    assert central.sql(f"SELECT COALESCE(SUM(count), 0) FROM `{central.schema}`.receiver_skipped WHERE site = "
                       "'site1' AND reason = 'duplicate'")[0][0] == 0


def _part_rows(home: Path) -> int:
    try:
        with sqlite3.connect(home / "state.sqlite", timeout=1) as conn:
            row = conn.execute("SELECT value FROM checkpoint WHERE name = 'export_part'").fetchone()
    except sqlite3.Error:
        return 0
    return int(orjson.loads(row[0]).get("rows") or 0) if row else 0
