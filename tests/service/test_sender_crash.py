"""Crash safety of the sender: kill -9 at random moments, interrupted snapshots, clean SIGTERM."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid as uuidlib

import pytest
from helpers import check_final_state, dbsync, dbsync_cmd, drain, sender_config

from devtools.workload.generator import generate
from devtools.workload.truth import GroundTruth

pytestmark = [pytest.mark.slow, pytest.mark.lane2]


@pytest.fixture
def site(openmrs_db, services):
    admin = openmrs_db("site1")
    return admin, services["site1"].repl.with_database(admin.database)



def _start(mode: str, conf: str, env: dict[str, str]) -> list[subprocess.Popen]:
    if mode == "sender":
        return [subprocess.Popen(dbsync_cmd("sender", "--config", conf), env=env, stderr=subprocess.DEVNULL)]
    capture = subprocess.Popen(dbsync_cmd("capture", "--config", conf), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    enrich = subprocess.Popen(dbsync_cmd("enrich", "--config", conf), env=env, stdin=capture.stdout,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    publish = subprocess.Popen(dbsync_cmd("publish", "--config", conf), env=env, stdin=enrich.stdout,
                               stderr=subprocess.DEVNULL)
    assert capture.stdout is not None and enrich.stdout is not None
    capture.stdout.close()
    enrich.stdout.close()
    return [capture, enrich, publish]


def test_kill_minus_9_at_random_moments_loses_nothing(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = f"test.crash.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=200)
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    truths: list[GroundTruth] = []
    done = threading.Event()

    def workload() -> None:
        try:
            for seed in range(1, 6):
                truths.append(generate(admin, seed=seed, patients=40, mutations=0.3, transaction_rows=300))
                time.sleep(0.5)
        finally:
            done.set()

    writer = threading.Thread(target=workload)
    writer.start()
    rng = random.Random(1234)
    kills: list[str] = []
    modes = ["sender", "pipe"]
    while len(kills) < 12 or not done.is_set():
        mode = modes[len(kills) % 2]
        procs = _start(mode, str(conf), env)
        time.sleep(rng.uniform(0.8, 3.0))
        victim = rng.choice(procs)
        os.kill(victim.pid, signal.SIGKILL)
        kills.append(f"{mode}:{procs.index(victim)}")
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    writer.join()
    assert len(kills) >= 12
    assert {k.split(":")[0] for k in kills} == {"sender", "pipe"}
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    messages = drain(broker_settings, dest)
    check_final_state(admin, truths, messages)


def test_snapshot_while_writing_and_resume_after_interruption(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    truths = [generate(admin, seed=21, patients=150, mutations=0.2)]
    dest = f"test.snap.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=250)
    first = dbsync("sender", "--config", str(conf), "--max-events", "3000", env=env)
    sent_first = int(re.search(rb"sender: (\d+) messages confirmed", first.stderr).group(1))
    assert sent_first == 3000
    # the resumed snapshot runs while the site keeps writing
    proc = subprocess.Popen(dbsync_cmd("sender", "--config", str(conf)), env=env, stderr=subprocess.PIPE)
    truths.append(generate(admin, seed=22, patients=60, mutations=0.3, transaction_rows=200))
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"resuming snapshot at" in err
    sent_second = int(re.search(rb"sender: (\d+) messages confirmed", err).group(1))
    third = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    sent_third = int(re.search(rb"sender: (\d+) messages confirmed", third.stderr).group(1))
    messages = drain(broker_settings, dest)
    snapshot_rows = [m for m in messages if m["op"] == "r"]
    ids = [m["id"] for m in messages]
    assert len(ids) == len(set(ids))
    # each run resumed where the previous stopped: nothing was sent twice (the broker would hide duplicates by
    # _AMQ_DUPL_ID, so compare what the runs sent with what arrived)
    assert sent_first + sent_second + sent_third == len(messages)
    assert len(snapshot_rows) > 3000
    check_final_state(admin, truths, messages)
