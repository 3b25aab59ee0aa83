"""`dbsync status` and scripts/check-dbsync against the real services.

A stopped broker is simulated by pointing the config at a closed port (127.0.0.1:1): the shared Artemis is never
stopped, other tests use it at the same time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from helpers import dbsync, drain
from receiver_helpers import make_central, make_site
from test_field_cases import publish_raw

from dbsync_cli.sender.checkpoint import CheckpointStore

ROOT = Path(__file__).resolve().parents[2]
CLOSED_BROKER = "stomp://127.0.0.1:1"
SENDER_FIELDS = {"role", "id", "state", "exit_code", "problems", "summary", "perfdata", "checkpoint", "lag", "rate",
                 "broker", "site_db", "checked_at"}
RECEIVER_FIELDS = {"role", "id", "state", "exit_code", "problems", "summary", "perfdata", "sites", "inbox",
                   "retry_queue", "conflicts", "rest", "broker", "central_db", "checked_at", "state_schema"}


def status(config: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    run = dbsync("status", "--json", "--config", str(config), *args, env=env, check=False)
    assert run.returncode in (0, 1, 2, 3), run.stderr.decode()
    assert run.stdout.strip(), run.stderr.decode()[-3000:]
    report = json.loads(run.stdout)
    assert report["exit_code"] == run.returncode
    assert report["state"] == {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}[run.returncode]
    return run.returncode, report


def checks(report: dict[str, Any]) -> dict[str, str]:
    return {p["check"]: p["state"] for p in report["problems"]}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    return make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))


def test_receiver_json_fields_ok(central) -> None:
    code, report = status(central.config, central.env)
    assert RECEIVER_FIELDS <= set(report)
    assert code == 0, report["problems"]
    assert report["role"] == "receiver" and report["id"] == "central"
    assert [s["identifier"] for s in report["sites"]] == ["site1", "site2"]
    assert report["sites"][0]["last_sync_date"] is None and report["sites"][0]["state"] == "OK"
    assert report["inbox"]["size"] == 0 and report["retry_queue"]["size"] == 0
    assert report["conflicts"]["unresolved"] == 0
    assert report["rest"]["enabled"] is False and report["rest"]["failing"] == 0
    assert report["broker"]["ok"] and report["central_db"]["ok"]
    assert "retry=0" in report["perfdata"]
    # the human table works too and exits the same way
    run = dbsync("status", "--config", str(central.config), env=central.env, check=False)
    assert run.returncode == 0 and b"site1" in run.stdout


def _site_id(central, identifier: str) -> int:
    return central.sql(f"SELECT id FROM `{central.schema}`.site_info WHERE identifier=%s", (identifier,))[0][0]


def test_silent_site_warning_then_critical(central) -> None:
    two_hours_ago = _utcnow() - dt.timedelta(hours=2)
    for site in ("site1", "site2"):
        age = two_hours_ago if site == "site1" else _utcnow()
        central.sql(f"INSERT INTO `{central.schema}`.receiver_sync_status (site_id, last_sync_date, messages) "
                    "VALUES (%s, %s, 5)", (_site_id(central, site), age))
    code, report = status(central.config, central.env)  # defaults: warning 60 min, critical 240 min
    assert code == 1
    sites = {s["identifier"]: s for s in report["sites"]}
    assert sites["site1"]["state"] == "WARNING" and sites["site2"]["state"] == "OK"
    assert 7000 < sites["site1"]["age_seconds"] < 7500
    assert "site site1 silent for 2 h" in report["summary"]
    code, report = status(central.config, central.env, "--site-silent-critical-minutes", "100")
    assert code == 2 and checks(report) == {"site": "CRITICAL"}
    # the config key works like the option; a disabled site is not judged
    text = central.config.read_text().replace("[central_db]", "[status]\nsite_silent_warning_minutes = 180\n"
                                                              "site_silent_critical_minutes = 0\n[central_db]")
    central.config.write_text(text)
    assert status(central.config, central.env)[0] == 0
    central.sql(f"UPDATE `{central.schema}`.receiver_sync_status SET last_sync_date = %s",
                (_utcnow() - dt.timedelta(hours=5),))
    dbsync("sites", "disable", "site2", "--config", str(central.config), env=central.env)
    code, report = status(central.config, central.env)
    assert code == 1 and {s["identifier"]: s["state"] for s in report["sites"]} == {"site1": "WARNING",
                                                                                   "site2": "DISABLED"}


def test_retry_queue_and_conflicts(central) -> None:
    def park(n: int) -> None:
        for i in range(n):
            central.sql(f"INSERT INTO `{central.schema}`.receiver_retry_queue (message_id, site, table_name, "
                        "reason, date_created) VALUES (%s, 'site1', 'obs', 'concept x does not exist', %s)",
                        (f"m{i}-{os.urandom(4).hex()}", _utcnow() - dt.timedelta(minutes=10)))

    park(3)
    code, report = status(central.config, central.env)
    assert code == 1 and checks(report) == {"retry_queue": "WARNING"}
    assert report["retry_queue"]["size"] == 3 and report["retry_queue"]["by_site"] == {"site1": 3}
    assert 500 < report["retry_queue"]["oldest_seconds"] < 900
    assert status(central.config, central.env, "--retry-critical", "3")[0] == 2
    assert status(central.config, central.env, "--retry-warning", "0")[0] == 0
    central.sql(f"INSERT INTO `{central.schema}`.receiver_conflict_queue (message_id, site, table_name, entity_uuid, "
                "entity_key, body, reason, date_created) VALUES ('c1', 'site1', 'person', 'u1', 'person:u1', '{}', "
                "'row edited centrally', %s)", (_utcnow(),))
    code, report = status(central.config, central.env, "--retry-warning", "0", "--conflict-critical", "1")
    assert code == 2 and checks(report) == {"conflicts": "CRITICAL"}
    assert report["conflicts"]["unresolved"] == 1


def test_receiver_broker_stopped_and_central_down(central) -> None:
    env = {**central.env, "DBSYNC_BROKER__URL": CLOSED_BROKER}  # a closed port stands for a stopped broker
    code, report = status(central.config, env)
    assert code == 2 and checks(report) == {"broker": "CRITICAL"}
    assert not report["broker"]["ok"] and "127.0.0.1:1" in report["broker"]["error"]
    env = {**central.env, "DBSYNC_CENTRAL_DB__PORT": "1"}
    code, report = status(central.config, env)
    assert code == 2 and checks(report) == {"central_db": "CRITICAL"}
    assert report["sites"] == [] and report["retry_queue"] is None


def test_invalid_config_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('home = "/tmp"\n[receiver]\nsite_id = 5\n')
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "status", "--json", "--config", str(path)],
                         capture_output=True, env={k: v for k, v in os.environ.items() if not k.startswith("DBSYNC_")})
    assert run.returncode == 3
    report = json.loads(run.stdout)
    assert report["state"] == "UNKNOWN" and report["problems"][0]["check"] == "config"


def test_sender_status(openmrs_db, services, tmp_path, broker_settings) -> None:
    site = make_site(openmrs_db, services, tmp_path, broker_settings)  # snapshot done, checkpoint saved
    code, report = status(site.config, site.env)
    assert SENDER_FIELDS <= set(report)
    assert code == 0, report["problems"]
    checkpoint = report["checkpoint"]
    assert checkpoint["file"].startswith("mysql-bin.") and checkpoint["age_seconds"] < 120
    assert report["lag"]["bytes"] is not None and report["lag"]["bytes"] >= 0
    assert report["broker"]["ok"] and report["site_db"]["ok"]
    assert report["rate"]["rows_last_hour"] == 0

    # publish records how many messages each confirmed batch held, in the checkpoint's transaction
    store = CheckpointStore(site.home)
    source = store.load()
    store.count_sent(120)
    store.save(source)
    store.close()
    site.sql("UPDATE person SET gender = 'F' WHERE person_id = 1")  # a synced change: the binlog grows
    code, report = status(site.config, site.env, "--lag-warning-bytes", "1")
    assert report["rate"]["rows_last_hour"] == 120 and report["rate"]["rows_per_second_5m"] == 0.4
    assert report["lag"]["bytes"] > 0 and report["lag"]["seconds"] is not None
    assert code == 1 and checks(report) == {"lag_bytes": "WARNING"}

    # the real sender publishes it: publish counts it into the rate record, the lag is gone
    destination = f"test.status.{os.urandom(4).hex()}"
    env = {**site.env, "DBSYNC_BROKER__DESTINATION": destination}
    dbsync("sender", "--config", str(site.config), "--until-idle", env=env)
    assert [m["table"] for m in drain(broker_settings, destination, idle=1.0)] == ["person"]
    code, report = status(site.config, site.env)
    assert report["rate"]["rows_last_hour"] == 121 and code == 0, report["problems"]
    # (the lag is not asserted to be 0: other tests write to the same server's binlog meanwhile)
    assert (report["checkpoint"]["file"], report["checkpoint"]["pos"]) != (source["file"], source["pos"])
    store = CheckpointStore(site.home)
    source = store.load()
    store.close()

    env = {**site.env, "DBSYNC_BROKER__URL": CLOSED_BROKER}
    code, report = status(site.config, env)
    assert code == 2 and checks(report)["broker"] == "CRITICAL"

    # a checkpoint in a binlog the server no longer has: the sender would stop with exit 10
    store = CheckpointStore(site.home)
    store.save({**source, "file": "mysql-bin.000000", "pos": 4})
    store.close()
    code, report = status(site.config, site.env)
    assert code == 2 and report["lag"]["purged"] and checks(report)["binlog"] == "CRITICAL"


def _wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "dbsync"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} -m dbsync_cli \"$@\"\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_check_dbsync_script(central, tmp_path: Path) -> None:
    log = tmp_path / "check.log"
    env = {**central.env, "DBSYNC": str(_wrapper(tmp_path)), "PYTHONPATH": str(ROOT)}
    args = [str(ROOT / "scripts" / "check-dbsync"), "--config", str(central.config), "--log-file", str(log)]
    run = subprocess.run(args, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("DBSYNC OK - receiver central: 2 site(s)") and "| " in run.stdout
    run = subprocess.run([*args, "--no-syslog", "--", "--site-silent-warning-minutes", "1"], capture_output=True,
                         text=True, env={**env, "DBSYNC_BROKER__URL": CLOSED_BROKER})
    assert run.returncode == 2 and run.stdout.startswith("DBSYNC CRITICAL - ")
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and "DBSYNC OK" in lines[0] and "DBSYNC CRITICAL" in lines[1]
    run = subprocess.run([str(ROOT / "scripts" / "check-dbsync"), "--config", "/nonexistent.toml", "--no-syslog"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 3 and run.stdout.startswith("DBSYNC UNKNOWN - ")


def test_messages_waiting_at_the_broker_with_no_consumer_are_seen(openmrs_db, tmp_path, broker_settings) -> None:
    """Issue 10 case 11: the receiver stopped consuming, 4,905 messages waited at the broker with 0 consumers, and
    status said nothing (the inbox was empty). Status now reads the queue through Artemis's management address."""
    dest = f"test.unconsumed.{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=dest)
    code, report = status(central.config, central.env)
    assert "broker_queue" not in checks(report), report["problems"]  # the queue does not exist yet: nothing waits
    publish_raw(broker_settings, dest, [{"v": 1, "id": f"site1:x:{i}", "site": "site1"} for i in range(3)])
    time.sleep(1.5)
    code, report = status(central.config, central.env, "--unconsumed-critical-seconds", "1")
    assert code == 2 and checks(report)["broker_queue"] == "CRITICAL", report["problems"]
    queue = report["broker"]["queue"]
    assert (queue["name"], queue["messages"], queue["consumers"]) == (dest, 3, 0)
    assert queue["unconsumed_seconds"] >= 1
    (line,) = [p["message"] for p in report["problems"] if p["check"] == "broker_queue"]
    assert line.startswith(f"3 message(s) waiting at the broker in {dest} with no consumer"), line
    code, report = status(central.config, central.env)  # default thresholds: a minute before a WARNING
    assert "broker_queue" not in checks(report), report["problems"]
    assert drain(broker_settings, dest, idle=1)
    code, report = status(central.config, central.env, "--unconsumed-critical-seconds", "1")
    assert report["broker"]["queue"]["messages"] == 0 and "broker_queue" not in checks(report)


def test_a_normal_onboarding_is_a_note_and_an_unregistered_site_one_warning(central) -> None:
    """Seen: messages queued before `sites add` made status CRITICAL during a normal onboarding. Before the site
    is registered: one WARNING naming `dbsync sites add`; after it: a note while the retry pass applies them."""
    def park(site: str, n: int, reason: str) -> None:
        for i in range(n):
            central.sql(f"INSERT INTO `{central.schema}`.receiver_retry_queue (message_id, site, table_name, "
                        "reason, date_created) VALUES (%s, %s, 'obs', %s, %s)",
                        (f"o{i}-{os.urandom(4).hex()}", site, reason, _utcnow()))

    park("clinic-new", 150, "site 'clinic-new' is not registered (dbsync sites add)")
    park("clinic-new", 20, "waiting behind an earlier message for obs:x")
    code, report = status(central.config, central.env, "--retry-critical", "100")
    assert code == 1 and checks(report) == {"unregistered_site": "WARNING"}, report["problems"]
    (line,) = [p["message"] for p in report["problems"]]
    assert line == ("170 message(s) from site 'clinic-new', which is not registered, wait in the retry queue: "
                    "dbsync sites add clinic-new")
    dbsync("sites", "add", "clinic-new", "--config", str(central.config), env=central.env)
    code, report = status(central.config, central.env, "--retry-critical", "100")
    assert code == 0, report["problems"]
    assert report["retry_queue"]["onboarding"] == {"clinic-new": 170}
    assert any("clinic-new: onboarding, 170 message(s)" in note for note in report["notes"]), report["notes"]
    park("site1", 2, "concept x does not exist")  # other trouble is still graded
    code, report = status(central.config, central.env, "--retry-critical", "100")
    assert code == 1 and checks(report) == {"retry_queue": "WARNING"}
    assert report["problems"][0]["message"].startswith("2 message(s) in the retry queue")


def test_status_speaks_portuguese_when_asked(central) -> None:
    """Issue 26 item 15: the state words and every check's line a person reads are Portuguese with LANG=pt_PT; the
    JSON stays English (scripts parse it). The English run is the control: each of its problem lines must be gone."""
    for i in range(3):
        central.sql(f"INSERT INTO `{central.schema}`.receiver_retry_queue (message_id, site, table_name, "
                    "reason, date_created) VALUES (%s, 'site1', 'obs', 'concept x does not exist', %s)",
                    (f"pt{i}-{os.urandom(4).hex()}", _utcnow() - dt.timedelta(minutes=10)))
    dbsync("sites", "disable", "site2", "--config", str(central.config), env=central.env)
    english = {**central.env, "LANG": "C.UTF-8", "DBSYNC_LANG": ""}
    portuguese = {**central.env, "LANG": "pt_PT.UTF-8", "DBSYNC_LANG": ""}
    en = dbsync("status", "--config", str(central.config), env=english, check=False)
    pt = dbsync("status", "--config", str(central.config), env=portuguese, check=False)
    assert en.returncode == pt.returncode == 1, (en.stdout + en.stderr).decode()
    en_text, pt_text = en.stdout.decode(), pt.stdout.decode()
    assert "WARNING" in en_text and "retry queue" in en_text, en_text
    assert "WARNING" not in pt_text and "AVISO" in pt_text and "retry queue" not in pt_text, pt_text
    _, report = status(central.config, english)
    for problem in report["problems"]:  # each English line a person reads is translated
        assert problem["message"] not in pt_text, (problem["message"], pt_text)
    _, report_pt = status(central.config, portuguese)
    assert report_pt["state"] == "WARNING" and report_pt["problems"] == report["problems"]
