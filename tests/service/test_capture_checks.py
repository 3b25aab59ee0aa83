"""Capture refuses servers it cannot trust, with distinct exit codes and one line naming the remedy."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid as uuidlib

import orjson
import pytest
from helpers import dbsync, drain, sender_config
from receiver_helpers import Site, drop_schema, make_central
from test_apply import new_person

from dbsync_cli import exitcodes
from dbsync_cli.sender.checkpoint import BINLOG
from devtools.services.common import port_offset
from devtools.services.mariadb import destroy_mariadb, start_mariadb
from devtools.workload.generator import generate
from devtools.workload.openmrs import load_openmrs


@pytest.fixture(scope="module")
def extra_site(services):
    """A throwaway instance we may purge binlogs on and reconfigure without disturbing the shared ones."""
    inst = start_mariadb("capture-checks", port=23391 + port_offset(), server_id=391)
    yield inst
    destroy_mariadb(inst)


def _site(inst, name: str):
    name = f"{name}_{uuidlib.uuid4().hex[:6]}"
    load_openmrs(inst.admin, name)
    return inst.admin.with_database(name), inst.repl.with_database(name)


def _global(inst, sql: str) -> None:
    with inst.admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(sql)


def test_purged_checkpoint_stops_with_exit_10_and_when_needed_resnapshots(extra_site, broker_settings,
                                                                           tmp_path) -> None:
    admin, repl = _site(extra_site, "purge_test")
    dest = f"test.purge.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest)
    env["DBSYNC_SENDER__CATCH_UP"] = "snapshot"  # tests/service/test_verify.py catches up by verify instead
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    _global(extra_site, "FLUSH BINARY LOGS")
    generate(admin, seed=5, patients=5)
    checkpoint_file = orjson.loads(sqlite3.connect(tmp_path / "home-site1" / "state.sqlite").execute(
        "SELECT value FROM checkpoint WHERE name = ?", (BINLOG,)).fetchone()[0])["file"]
    with admin.connect() as conn, conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]
        for _ in range(50):  # a file still read by a lingering dump thread is kept: wait until it is gone
            cur.execute("PURGE BINARY LOGS TO %s", (current,))
            cur.execute("SHOW BINARY LOGS")
            if checkpoint_file not in [row[0] for row in cur.fetchall()]:
                break
            time.sleep(0.2)
    run = dbsync("capture", "--config", str(conf), "--until-idle", env=env, check=False)
    assert run.returncode == exitcodes.BINLOG_PURGED == 10
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "purged" in lines[0] and "--snapshot when_needed" in lines[0], lines
    run = dbsync("sender", "--config", str(conf), "--until-idle", "--snapshot", "when_needed", env=env)
    assert b"taking a new snapshot" in run.stderr
    assert any(m["op"] == "r" and m["table"] == "obs" for m in drain(broker_settings, dest, idle=1.5))


@pytest.mark.parametrize(
    ("setting", "shown"),
    [("binlog_format='STATEMENT'", "binlog_format=STATEMENT"), ("binlog_row_image='MINIMAL'", "binlog_row_image=MINIMAL")],
)
def test_wrong_binlog_settings_stop_with_exit_11(extra_site, broker_settings, tmp_path, setting, shown) -> None:
    _admin, repl = _site(extra_site, "settings_test")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination="test.unused")
    _global(extra_site, f"SET GLOBAL {setting}")
    try:
        run = dbsync("capture", "--config", str(conf), "--until-idle", env=env, check=False)
    finally:
        _global(extra_site, "SET GLOBAL binlog_format='ROW', binlog_row_image='FULL', binlog_row_metadata='FULL'")
    assert run.returncode == exitcodes.BINLOG_SETTINGS == 11
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and shown in lines[0] and "--binlog-format=ROW" in lines[0], lines


def test_short_binlog_retention_warns(extra_site, broker_settings, tmp_path) -> None:
    _admin, repl = _site(extra_site, "retention_test")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination="test.retention")
    conf.write_text(conf.read_text().replace("min_binlog_retention_hours = 0", "min_binlog_retention_hours = 72"))
    _global(extra_site, "SET GLOBAL binlog_expire_logs_seconds = 3600")
    try:
        run = dbsync("capture", "--config", str(conf), "--until-idle", "--snapshot", "never", env=env)
        checked = dbsync("config", "check", "--json", "--config", str(conf), env=env, check=False)
    finally:
        _global(extra_site, "SET GLOBAL binlog_expire_logs_seconds = 0")
    assert b"binlog retention is 1.0 h, shorter than the 72 h minimum" in run.stderr
    (finding,) = [f for f in orjson.loads(checked.stdout)["findings"] if f["check"] == "binlog.retention"]
    assert checked.returncode == 0 and finding["state"] == "warning" and "kept 1.0 h" in finding["message"], finding


def _sync(conf, env, broker_settings, dest: str, central, *args: str) -> tuple[list[dict], str]:
    """sender --until-idle through Artemis, then apply what arrived; returns (outcomes, sender stderr)."""
    run = dbsync("sender", "--config", str(conf), "--until-idle", *args, env=env)
    return central.apply(drain(broker_settings, dest, idle=1.5)), run.stderr.decode()


def test_a_restarted_binlog_history_never_drops_new_changes_as_duplicates(extra_site, openmrs_db, broker_settings,
                                                                          tmp_path) -> None:
    """Issue 10 case 2: after RESET MASTER (or on a rebuilt or restored server) binlog coordinates repeat. Before,
    a new person got an id already applied and was dropped as a duplicate (by Artemis's duplicate-id cache and by
    apply), or capture resumed mid-way into the new history and never read it; the remedy (`when_needed`) looped."""
    admin, repl = _site(extra_site, "reset_test")
    dest = f"test.reset.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest)
    env["DBSYNC_SENDER__CATCH_UP"] = "snapshot"  # this test is about the snapshot; test_verify.py catches up
    site = Site(admin, conf, env, tmp_path / "home-site1")
    central = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        _global(extra_site, "RESET MASTER")  # a fresh history: the change below lands where the one after the
        _sync(conf, env, broker_settings, dest, central)  # next RESET MASTER will, at the same file and position
        first, _ = new_person(site)
        results, _ = _sync(conf, env, broker_settings, dest, central)
        (applied_person,) = [r for r in results if r.get("table") == "person"]
        assert applied_person["outcome"] == "applied"
        time.sleep(1.1)  # binlog files record their creation to the second
        _global(extra_site, "RESET MASTER")
        second, _ = new_person(site)  # same size as the first: same file and position in the new history
        third, _ = new_person(site, "Bob")  # and the new binlog grows past the old checkpoint
        run = dbsync("sender", "--config", str(conf), "--until-idle", env=env, check=False)
        assert run.returncode == exitcodes.BINLOG_PURGED, run.stderr.decode()[-2000:]
        lines = run.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "binlog history restarted" in lines[0] and "when_needed" in lines[0], lines

        results, log = _sync(conf, env, broker_settings, dest, central, "--snapshot", "when_needed")
        assert "binlog history restarted" in log and "taking a new snapshot under a new message-id epoch" in log
        persons = {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"}
        assert persons[second] == "applied" and persons[third] == "applied", persons
        assert not [r for r in results if r["outcome"] in ("duplicate", "retry", "error", "conflict")], results
        assert central.sql("SELECT COUNT(*) FROM person WHERE uuid IN (%s, %s, %s)", (first, second, third)) == [(3,)]
        assert applied_person["message_id"].split(":")[1] != next(
            r["message_id"] for r in results if r.get("uuid") == second).split(":")[1]  # a new epoch

        # no loop: the checkpoint is in the new history, the next run streams on (default snapshot = "initial")
        fourth, _ = new_person(site, "Cid")
        results, log = _sync(conf, env, broker_settings, dest, central)
        assert {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"} == {fourth: "applied"}
        assert "snapshot" not in log
    finally:
        drop_schema(central)


def test_a_running_sender_notices_reset_master_while_idle_and_snapshots_again(extra_site, broker_settings,
                                                                             tmp_path) -> None:
    """Issue 27 item 4: with `snapshot = "when_needed"`, a sender waiting at the end of the binlog noticed RESET
    MASTER only once the new history's file grew past its old position (a quiet clinic: days, status CRITICAL
    meanwhile). It notices within seconds now, with no new change at the site, and snapshots again."""
    import signal
    import sys

    admin, repl = _site(extra_site, "reset_idle")
    dest = f"test.reset.idle.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, snapshot="when_needed")
    env["DBSYNC_SENDER__CATCH_UP"] = "snapshot"
    _global(extra_site, "RESET MASTER")  # the checkpoint's file will be mysql-bin.000001, the name it gets again
    generate(admin, seed=7, patients=3)  # the old history: its checkpoint is far past the new file's size
    state = tmp_path / "home-site1" / "state.sqlite"
    log = tmp_path / "sender.log"
    with log.open("wb") as out:
        sender = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "sender", "--config", str(conf)], env=env,
                                  stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while True:  # the initial snapshot confirmed and the stream idle at the end of the binlog
            assert sender.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            row = state.exists() and sqlite3.connect(state).execute(
                "SELECT value FROM checkpoint WHERE name = ?", (BINLOG,)).fetchone()
            if row and not orjson.loads(row[0]).get("snapshot"):
                break
            time.sleep(0.5)
        time.sleep(3)
        _global(extra_site, "RESET MASTER")  # nothing written afterwards: the new file stays small
        reset = time.monotonic()
        while "taking a new snapshot under a new message-id epoch" not in log.read_text():
            assert sender.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - reset < 60, "RESET MASTER not noticed in 60 s: " + log.read_text()[-3000:]
            time.sleep(0.5)
        seconds = time.monotonic() - reset
        text = log.read_text()
        assert "binlog history restarted" in text and "Traceback" not in text, text[-3000:]
        print(f"RESET MASTER noticed after {seconds:.1f} s")
    finally:
        sender.send_signal(signal.SIGTERM)
        sender.wait(60)
    drain(broker_settings, dest, idle=1.5)


def test_config_check_warns_about_a_fixed_offset_on_a_server_with_daylight_saving(extra_site, broker_settings,
                                                                                  tmp_path) -> None:
    """Issue 10 case 9: `sender.timezone = "+01:00"` for a server in Europe/Berlin converts summer DATETIMEs with
    the wrong offset; `config check` says so (a warning: exit 0) and names the IANA zone to use."""
    admin = extra_site.admin
    tzinfo = subprocess.run(["mariadb-tzinfo-to-sql", "/usr/share/zoneinfo/Europe/Berlin", "Europe/Berlin"],
                            capture_output=True, check=True).stdout
    subprocess.run(["mariadb", "-h", admin.host, "-P", str(admin.port), "-u", admin.user, "mysql"], input=tzinfo,
                   env={**os.environ, "MYSQL_PWD": admin.password}, capture_output=True, check=True)
    _, repl = _site(extra_site, "tz_test")
    _global(extra_site, "SET GLOBAL time_zone = 'Europe/Berlin'")
    try:
        for configured, warned in (("+01:00", True), ("UTC", True), ("Europe/Berlin", False)):
            conf, env = sender_config(tmp_path, repl, broker_settings, destination="test.unused", timezone=configured)
            run = dbsync("config", "check", "--config", str(conf), env=env, check=False)
            assert run.returncode == 0, run.stderr.decode()
            lines = [line for line in run.stderr.decode().splitlines() if "warning: sender.timezone" in line]
            if warned:
                assert lines == [f"dbsync: config: warning: sender.timezone is the fixed offset {configured!r}, but "
                                 "the server's time zone (Europe/Berlin) is UTC+01:00 in January and UTC+02:00 in "
                                 "July: DATETIME values from part of the year would move by the difference; set "
                                 "sender.timezone to the zone's IANA name (e.g. Europe/Berlin)"], lines
            else:
                assert lines == [], lines
    finally:
        _global(extra_site, "SET GLOBAL time_zone = 'SYSTEM'")


def test_config_check_finds_binlog_settings_capture_cannot_use(extra_site, broker_settings, tmp_path) -> None:
    """Issue 11 item 4: binlog off or not ROW/FULL/FULL is a finding with capture's own exit code (11)."""
    _, repl = _site(extra_site, "check_binlog")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination="test.unused")
    _global(extra_site, "SET GLOBAL binlog_row_image='MINIMAL'")
    try:
        run = dbsync("config", "check", "--json", "--config", str(conf), env=env, check=False)
    finally:
        _global(extra_site, "SET GLOBAL binlog_row_image='FULL'")
    assert run.returncode == exitcodes.BINLOG_SETTINGS, run.stderr.decode()
    errors = [f for f in orjson.loads(run.stdout)["findings"] if f["state"] == "error"]
    assert errors[0]["check"] == "binlog" and "binlog_row_image=MINIMAL" in errors[0]["message"]
    # binlog_row_metadata MINIMAL (MySQL 8's default; absent on 5.7) is decoded through the schema history: a warning
    _global(extra_site, "SET GLOBAL binlog_row_metadata='MINIMAL'")
    try:
        run = dbsync("config", "check", "--json", "--config", str(conf), env=env, check=False)
    finally:
        _global(extra_site, "SET GLOBAL binlog_row_metadata='FULL'")
    found = {f["check"]: f for f in orjson.loads(run.stdout)["findings"]}
    assert run.returncode == 0 and found["binlog.row_metadata"]["state"] == "warning", found


@pytest.mark.parametrize("metadata", ["FULL", "MINIMAL"])
def test_binlog_housekeeping_purges_only_files_wholly_before_the_confirmed_checkpoint(extra_site, broker_settings,
                                                                                      tmp_path, metadata) -> None:
    """Issue 12 item 5 (EIP's binlog purger): `sender.purge_binlogs` purges the files before the checkpoint's, minus
    `keep_binlog_files`; without BINLOG ADMIN it warns and syncs on, and config check names the grant. Status shows
    binlog disk use, the write rate and the days of retention left."""
    _global(extra_site, f"SET GLOBAL binlog_row_metadata = '{metadata}'")
    try:
        _housekeeping(extra_site, broker_settings, tmp_path)
    finally:
        _global(extra_site, "SET GLOBAL binlog_row_metadata = 'FULL'")


def _housekeeping(extra_site, broker_settings, tmp_path) -> None:
    from dbsync_cli import config
    from dbsync_cli.sender.housekeeping import purge_target
    from dbsync_cli.sender.status import written_per_day

    assert purge_target(["b.1", "b.2", "b.3", "b.4"], "b.4", 1) == "b.3"
    assert purge_target(["b.1", "b.2", "b.3", "b.4"], "b.4", 0) == "b.4"
    assert purge_target(["b.1", "b.2"], "b.2", 1) is None and purge_target(["b.1"], "b.9", 0) is None
    admin, repl = _site(extra_site, "purge_test")
    dest = f"test.purge.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest)
    conf.write_text(conf.read_text().replace("[site_db]", "purge_binlogs = true\nkeep_binlog_files = 1\n[site_db]"))
    for _ in range(4):
        _global(extra_site, "FLUSH BINARY LOGS")
    run = dbsync("sender", "--until-idle", "--config", str(conf), env=env)  # the repl user lacks BINLOG ADMIN
    assert b"cannot purge binlogs before" in run.stderr and b"BINLOG ADMIN" in run.stderr, run.stderr[-2000:]
    checked = dbsync("config", "check", "--json", "--config", str(conf), env=env, check=False)
    assert checked.returncode == exitcodes.PRIVILEGES
    assert any("BINLOG ADMIN (for sender.purge_binlogs)" in f["message"]
               for f in orjson.loads(checked.stdout)["findings"])
    user = f"t_purge_{uuidlib.uuid4().hex[:6]}"
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'{admin.host}' IDENTIFIED BY 'pw-{user}'")
        cur.execute(f"GRANT SELECT ON `{admin.database}`.* TO '{user}'@'{admin.host}'")
        cur.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR, BINLOG ADMIN ON *.* TO '{user}'@'{admin.host}'")
    try:
        env = {**env, "DBSYNC_SITE_DB__USER": user, "DBSYNC_SITE_DB__PASSWORD": f"pw-{user}"}
        assert dbsync("config", "check", "--config", str(conf), env=env, check=False).returncode == 0
        generate(admin, seed=41, patients=2, mutations=0.0)
        with admin.with_database(None).connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            before = [r[0] for r in cur.fetchall()]
        run = dbsync("sender", "--until-idle", "--config", str(conf), env=env)
        with sqlite3.connect(tmp_path / "home-site1" / "state.sqlite") as db:
            checkpoint = orjson.loads(db.execute("SELECT value FROM checkpoint WHERE name='binlog'").fetchone()[0])
        with admin.with_database(None).connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            after = [r[0] for r in cur.fetchall()]
        index = before.index(checkpoint["file"])
        assert after[0] == before[index - 1], (before, after, checkpoint)  # one file before the checkpoint's stays
        assert set(before[index - 1:]) <= set(after)
        assert b"purged" in run.stderr, run.stderr[-2000:]
        report = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)
        assert report["binlog"]["files"] == len(after) and report["binlog"]["purge"] is True
        assert report["binlog"]["disk_bytes"] > 0
        assert report["binlog"]["retention_left_days"] is None  # the server never expires binlogs (purging does)
        assert "written_bytes_per_day" in report["binlog"] and "disk_bytes_at_retention" in report["binlog"]
        cfg = config.load(conf, "sender", env=env)
        rate = written_per_day(cfg, after[0], report["binlog"]["disk_bytes"], min_age_seconds=0)
        assert rate is not None and rate > report["binlog"]["disk_bytes"], rate  # files younger than a day
        _global(extra_site, "SET GLOBAL binlog_expire_logs_seconds = 864000")
        try:
            report = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)
        finally:
            _global(extra_site, "SET GLOBAL binlog_expire_logs_seconds = 0")
        assert 9.9 <= report["binlog"]["retention_left_days"] <= 10, report["binlog"]
    finally:
        with admin.with_database(None).connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'{admin.host}'")
        drain(broker_settings, dest, idle=1)
