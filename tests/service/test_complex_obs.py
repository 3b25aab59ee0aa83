"""Complex obs files (issue 28): the file travels with its obs, on its own lane, from two sites (one over the field
bed's 256 kbit/s link), through a kill -9 of the sender and of the receiver in the middle of a 40 MB file.

The checks read central's folder and central's tables directly (pymysql, hashlib): no dbsync code judges dbsync."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import stomp
from helpers import dbsync
from receiver_helpers import Central, Site, drop_schema, make_central, make_site, plain_sql

from devtools.field.link import LinkProxy

pytestmark = [pytest.mark.slow]  # in the first lane: the second holds the brokers (tests/service/test_brokers.py)

KBIT_256 = 32_000  # bytes per second each way
FAST = 8_000_000  # 64 Mbit/s: a 40 MB file takes seconds, long enough to kill a process in the middle of it



def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(what: str, check: Callable[[], Any], timeout: float = 90, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "dbsync_cli", *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=out)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _person(site: Site) -> tuple[int, int]:
    site.sql("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, NOW(), UUID())")
    person = site.sql("SELECT MAX(person_id) FROM person")[0][0]
    concept = site.sql("SELECT concept_id FROM concept ORDER BY concept_id LIMIT 1")[0][0]
    return person, concept


def _obs(site: Site, person: int, concept: int, value_complex: str | None, text: str | None = None) -> str:
    uuid = str(uuidlib.uuid4())
    site.sql("INSERT INTO obs (person_id, concept_id, obs_datetime, value_complex, value_text, creator, date_created, "
             "voided, status, uuid) VALUES (%s, %s, NOW(), %s, %s, 1, NOW(), 0, 'FINAL', %s)",
             (person, concept, value_complex, text, uuid))
    return uuid


def _job(home: Path, name: str) -> tuple[str, int, int] | None:
    """(state, confirmed, chunks) of the sender's job for a file, read from its SQLite state."""
    db = sqlite3.connect(f"file:{home / 'state.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT state, confirmed, COALESCE(chunks, 0) FROM complex_file WHERE name = ?",
                         (name,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


def _send_hostile_chunk(broker: Any, destination: str, name: str) -> None:
    """A chunk a rogue sender writes by hand: its name leaves the folder."""
    conn = stomp.Connection12([(broker.host, broker.port)])
    conn.connect(broker.user, broker.password, wait=True)
    body = b"owned"
    conn.send(destination=destination + ".files", body=body, headers={
        "persistent": "true", "destination-type": "ANYCAST", "dbsync-site": "site1", "dbsync-file-name": name,
        "dbsync-file-sha256": hashlib.sha256(body).hexdigest(), "dbsync-file-size": "5", "dbsync-file-chunks": "1",
        "dbsync-file-seq": "0", "dbsync-chunk-sha256": hashlib.sha256(body).hexdigest(),
        "dbsync-chunk-encoding": "identity", "receipt": "hostile"})
    time.sleep(0.5)
    conn.disconnect()


def test_complex_obs_files_travel_beside_their_rows(openmrs_db, services, tmp_path, broker_settings) -> None:
    destination = f"test.cobs.{uuidlib.uuid4().hex[:8]}"
    central: Central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"),
                                    destination=destination)
    proxy = LinkProxy(broker_settings.host, broker_settings.port, bandwidth_bytes_per_s=KBIT_256, latency_s=0.05)
    fast = LinkProxy(broker_settings.host, broker_settings.port, bandwidth_bytes_per_s=FAST)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proxy.start()
        fast.start()
        folders = {name: tmp_path / f"obs-{name}" for name in ("site1", "site2", "central")}
        for folder in folders.values():
            folder.mkdir()
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site1", instance="site1")
        site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
        for site, name in ((site1, "site1"), (site2, "site2")):
            site.env.update({"DBSYNC_BROKER__DESTINATION": destination,
                             "DBSYNC_SENDER__COMPLEX_OBS_DIR": str(folders[name])})
        site1.env["DBSYNC_SENDER__COMPLEX_OBS_CHUNK_BYTES"] = "65536"  # the fast link: 640 chunks for 40 MB
        site1.env["DBSYNC_BROKER__URL"] = f"stomp://127.0.0.1:{fast.port}"
        site2.env["DBSYNC_BROKER__URL"] = f"stomp://127.0.0.1:{proxy.port}"  # 256 kbit/s, 32 KB chunks
        central.env["DBSYNC_RECEIVER__COMPLEX_OBS_DIR"] = str(folders["central"])
        logs = tmp_path / "logs"
        logs.mkdir()

        # site 1 (fast link): 1 KB, 5 MB and 40 MB; site 2 (slow link): 1 KB and 20 KB, the legacy bare-name form
        files = {("site1", "small_1.png"): os.urandom(1024), ("site1", "scan_5mb.pdf"): os.urandom(5 << 20),
                 ("site1", "xray_40mb.png"): os.urandom(40 << 20), ("site2", "sig_1.png"): os.urandom(1024),
                 ("site2", "form_20kb.pdf"): os.urandom(20 << 10)}
        for (name, file_name), data in files.items():
            (folders[name] / file_name).write_bytes(data)
        p1, c1 = _person(site1)
        p2, c2 = _person(site2)
        obs = {("site1", "small_1.png"): _obs(site1, p1, c1, "image/png|small_1.png"),
               ("site1", "scan_5mb.pdf"): _obs(site1, p1, c1, "Scanned form|scan_5mb.pdf"),
               ("site1", "xray_40mb.png"): _obs(site1, p1, c1, "image/png|xray_40mb.png"),
               ("site2", "sig_1.png"): _obs(site2, p2, c2, "image/png|sig_1.png"),
               ("site2", "form_20kb.pdf"): _obs(site2, p2, c2, "form_20kb.pdf")}
        # names that leave the folder: refused with one line each, counted; the other rows flow
        hostile = {_obs(site1, p1, c1, value): value for value in
                   ("x|../escape.png", "x|/etc/passwd", "x|a\x00b.png", "|")}
        outside = tmp_path / "escape.png"

        central_obs = folders["central"]
        started = time.monotonic()
        procs.append(receiver := _start(["receiver", "--config", str(central.config)], central.env,
                                        logs / "receiver.log"))
        procs.append(_start(["sender", "--config", str(site2.config)], site2.env, logs / "sender2.log"))
        procs.append(sender1 := _start(["sender", "--config", str(site1.config)], site1.env, logs / "sender1.log"))
        big = ("site1", "xray_40mb.png")

        # 1. the 40 MB file is in flight: a row written at the site now is at central before it, and the obs that
        # names the file waits for it (counted, with its reason) while every other row flows
        _wait("the 40 MB file to be sending", lambda: (_job(site1.home, big[1]) or ("", 0, 0))[1] >= 20)
        plain = _obs(site1, p1, c1, None, "a row behind the X-ray")
        _wait("the plain row at central", lambda: plain_sql(central.db, "SELECT 1 FROM obs WHERE uuid = %s", (plain,)))
        assert not (central_obs / big[1]).exists()
        assert not plain_sql(central.db, "SELECT 1 FROM obs WHERE uuid = %s", (obs[big],))
        waiting = plain_sql(central.db, f"SELECT reason_code, cause FROM `{central.schema}`.receiver_retry_queue "
                                   "WHERE entity_uuid = %s", (obs[big],))
        assert waiting == [("file_waiting", "file:site1:xray_40mb.png")]
        seen_plain_while_in_flight = _job(site1.home, big[1])
        assert seen_plain_while_in_flight is not None and seen_plain_while_in_flight[0] == "sending"

        # 2. kill -9 the receiver while central holds part of the 40 MB file, then the sender in the middle of it
        def chunks_at_central() -> int:
            return int(plain_sql(central.db, f"SELECT COUNT(*) FROM `{central.schema}`.complex_file_chunk WHERE name = %s",
                            (big[1],))[0][0])

        _wait("part of the 40 MB file at central", lambda: chunks_at_central() >= 10)
        os.kill(receiver.pid, signal.SIGKILL)
        receiver.wait()
        at_kill = chunks_at_central()
        assert 10 <= at_kill < 640, at_kill
        procs.append(receiver := _start(["receiver", "--config", str(central.config)], central.env,
                                        logs / "receiver.log"))
        job = _job(site1.home, big[1])
        assert job is not None and job[0] == "sending" and job[1] < job[2], job
        os.kill(sender1.pid, signal.SIGKILL)
        sender1.wait()
        killed_at = _job(site1.home, big[1])
        assert killed_at is not None and killed_at[1] < killed_at[2], killed_at
        procs.append(sender1 := _start(["sender", "--config", str(site1.config)], site1.env, logs / "sender1.log"))

        # 3. a file not in the site's folder yet when its obs is sent: looked for again, counted, then it goes
        late = os.urandom(4096)
        files[("site1", "late_1.png")] = late
        obs[("site1", "late_1.png")] = _obs(site1, p1, c1, "image/png|late_1.png")
        _wait("the late file counted as missing", lambda: (_job(site1.home, "late_1.png") or ("",))[0] == "missing")
        status = orjson.loads(dbsync("status", "--json", "--config", str(site1.config), env=site1.env,
                                     check=False).stdout)
        assert status["complex_obs"]["missing"] == 1
        assert status["complex_obs"]["refused"] == len(hostile)
        assert any(p["check"] == "complex_obs" for p in status["problems"])
        (folders["site1"] / "late_1.png").write_bytes(late)
        # an obs deleted at the site before its file was read (OpenMRS's purgeObs removed the file): the site tells
        # central the file will never come, so the obs waiting there for it does not wait for ever
        never = _obs(site1, p1, c1, "image/png|never_1.png")
        _wait("its file counted as missing", lambda: (_job(site1.home, "never_1.png") or ("",))[0] == "missing")
        site1.sql("DELETE FROM obs WHERE uuid = %s", (never,))

        # 4. every file at central, byte for byte, and every obs row naming it
        def all_there() -> bool:
            return all((central_obs / name).exists() and _sha(central_obs / name) == hashlib.sha256(data).hexdigest()
                       for (_site, name), data in files.items())

        _wait("every file at central", all_there, timeout=240, every=0.5)
        print(f"\nevery file at central {time.monotonic() - started:.1f} s after the senders started (two kills "
              f"included); the slow link carried {proxy.bytes_up} bytes up")
        for key, uuid in obs.items():
            rows = _wait(f"obs {key} at central", lambda uuid=uuid: plain_sql(
                central.db, "SELECT value_complex FROM obs WHERE uuid = %s", (uuid,)), timeout=60, every=0.2)
            assert rows[0][0] == site1.sql("SELECT value_complex FROM obs WHERE uuid = %s", (uuid,))[0][0] \
                if key[0] == "site1" else site2.sql("SELECT value_complex FROM obs WHERE uuid = %s", (uuid,))[0][0]
        assert sorted(p.name for p in central_obs.iterdir()) == sorted(name for _site, name in files)
        assert {p.stat().st_mode & 0o777 for p in central_obs.iterdir()} == {0o640}  # OpenMRS's group reads them
        _wait("the never-sent file gone at the site", lambda: (_job(site1.home, "never_1.png") or ("",))[0] == "gone",
              timeout=60, every=0.2)
        _wait("its obs created and deleted at central", lambda: not plain_sql(
            central.db, f"SELECT 1 FROM `{central.schema}`.receiver_retry_queue WHERE entity_uuid = %s", (never,)),
            timeout=60, every=0.2)
        assert not plain_sql(central.db, "SELECT 1 FROM obs WHERE uuid = %s", (never,))
        leftovers = plain_sql(central.db, f"SELECT COUNT(*) FROM `{central.schema}`.complex_file_chunk")[0][0]
        assert leftovers == 0
        assert proxy.bytes_up > 20 << 10  # site 2's files crossed the slow link
        assert b"going on from chunk" in (logs / "sender1.log").read_bytes()  # resumed, not started over

        # 5. the refused names: no row at central, parked as errors with their reason, nothing outside the folder
        for uuid in hostile:
            assert not plain_sql(central.db, "SELECT 1 FROM obs WHERE uuid = %s", (uuid,))
        parked = plain_sql(central.db, f"SELECT reason_code, kind, site FROM `{central.schema}`.receiver_retry_queue "
                                  "WHERE entity_uuid IN %s", (tuple(hostile),))
        assert sorted(parked) == [("file_name_refused", "permanent", "site1")] * len(hostile)
        assert not outside.exists()
        _send_hostile_chunk(broker_settings, destination, "../escape.png")
        refused = _wait("the hostile chunk refused", lambda: plain_sql(
            central.db, f"SELECT site, kind, reason_code FROM `{central.schema}`.complex_file_issue"))
        assert refused == [("site1", "refused", "file_name_refused")]
        assert not outside.exists()
        health = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                     check=False).stdout)
        files_status = health["complex_obs"]
        assert files_status["received"] == len(files) and files_status["refused"] == 1, files_status
        assert files_status["by_site"]["site2"]["received"] == 2
        assert receiver.poll() is None, "the receiver keeps running"

        # 6. a name central holds with other bytes (here site 1's file, sent again by site 2 with its own bytes) is a
        # conflict with its reason, never an overwrite; that obs keeps waiting
        (folders["site2"] / "small_1.png").write_bytes(b"site 2's own bytes")
        clash = _obs(site2, p2, c2, "image/png|small_1.png")
        conflict = _wait("the conflict", lambda: plain_sql(
            central.db, f"SELECT site, reason_code, reason FROM `{central.schema}`.complex_file_issue "
                        "WHERE kind = 'conflict'"), timeout=60, every=0.2)
        assert conflict == [("site2", "file_conflict", "complex obs file 'small_1.png': central holds other bytes "
                                                       "under this name (another site's file); not overwritten")]
        assert _sha(central_obs / "small_1.png") == hashlib.sha256(files[("site1", "small_1.png")]).hexdigest()
        assert plain_sql(central.db, f"SELECT reason_code FROM `{central.schema}`.receiver_retry_queue "
                                "WHERE entity_uuid = %s", (clash,)) == [("file_waiting",)]
        health = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                     check=False).stdout)
        assert health["complex_obs"]["by_site"]["site2"]["conflicts"] == 1
        assert health["complex_obs"]["by_site"]["site2"]["waiting_obs"] == 1
        assert any(p["check"] == "complex_obs" and "in conflict" in p["message"] for p in health["problems"])

        # 7. voiding keeps the file; a delete (OpenMRS's purgeObs, whose handler removes the file) removes it
        sig, form = obs[("site2", "sig_1.png")], obs[("site2", "form_20kb.pdf")]
        site2.sql("UPDATE obs SET voided = 1, voided_by = 1, date_voided = NOW(), void_reason = 'wrong patient' "
                  "WHERE uuid = %s", (sig,))
        site2.sql("DELETE FROM obs WHERE uuid = %s", (form,))
        _wait("the deleted obs gone at central", lambda: not plain_sql(central.db, "SELECT 1 FROM obs WHERE uuid = %s",
                                                                   (form,)), timeout=60, every=0.2)
        _wait("its file removed at central", lambda: not (central_obs / "form_20kb.pdf").exists(), timeout=60,
              every=0.2)
        _wait("the voided obs at central", lambda: plain_sql(central.db, "SELECT voided FROM obs WHERE uuid = %s",
                                                         (sig,)) == [(1,)], timeout=60, every=0.2)
        assert _sha(central_obs / "sig_1.png") == hashlib.sha256(files[("site2", "sig_1.png")]).hexdigest()

        # 8. verify compares the files' digests: a file changed at central is found, and --repair mends it
        damaged = central_obs / "small_1.png"
        damaged.write_bytes(b"changed at central")
        report = orjson.loads(dbsync("verify", "--config", str(site1.config), "--json", "--settle", "1",
                                     "--table", "obs", env=site1.env, check=False, timeout=300).stdout)
        differing = {uuid: kind for uuid, kind in report["tables"]["obs"]["rows"].items() if uuid not in hostile}
        assert differing == {obs[("site1", "small_1.png")]: "different"}, report["tables"]["obs"]
        dbsync("verify", "--config", str(site1.config), "--json", "--settle", "1", "--table", "obs", "--repair",
               env=site1.env, check=False, timeout=300)
        _wait("the repaired file", lambda: _sha(damaged) == hashlib.sha256(files[("site1", "small_1.png")]).hexdigest(),
              timeout=60, every=0.2)
        # and `dbsync resync` of an obs sends its file again too
        late_at_central = central_obs / "late_1.png"
        late_at_central.write_bytes(b"truncated")
        dbsync("resync", "--config", str(site1.config), "--table", "obs", "--uuid", obs[("site1", "late_1.png")],
               env=site1.env)
        _wait("the re-sent file", lambda: _sha(late_at_central) == hashlib.sha256(late).hexdigest(), timeout=60,
              every=0.2)
    finally:
        for proc in procs:
            _stop(proc)
        proxy.stop()
        fast.stop()
        drop_schema(central)
