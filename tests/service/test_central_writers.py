"""Issue 25, case 8: every writer of central state goes through the single-applier lock or the running receiver.

The receiver holds a server lock (GET_LOCK named after the state schema) while it applies, so that two appliers
never judge and write one row at the same time. `dbsync retry again|drop` and `dbsync conflicts resolve` (and the
console's buttons, which call the same code) applied beside it without that lock. Here the running receiver is
frozen (SIGSTOP) while it holds the lock: nothing may change central state until it runs again, and then it is the
receiver that carries the action out; a requester that cannot get its action done in time exits with its own code
and changes nothing.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter

import pytest
from helpers import dbsync, dbsync_cmd
from test_apply import central, new_person, outcomes, site  # noqa: F401 - fixtures
from test_receiver_e2e import _start, _stop

from dbsync_cli import exitcodes
from devtools.workload import metadata as md

pytestmark = [pytest.mark.slow]

LOCATION = "aaaaaaaa-2222-4222-8222-aaaaaaaaaaaa"


def _lock_holder(central) -> int | None:  # noqa: F811
    return central.sql("SELECT IS_USED_LOCK(%s)", (f"dbsync:{central.schema}",))[0][0]


def _conflict(central, site) -> tuple[int, str]:  # noqa: F811
    """One unresolved conflict: central edited a name, the site changed it too. Returns (number, name uuid)."""
    _person, name = new_person(site)
    assert set(outcomes(central.apply(site.messages()))) == {"applied"}
    central.sql("UPDATE person_name SET given_name='Central', date_changed='2030-01-01' WHERE uuid=%s", (name,))
    site.sql("UPDATE person_name SET family_name='Site', date_changed='2024-06-01 10:00:00' WHERE uuid=%s", (name,))
    assert outcomes(central.apply(site.messages())) == Counter({"conflict": 1})
    ((number,),) = central.sql(f"SELECT id FROM `{central.schema}`.receiver_conflict_queue WHERE entity_uuid=%s",
                               (name,))
    return number, name


def _retry_entry(central, site) -> int:  # noqa: F811
    """One retry entry: a visit at a location central does not know."""
    site.sql("INSERT INTO location (name, creator, date_created, uuid, retired) VALUES ('Elsewhere', 1, NOW(), %s, 0)",
             (LOCATION,))
    (location,) = site.sql("SELECT location_id FROM location WHERE uuid=%s", (LOCATION,))[0]
    person, _name = new_person(site, "Visitor")
    (person_id,) = site.sql("SELECT person_id FROM person WHERE uuid=%s", (person,))[0]
    central.apply(site.messages())
    site.sql("INSERT INTO visit (patient_id, visit_type_id, date_started, location_id, creator, date_created, uuid) "
             "VALUES (%s, %s, '2024-03-01 08:00:00', %s, 1, NOW(), UUID())", (person_id, md.VISIT_OUTPATIENT,
                                                                               location))
    assert [r["outcome"] for r in central.apply(site.messages())] == ["retry"]
    ((number,),) = central.sql(f"SELECT id FROM `{central.schema}`.receiver_retry_queue")
    return number


def _in_background(args: list[str], env: dict[str, str]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        started = time.monotonic()
        result["run"] = subprocess.run(dbsync_cmd(*args), env=env, capture_output=True, timeout=180)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_operator_actions_go_through_the_running_receiver(central, site) -> None:  # noqa: F811
    number, name = _conflict(central, site)
    entry = _retry_entry(central, site)
    log = central.config.parent / "receiver.log"
    receiver = _start(["receiver", "--config", str(central.config)], central.env, log)
    try:
        deadline = time.monotonic() + 60
        while "consuming" not in log.read_text() and time.monotonic() < deadline:
            assert receiver.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        holder = _lock_holder(central)
        assert holder is not None, "the running receiver holds the applier lock"

        # the receiver is frozen while it holds the lock: a conflict resolved now must wait for it
        receiver.send_signal(signal.SIGSTOP)
        try:
            thread, result = _in_background(["conflicts", "resolve", str(number), "--take-incoming",
                                             "--config", str(central.config)], central.env)
            time.sleep(6)
            frozen = central.sql(f"SELECT resolved FROM `{central.schema}`.receiver_conflict_queue WHERE id=%s",
                                 (number,))
            family = central.sql("SELECT family_name FROM person_name WHERE uuid=%s", (name,))
            assert frozen == [(0,)] and family == [("Doe",)], (
                "conflicts resolve wrote central beside the receiver that holds the applier lock "
                f"(connection {holder}): resolved={frozen}, family_name={family}; "
                f"its output: {result.get('run') and result['run'].stdout.decode()!r}")
        finally:
            receiver.send_signal(signal.SIGCONT)
        thread.join(120)
        run = result["run"]
        assert run.returncode == 0, run.stderr.decode()[-2000:]
        assert "resolved (take-incoming)" in run.stdout.decode()
        assert central.sql("SELECT family_name FROM person_name WHERE uuid=%s", (name,)) == [("Site",)]
        assert _lock_holder(central) == holder  # the receiver kept its lock: it did the work itself
        assert "request" in log.read_text()

        # retry again: the same, and the outcome line comes back from the receiver
        receiver.send_signal(signal.SIGSTOP)
        try:
            before = central.sql(f"SELECT attempts FROM `{central.schema}`.receiver_retry_queue WHERE id=%s", (entry,))
            thread, result = _in_background(["retry", "again", str(entry), "--config", str(central.config)],
                                            central.env)
            time.sleep(5)
            assert central.sql(f"SELECT attempts FROM `{central.schema}`.receiver_retry_queue WHERE id=%s",
                               (entry,)) == before, "retry again wrote beside the receiver that holds the lock"
        finally:
            receiver.send_signal(signal.SIGCONT)
        thread.join(120)
        assert result["run"].returncode == 0, result["run"].stderr.decode()[-2000:]
        assert b'"outcome":"retry"' in result["run"].stdout, result["run"].stdout

        # a receiver that does not answer in time: the requester gives up with its own exit code, changes nothing,
        # and its request is never carried out later
        receiver.send_signal(signal.SIGSTOP)
        try:
            busy = dbsync("retry", "drop", str(entry), "--wait", "2", "--config", str(central.config),
                          env=central.env, check=False, timeout=60)
        finally:
            receiver.send_signal(signal.SIGCONT)
        assert busy.returncode == exitcodes.RECEIVER_BUSY, busy.stderr.decode()[-2000:]
        assert len(busy.stderr.decode().strip().splitlines()) == 1 and b"Traceback" not in busy.stderr
        time.sleep(4)
        assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE id=%s",
                           (entry,)) == [(1,)]
    finally:
        _stop(receiver, log)

    # no receiver running: the action takes the lock itself, at once
    started = time.monotonic()
    dropped = dbsync("retry", "drop", str(entry), "--config", str(central.config), env=central.env)
    assert b"dropped" in dropped.stdout and time.monotonic() - started < 30
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]
