"""Issue 27 items 7-9, `dbsync verify` as seen in the field, with real MariaDB + Artemis: a column only central has
(an OpenMRS upgrade done central-first), rows central added that hang off a site's rows, and a repair that must
park central's edits and leave a true status behind."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from helpers import dbsync
from verify_helpers import COPY_OBS, found, pair, sync, verify, wait_applied

from devtools.workload.generator import generate

pytestmark = pytest.mark.lane2
__all__ = ["pair"]


def start_receiver(central) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dbsync_cli", "receiver", "--config", str(central.config)],
                            env=central.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def stored(central) -> dict:
    (run,) = orjson.loads(dbsync("verify", "--status", "--json", "--config", str(central.config),
                                 env=central.env).stdout)
    return run


def site_status(central) -> dict:
    health = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                 check=False).stdout)
    (row,) = [s for s in health["sites"] if s["identifier"] == "site1"]
    return {"verify": row["verify"], "problems": [p["message"] for p in health["problems"] if p["check"] == "verify"]}


def test_verify_compares_the_columns_both_sides_have_and_names_the_others_once(pair, broker_settings) -> None:
    """Item 7: a column central has and the site lacks made every row of its table differ for ever, and --repair
    sent the whole table each run. Now both sides digest the columns both have: 0 differences, nothing re-sent,
    the columns named once (report, --json, stored result), and a real difference in that table still found."""
    central, site = pair
    receiver = start_receiver(central)
    try:
        generate(site.admin, seed=71, patients=8, mutations=0.0)
        sync(central, site, broker_settings)
    finally:
        stop(receiver)
    # an OpenMRS upgrade done central-first adds a column (with a value in every row); one the site has alone
    central.sql("ALTER TABLE person_name ADD COLUMN upgrade_added VARCHAR(20) NOT NULL DEFAULT 'new'")
    site.sql("ALTER TABLE obs ADD COLUMN site_added INT NULL")
    site.sql("UPDATE obs SET site_added = 7")
    receiver = start_receiver(central)  # the receiver reads the schema at start (docs: restart after an upgrade)
    try:
        report = verify(site, code=0)
        assert report["differences"] == 0, {t: r["rows"] for t, r in report["tables"].items() if r["rows"]}
        names = report["tables"]["person_name"]
        assert names["columns_only_at_central"] == ["upgrade_added"] and names["columns_only_at_site"] == []
        assert report["tables"]["obs"]["columns_only_at_site"] == ["site_added"]
        assert names["matched"] == names["site_rows"] - names["not_owned"] > 0
        assert not any(t["columns_only_at_site"] or t["columns_only_at_central"]
                       for n, t in report["tables"].items() if n not in ("obs", "person_name"))
        text = dbsync("verify", "--config", str(site.config), "--settle", "1", env=site.env).stdout.decode()
        assert text.count("upgrade_added") == 1 and "person_name: compared without upgrade_added only at central" \
            in " ".join(text.split()), text
        run = stored(central)
        assert run["tables"]["person_name"]["columns_only_at_central"] == ["upgrade_added"]
        assert run["tables"]["obs"]["columns_only_at_site"] == ["site_added"] and run["differences"] == 0
        # nothing to mend: the repair re-sends nothing
        repaired = verify(site, "--repair", code=0)
        assert repaired["repaired"]["rows_sent"] == 0 and repaired["repaired"]["deletes_sent"] == 0
        # a difference in a column both have is still seen (and only that row)
        name = site.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0][0]
        with site.admin.connect() as conn, conn.cursor() as cur:
            cur.execute("SET sql_log_bin = 0")
            cur.execute("UPDATE person_name SET family_name = 'Behind the sender' WHERE uuid = %s", (name,))
        assert found(verify(site, code=1), "different") == {("person_name", name)}
    finally:
        stop(receiver)


def test_rows_added_at_central_under_a_site_s_rows_are_reported_and_deleted_only_when_confirmed(
        pair, broker_settings) -> None:
    """Item 8: an obs central holds under a site's patient and encounter, that no site sent, was neither reported
    nor removed. It is central's own by the rules: reported as `added_at_central` (table, --json, stored, status;
    not a difference), kept by `--repair` with one line saying how to delete it, deleted with --delete-added."""
    central, site = pair
    receiver = start_receiver(central)
    try:
        generate(site.admin, seed=72, patients=6, mutations=0.0)
        sync(central, site, broker_settings)
        base = site.sql("SELECT uuid FROM obs WHERE obs_group_id IS NULL ORDER BY obs_id LIMIT 2")
        for n, (uuid,) in enumerate(base):
            central.sql(COPY_OBS, (f"added at central {n}", uuid))
        added = {r[0] for r in central.sql("SELECT uuid FROM obs WHERE value_text LIKE 'added at central %%'")}
        assert len(added) == 2
        report = verify(site, code=0)
        assert found(report, "added_at_central") == {("obs", u) for u in added}
        assert report["tables"]["obs"]["added_at_central"] == 2 and report["differences"] == 0
        assert stored(central)["tables"]["obs"]["added_at_central"] == 2
        assert site_status(central)["verify"]["added_at_central"] == 2

        run = dbsync("verify", "--config", str(site.config), "--repair", "--settle", "1", env=site.env, check=False)
        err = run.stderr.decode()
        assert run.returncode == 0, err[-3000:]
        lines = [line for line in err.splitlines() if "not deleted" in line]
        assert len(lines) == 1 and "2 row(s) added at central" in lines[0] and "--delete-added" in lines[0], err
        assert central.sql("SELECT COUNT(*) FROM obs WHERE value_text LIKE 'added at central %%'") == [(2,)]

        deleted = verify(site, "--repair", "--delete-added", code=0)
        assert deleted["repaired"]["added_deleted"] == 2 and not found(deleted, "added_at_central")
        assert central.sql("SELECT COUNT(*) FROM obs WHERE value_text LIKE 'added at central %%'") == [(0,)]
        assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid IN (%s, %s)", (base[0][0], base[1][0])) == [(2,)]
        assert site_status(central)["verify"]["added_at_central"] == 0
    finally:
        stop(receiver)


def test_repair_parks_undated_central_edits_and_leaves_a_true_status(pair, broker_settings) -> None:
    """Item 9: `--repair` overwrote rows verify had flagged "edited at central" when central's edit left the dates
    alone: an obs (no date_changed column), a subclass row (patient), a name edited without date_changed. It parks
    them now; and the site's status, which kept "the last verify found N rows that differ" after the repair mended
    them, says what is true once the repair has been applied: only the parked rows differ."""
    central, site = pair
    receiver = start_receiver(central)
    try:
        generate(site.admin, seed=73, patients=6, mutations=0.0)
        sync(central, site, broker_settings)
        obs = [r[0] for r in site.sql("SELECT uuid FROM obs WHERE obs_group_id IS NULL AND obs_id NOT IN (SELECT "
                                      "obs_group_id FROM obs WHERE obs_group_id IS NOT NULL) ORDER BY obs_id LIMIT 4")]
        name = site.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0][0]
        patient = site.sql("SELECT p.uuid FROM person p JOIN patient pa ON pa.patient_id = p.person_id "
                           "ORDER BY p.person_id DESC LIMIT 1")[0][0]
        # central's undated edits
        central.sql("UPDATE obs SET comments = 'edited at central' WHERE uuid = %s", (obs[0],))
        central.sql("UPDATE person_name SET family_name = 'Central' WHERE uuid = %s", (name,))
        central.sql("UPDATE patient pa JOIN person p ON p.person_id = pa.patient_id SET pa.allergy_status = "
                    "'Central' WHERE p.uuid = %s", (patient,))
        # and rows central lost, which the repair mends
        central.sql("DELETE FROM obs WHERE uuid IN (%s, %s, %s)", tuple(obs[1:]))
        report = verify(site, code=1)
        assert report["differences"] == 6
        assert {k for t in report["tables"].values() for k in t["rows"]} >= {obs[0], name, patient}
        assert sum(t["edited_at_central"] for t in report["tables"].values()) == 3
        assert site_status(central)["verify"]["differences"] == 6

        repaired = verify(site, "--repair", code=1)
        assert {k: repaired["repaired"][k] for k in ("rows_sent", "mended", "held_at_central", "not_applied")} == {
            "rows_sent": 6, "mended": 3, "held_at_central": 3, "not_applied": 0}, repaired["repaired"]
        assert found(repaired, "different") == {("obs", obs[0]), ("person_name", name), ("patient", patient)}
        assert repaired["found"]["obs"]["missing"] == 3 and repaired["tables"]["obs"]["missing"] == 0
        # central kept its edits, parked as conflicts
        assert central.sql("SELECT comments FROM obs WHERE uuid = %s", (obs[0],)) == [("edited at central",)]
        assert central.sql("SELECT family_name FROM person_name WHERE uuid = %s", (name,)) == [("Central",)]
        assert central.sql("SELECT pa.allergy_status FROM patient pa JOIN person p ON p.person_id = pa.patient_id "
                           "WHERE p.uuid = %s", (patient,)) == [("Central",)]
        parked = central.sql(f"SELECT table_name, entity_uuid FROM `{central.schema}`.receiver_conflict_queue "
                             "WHERE resolved = 0")
        assert set(parked) == {("obs", obs[0]), ("person_name", name), ("patient", patient)}
        assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid IN (%s, %s, %s)", tuple(obs[1:])) == [(3,)]
        # the stored result and the status are the figures after the repair, not before it
        status = site_status(central)
        assert status["verify"]["differences"] == 3 and status["verify"]["state"] == "repaired"
        assert status["problems"] and all("found 3 row(s)" in p for p in status["problems"]), status
        wait_applied(central, broker_settings)
        assert verify(site, code=1)["differences"] == 3
    finally:
        stop(receiver)
