"""The field bed's tools (devtools/field) do what they say, on the real services: the link proxy forwards MariaDB
and STOMP, adds its latency each way, caps bandwidth, flaps and cuts; a faketime'd MariaDB's clock is off by its
offset; the central editors' edits land in central and in their journal; hostile frames reach the broker."""

from __future__ import annotations

import dataclasses
import json
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql
import pytest

from dbsync_cli.broker import open_connection
from dbsync_cli.db import DbParams
from devtools.field.clock import start_skewed_mariadb
from devtools.field.editors import VOID_REASON, CentralEditors
from devtools.field.hostile import KIND_HEADER, KINDS, send_hostile
from devtools.field.link import LinkProxy
from devtools.field.rawstomp import RawStomp
from devtools.services import destroy_mariadb
from devtools.services.common import port_offset


def _through(db: DbParams, proxy: LinkProxy) -> DbParams:
    return dataclasses.replace(db, port=proxy.port)


def _round_trip(conn: pymysql.connections.Connection) -> float:
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchall()
    return time.monotonic() - started


def _refused(db: DbParams) -> bool:
    try:
        db.connect(connect_timeout=3).close()
    except pymysql.MySQLError:
        return True
    return False


def test_the_link_forwards_mariadb_and_adds_its_latency_each_way(services) -> None:
    central = services["central"]
    with central.admin.connect() as direct:
        plain = statistics.median(_round_trip(direct) for _ in range(5))
    with LinkProxy(central.host, central.port, latency_s=0.15) as link:
        conn = _through(central.admin, link).connect()
        try:
            slowed = statistics.median(_round_trip(conn) for _ in range(5))
            with conn.cursor() as cur:  # data after the first byte is late too: a 2 MB answer still costs 0.3 s
                started = time.monotonic()
                cur.execute("SELECT REPEAT('x', 2000000)")
                assert len(cur.fetchone()[0]) == 2_000_000
                big = time.monotonic() - started
        finally:
            conn.close()
        print(f"\nround trip direct {plain * 1000:.1f} ms, through a 150 ms link {slowed * 1000:.1f} ms, "
              f"2 MB answer {big:.2f} s")
        assert plain < 0.05
        assert 0.29 <= slowed <= 0.45  # 150 ms up + 150 ms down
        assert 0.29 <= big <= 1.0
        time.sleep(0.4)  # the goodbye crosses the link too
        assert link.bytes_down > 2_000_000 and link.bytes_up > 100
        assert (link.connections_accepted, link.connections_dropped, link.connections_refused) == (1, 0, 0)


def test_the_link_caps_bandwidth_each_way_with_a_token_bucket(services) -> None:
    central = services["central"]
    rate = 100_000  # bytes/s
    with LinkProxy(central.host, central.port, bandwidth_bytes_per_s=rate) as link:
        conn = _through(central.admin, link).connect()
        try:
            with conn.cursor() as cur:
                started = time.monotonic()
                cur.execute("SELECT REPEAT('x', 300000)")
                cur.fetchall()
                down = 300_000 / (time.monotonic() - started)
                started = time.monotonic()
                cur.execute("SELECT LENGTH(%s)", ("y" * 200_000,))
                assert cur.fetchone()[0] == 200_000
                up = 200_000 / (time.monotonic() - started)
        finally:
            conn.close()
    print(f"\ncap {rate} B/s: down {down:.0f} B/s, up {up:.0f} B/s")
    assert 0.8 * rate <= down <= 1.1 * rate
    assert 0.8 * rate <= up <= 1.1 * rate
    assert link.bytes_down >= 300_000 and link.bytes_up >= 200_000


def test_the_link_forwards_stomp_to_artemis(services, broker_settings) -> None:
    destination = f"test.field.link.{uuid.uuid4().hex[:8]}"
    got: queue.Queue[Any] = queue.Queue()

    class Listener:
        def on_message(self, frame: Any) -> None:
            got.put(frame)

    with LinkProxy(broker_settings.host, broker_settings.port, latency_s=0.05) as link:
        conn = open_connection(dataclasses.replace(broker_settings, port=link.port), listener=Listener())
        try:
            conn.subscribe(destination, id="field", ack="auto", headers={"subscription-type": "ANYCAST"})
            time.sleep(0.3)
            conn.send(destination, "through the link", headers={"destination-type": "ANYCAST", "receipt": "r1"})
            assert got.get(timeout=10).body == "through the link"
        finally:
            conn.disconnect()
        assert link.connections_accepted == 1 and link.bytes_up > 100 and link.bytes_down > 100


def test_a_flapping_link_drops_and_refuses_for_t_seconds_every_p_seconds(services) -> None:
    central = services["central"]
    with LinkProxy(central.host, central.port, drop_every_s=3.0, drop_for_s=1.5) as link:
        started = time.monotonic()
        db = _through(central.admin, link)
        conn = db.connect()
        assert _round_trip(conn) < 1
        time.sleep(max(0.0, started + 3.3 - time.monotonic()))  # inside the first outage, 3.0 - 4.5 s
        assert link.is_down()
        with pytest.raises(pymysql.MySQLError):  # the open connection was reset
            _round_trip(conn)
        assert _refused(db)
        assert link.connections_dropped == 1 and link.connections_refused >= 1
        time.sleep(max(0.0, started + 4.7 - time.monotonic()))  # up again
        assert not link.is_down()
        conn = db.connect()
        assert _round_trip(conn) < 1
        time.sleep(max(0.0, started + 6.3 - time.monotonic()))  # the second outage, 6.0 - 7.5 s
        assert _refused(db)
        with pytest.raises(pymysql.MySQLError):
            _round_trip(conn)
        assert link.outages == 2 and link.connections_dropped == 2 and link.connections_accepted == 2
        assert link.bytes_up > 0 and link.bytes_down > 0


def test_cut_resets_every_open_connection_and_refuses_new_ones_for_its_length(services) -> None:
    central = services["central"]
    with LinkProxy(central.host, central.port) as link:
        db = _through(central.admin, link)
        conns = [db.connect() for _ in range(12)]
        assert link.active == 12
        link.cut(1.0)
        cut_at = time.monotonic()
        assert link.active == 0 and link.connections_dropped == 12
        for conn in conns:
            with pytest.raises(pymysql.MySQLError):
                _round_trip(conn)
        assert _refused(db)
        assert _raw_connect_refused(link.port)
        time.sleep(max(0.0, cut_at + 1.1 - time.monotonic()))
        db.connect().close()
        assert link.connections_refused >= 2 and link.connections_accepted == 13


def _raw_connect_refused(port: int) -> bool:
    """A refused connection is accepted and reset at once: the connect or the first read fails (or reads nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            return sock.recv(16) == b""
    except (ConnectionResetError, ConnectionRefusedError):
        return True


def test_the_link_command_prints_its_port_and_counters_on_sigterm(services) -> None:
    central = services["central"]
    proc = subprocess.Popen([sys.executable, "-m", "devtools.field.link", "--target", f"{central.host}:{central.port}",
                             "--latency", "0.02", "--kbit", "8000"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        port = int(proc.stdout.readline().split()[1])
        conn = dataclasses.replace(central.admin, port=port).connect()
        _round_trip(conn)
        conn.close()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    counters = dict(item.split("=") for item in out.split(": ", 1)[1].split())
    assert out.startswith("stopped by SIGTERM")
    assert int(counters["bytes_up"]) > 0 and int(counters["bytes_down"]) > 0
    assert counters["connections_accepted"] == "1"


def _server_clock_offset(db: DbParams) -> float:
    with db.connect() as conn, conn.cursor() as cur:
        before = time.time()
        cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        server = float(cur.fetchone()[0])
        return server - (before + time.time()) / 2


def _last_row_event_time(datadir: Path) -> float:
    """When the newest row event of the binlog before the last one says it happened (mariadb-binlog prints the
    event times in our local time zone, to the second)."""
    import datetime as dt
    import shutil

    log = sorted(datadir.glob("mysql-bin.[0-9]*"))[-2]
    text = subprocess.run([shutil.which("mariadb-binlog") or "mariadb-binlog", str(log)], capture_output=True,
                          text=True, check=True).stdout
    stamp = [line for line in text.splitlines() if line.startswith("#") and "Write_rows" in line][-1][1:16]
    return dt.datetime.strptime(stamp, "%y%m%d %H:%M:%S").timestamp()


def test_a_faketime_mariadb_runs_its_clock_ahead_or_behind(services) -> None:
    port = 23471 + port_offset()
    inst = start_skewed_mariadb("field-clock", "+10m", port=port, server_id=471)
    try:
        ahead = _server_clock_offset(inst.admin)
        with inst.admin.connect() as conn, conn.cursor() as cur:
            started = time.monotonic()
            cur.execute("SELECT SLEEP(1)")  # the server's timers keep their length (monotonic clocks are real)
            slept = time.monotonic() - started
            cur.execute("CREATE DATABASE IF NOT EXISTS field_clock")
            cur.execute("CREATE TABLE IF NOT EXISTS field_clock.t (a INT)")
            cur.execute("INSERT INTO field_clock.t VALUES (1)")
            cur.execute("FLUSH BINARY LOGS")
        binlog_ahead = _last_row_event_time(inst.datadir) - time.time()  # what a sender reads as source.ts_ms
        inst = start_skewed_mariadb("field-clock", "-5m", port=port, server_id=471)  # restarts with the new offset
        behind = _server_clock_offset(inst.admin)
    finally:
        destroy_mariadb(inst)
    normal = _server_clock_offset(services["central"].admin)
    print(f"\nclock offsets: +10m server {ahead:+.2f} s (binlog events {binlog_ahead:+.0f} s), "
          f"-5m server {behind:+.2f} s, central {normal:+.2f} s")
    assert abs(ahead - 600) < 3
    assert abs(binlog_ahead - 600) < 5
    assert abs(behind + 300) < 3
    assert abs(normal) < 3  # the test machine and the other servers keep the right time
    assert 0.9 <= slept <= 1.5


def test_central_editors_make_real_edits_found_in_central_and_in_their_journal(openmrs_db, tmp_path) -> None:
    from devtools.workload import generate

    db = openmrs_db("central")
    generate(db, seed=11, patients=6, visits_per_patient=1, encounters_per_visit=1, obs_per_encounter=3)
    journal_file = tmp_path / "edits.ndjson"
    editors = CentralEditors(db.with_database(None), db.database, seed=3, rate_per_s=25, journal_path=journal_file)
    with editors:
        time.sleep(3)
    journal = editors.journal()
    kinds = Counter(entry["kind"] for entry in journal)
    print(f"\neditors: {editors.counts()} in 3 s")
    assert len(journal) >= 30 and editors.counts().get("failed", 0) == 0, editors.last_error
    assert kinds["edit"] > 0 and kinds["void"] > 0 and kinds["unvoid"] > 0
    assert [json.loads(line) for line in journal_file.read_text().splitlines()] == journal
    assert {entry["table"] for entry in journal} == {"person", "person_name", "patient_identifier", "obs", "encounter"}
    assert all(entry["kind"] != "edit" for entry in journal if entry["table"] == "obs")
    last = {(entry["table"], entry["uuid"]): entry for entry in journal}  # the newest edit of each row is what it holds
    with db.connect(dict_rows=True) as conn, conn.cursor() as cur:
        for (table, row_uuid), entry in last.items():
            cur.execute(f"SELECT * FROM `{table}` WHERE uuid = %s", (row_uuid,))
            row = cur.fetchone()
            for column, value in entry["values"].items():
                held = row[column]
                assert (str(held) if held is not None and isinstance(value, str) else held) == value, (entry, column)
            if entry["kind"] == "void":
                assert row["voided"] == 1 and row["void_reason"] == VOID_REASON and row["voided_by"] == 1
            elif entry["kind"] == "unvoid":
                assert row["voided"] == 0 and row["date_voided"] is None
            if entry["kind"] != "void" and "date_changed" in row:
                assert row["changed_by"] == 1 and str(row["date_changed"]) == entry["values"]["date_changed"]


def test_hostile_frames_sent_as_a_site_reach_the_broker(services) -> None:
    artemis = services.artemis
    destination = f"test.trust.field{uuid.uuid4().hex[:8]}"  # a destination the site users may send to
    sent = send_hostile(artemis, "site1", destination, 2 * len(KINDS), seed=5)
    assert sent == dict.fromkeys(KINDS, 2)
    got: Counter[str] = Counter()
    users, nul_headers = set(), []
    with RawStomp(artemis.settings()) as consumer:
        consumer.subscribe(destination)
        consumer.sock.settimeout(5)
        while sum(got.values()) < sum(sent.values()):
            frame = consumer.read_frame()
            assert frame is not None and frame.command == "MESSAGE", frame
            got[frame.header(KIND_HEADER) or "?"] += 1
            users.add(frame.header("JMSXUserID"))
            if frame.header(KIND_HEADER) == "nul_header":
                nul_headers.append(frame.headers["dbsync-table"])
    assert got == Counter(sent)
    assert users == {"site1"}  # the broker stamped the site's login on every one
    assert nul_headers == [b"person\x00name"] * 2  # a raw reader gets the NUL; stomp.py's parser would cut there


def test_the_link_serves_many_connections_at_once(services) -> None:
    """Forty clients log in and query through one 100 ms link at once: none waits for another (one after the
    other this would take 40 × ~0.7 s)."""
    central = services["central"]
    with LinkProxy(central.host, central.port, latency_s=0.1) as link:
        db = _through(central.admin, link)
        times: list[float] = []

        def client() -> None:
            with db.connect() as conn:
                times.append(_round_trip(conn))

        threads = [threading.Thread(target=client) for _ in range(40)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        print(f"\n40 clients through a 100 ms link: {elapsed:.2f} s in all")
        assert len(times) == 40 and elapsed < 8, (elapsed, times)  # one after the other: over 30 s
        assert all(0.19 <= t < 3 for t in times), times
        assert link.connections_accepted == 40
