"""More sender behaviour against the real services: DDL while streaming, the broker going away, TLS, topics,
malformed NDJSON, SIGTERM and supervision after a killed DB connection."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import stomp
from helpers import check_final_state, dbsync, drain, messages_of, sender_config

from dbsync_cli.broker import BrokerSettings, open_connection
from devtools.bench import delete_queues
from devtools.services import down, ensure_up
from devtools.workload.generator import generate
from devtools.workload.truth import GroundTruth

pytestmark = [pytest.mark.slow, pytest.mark.lane2]


# --------------------------------------------------------------------------------------------------- helpers


_QUEUES: list[str] = []


def queue_name(kind: str = "more") -> str:
    name = f"test.{kind}.{uuidlib.uuid4().hex[:10]}"
    _QUEUES.append(name)
    return name


@pytest.fixture(autouse=True)
def _delete_queues(services):
    """The broker is shared: leave no test queues (or their messages) behind."""
    yield
    names, _QUEUES[:] = list(_QUEUES), []
    with contextlib.suppress(Exception):
        delete_queues(services.artemis.settings(), names, timeout=30)


@pytest.fixture
def site(openmrs_db, services):
    admin = openmrs_db("site1")
    return admin, services["site1"].repl.with_database(admin.database)


def sql(db, statement: str, args: Any = None) -> list[tuple]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        rows = list(cur.fetchall())
        conn.commit()
        return rows


def checkpoint(home: Path) -> dict[str, Any] | None:
    if not (home / "state.sqlite").exists():
        return None
    with contextlib.closing(sqlite3.connect(home / "state.sqlite")) as conn:
        row = conn.execute("SELECT value FROM checkpoint WHERE name='binlog'").fetchone()
    return orjson.loads(row[0]) if row else None


def confirmed(stderr: bytes) -> int:
    found = re.findall(rb"sender: (\d+) messages confirmed", stderr)
    assert found, stderr.decode()[-2000:]
    return int(found[-1])


def master_position(admin) -> tuple[str, int]:
    file, pos = sql(admin, "SHOW MASTER STATUS")[0][:2]
    return file, int(pos)


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def caught_up(home: Path, target: tuple[str, int]) -> bool:
    cp = checkpoint(home)
    return cp is not None and not cp.get("snapshot") and (cp["file"], int(cp["pos"])) >= target


class Sender:
    """`dbsync sender` in the background, stderr in a file (a pipe could fill up and block it)."""

    def __init__(self, conf: Path, env: dict[str, str], tmp_path: Path, *args: str):
        self.err_path = tmp_path / f"sender-{uuidlib.uuid4().hex[:6]}.err"
        self.err_file = self.err_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "sender", "--config", str(conf), *args],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.err_file)

    @property
    def stderr(self) -> bytes:
        return self.err_path.read_bytes()

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err_file.close()


@contextlib.contextmanager
def background_sender(conf: Path, env: dict[str, str], tmp_path: Path, *args: str) -> Iterator[Sender]:
    sender = Sender(conf, env, tmp_path, *args)
    try:
        yield sender
    finally:
        sender.kill()


class Subscriber(stomp.ConnectionListener):
    """A live consumer of one queue (or a durable topic subscription) collecting decoded messages in order."""

    def __init__(self, broker: BrokerSettings, destination: str, *, client_id: str | None = None,
                 durable: str | None = None):
        self.frames: queue.Queue[Any] = queue.Queue()
        self.messages: list[dict[str, Any]] = []
        self.conn = open_connection(broker, listener=self, client_id=client_id, auto_decode=False)
        headers = {"consumer-window-size": "1048576"}
        if durable:
            headers.update({"subscription-type": "MULTICAST", "durable-subscription-name": durable})
        else:
            headers["subscription-type"] = "ANYCAST"
        self.headers = headers
        self.conn.subscribe(destination, id="sub", ack="client-individual", headers=headers)

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def collect(self, idle: float) -> list[dict[str, Any]]:
        """Take messages until none arrived for `idle` seconds; returns the new ones."""
        new = []
        while True:
            try:
                frame = self.frames.get(timeout=idle)
            except queue.Empty:
                self.messages.extend(new)
                return new
            new.extend(messages_of(frame))
            self.conn.ack(frame.headers["ack"])

    def wait_for(self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.messages):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; {len(self.messages)} messages so far")
            self.collect(0.5)

    def close(self, unsubscribe: bool = False) -> None:
        if unsubscribe:
            self.conn.unsubscribe(id="sub", headers=self.headers)  # removes a durable subscription's queue
        self.conn.disconnect()


def with_children(pid: int) -> list[int]:
    """The process and its children (the sender's capture process holds the binlog stream)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of a process and its children (from /proc): to find their connections in the server's
    processlist."""
    inodes = set()
    for one in with_children(pid):
        for fd in Path(f"/proc/{one}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def connections_of(admin, pid: int, user: str) -> list[tuple[int, str]]:
    """(thread id, command) of the server connections that `pid` holds as `user`."""
    ports = local_ports(pid)
    rows = sql(admin, "SELECT id, host, command FROM information_schema.processlist WHERE user = %s", (user,))
    return [(tid, command) for tid, host, command in rows if host and int(host.rsplit(":", 1)[1]) in ports]


# --------------------------------------------------------------------------------------------------- DDL


def test_ddl_while_streaming_new_column_appears_in_later_messages(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    generate(admin, seed=5, patients=4, mutations=0)
    ids = [r[0] for r in sql(admin, "SELECT person_attribute_id FROM person_attribute ORDER BY 1 LIMIT 3")]
    assert len(ids) == 3
    uuid_of = dict(sql(admin, "SELECT person_attribute_id, uuid FROM person_attribute"))
    dest = queue_name("ddl")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    sub = Subscriber(broker_settings, dest)
    try:
        with background_sender(conf, env, tmp_path) as sender:
            sub.wait_for(lambda ms: any(m["table"] == "person_attribute" for m in ms))
            sub.collect(2)  # the rest of the snapshot
            sql(admin, "UPDATE person_attribute SET void_reason = 'before ddl' WHERE person_attribute_id = %s",
                (ids[0],))
            sub.wait_for(lambda ms: any(m["uuid"] == uuid_of[ids[0]] and m["op"] == "u" for m in ms))
            earlier = list(sub.messages)
            sql(admin, "ALTER TABLE person_attribute ADD COLUMN note VARCHAR(50) NULL")
            sql(admin, "UPDATE person_attribute SET note = 'noted' WHERE person_attribute_id = %s", (ids[1],))
            fresh = str(uuidlib.uuid4())
            sql(admin, "INSERT INTO person_attribute (person_id, value, person_attribute_type_id, creator, "
                       "date_created, uuid, note) SELECT person_id, value, person_attribute_type_id, creator, "
                       "date_created, %s, 'fresh note' FROM person_attribute WHERE person_attribute_id = %s",
                (fresh, ids[2]))
            sub.wait_for(lambda ms: any(m["uuid"] == fresh for m in ms), timeout=30)
            later = sub.messages[len(earlier):]
            sql(admin, "ALTER TABLE person_attribute DROP COLUMN note")
            sql(admin, "UPDATE person_attribute SET void_reason = 'after drop' WHERE person_attribute_id = %s",
                (ids[1],))
            sub.wait_for(lambda ms: any((m["data"] or {}).get("void_reason") == "after drop" for m in ms), timeout=30)
            assert sender.terminate() == 0, sender.stderr.decode()[-2000:]
            err = sender.stderr.decode()
    finally:
        sub.close()
    # enrich noticed the schema change itself: no crash and restart of the chain was needed
    assert "sender chain failed" not in err, err[-2000:]
    assert "note" not in sub.messages[-1]["data"]
    earlier_pa = [m for m in earlier if m["table"] == "person_attribute"]
    assert len(earlier_pa) >= 3 and all("note" not in m["data"] for m in earlier_pa)
    updated = [m for m in later if m["uuid"] == uuid_of[ids[1]]]
    assert updated and updated[-1]["op"] == "u" and updated[-1]["data"]["note"] == "noted", updated
    inserted = [m for m in later if m["uuid"] == fresh]
    assert inserted and inserted[-1]["op"] == "c" and inserted[-1]["data"]["note"] == "fresh note", inserted
    # the rest of the row is still right after the schema change
    assert inserted[-1]["data"]["person_id"]["uuid"] and inserted[-1]["data"]["person_id"]["$ref"] == "person"


# --------------------------------------------------------------------------------------------------- broker down


def test_broker_down_mid_stream_reconnects_and_loses_nothing(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = queue_name("down")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=200)
    home = tmp_path / "home-site1"
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    truths: list[GroundTruth] = []
    try:
        with background_sender(conf, env, tmp_path) as sender:
            truths.append(generate(admin, seed=31, patients=30, mutations=0.3, transaction_rows=300))
            down(["artemis"])
            assert sender.proc.poll() is None
            truths.append(generate(admin, seed=32, patients=30, mutations=0.3, transaction_rows=300))
            time.sleep(2)
            ensure_up(["artemis"])
            truths.append(generate(admin, seed=33, patients=10, mutations=0.3, transaction_rows=300))
            target = master_position(admin)
            wait_until(lambda: caught_up(home, target), 120, "the sender to catch up after the broker came back")
            assert sender.terminate() == 0, sender.stderr.decode()[-2000:]
            err = sender.stderr
    finally:
        ensure_up(["artemis"])
    assert b"publish failed" in err and b"retrying" in err, err.decode()[-2000:]
    assert broker_settings.password.encode() not in err
    rest = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    assert confirmed(rest.stderr) == 0, "the running sender should have delivered everything itself"
    messages = drain(broker_settings, dest)
    check_final_state(admin, truths, messages)
    # unconfirmed batches were resent in order on the new connection: the queue keeps binlog order (a batch the
    # broker had before it went down may be there twice, the copy after it: the receiver drops it by its id)
    first = {m["id"]: m for m in reversed(messages)}
    streamed = [m for m in messages if not m["snapshot"] and first[m["id"]] is m]
    order = [(m["source"]["file"], m["source"]["pos"], m["source"]["row"]) for m in streamed]
    assert order == sorted(order), "messages reached the queue out of binlog order"


# --------------------------------------------------------------------------------------------------- TLS


def test_tls_publish_and_rogue_ca_fails_clearly(site, services, broker_tls_settings, tmp_path) -> None:
    admin, repl = site
    generate(admin, seed=41, patients=2, mutations=0)
    dest = queue_name("tls")
    conf, env = sender_config(tmp_path, repl, broker_tls_settings, destination=dest)
    assert "stomp+ssl://" in conf.read_text()
    run = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    sent = confirmed(run.stderr)
    assert sent > 50
    assert len(drain(broker_tls_settings, dest, idle=1.5)) == sent

    rogue = dataclasses.replace(broker_tls_settings, ca_file=services.artemis.rogue_ca_file)
    rogue_conf, rogue_env = sender_config(tmp_path, repl, rogue, destination=dest, site="rogue")
    rogue_home = tmp_path / "home-rogue"
    source = {"server_id": 1, "file": "mysql-bin.000001", "pos": 4, "row": 0, "gtid": None, "ts_ms": 0,
              "snapshot": False}
    lines = b"".join(orjson.dumps({"v": 1, "id": f"rogue:{i}", "site": "rogue", "table": "person", "op": "c",
                                   "uuid": str(uuidlib.uuid4()), "snapshot": False, "sent": "",
                                   "source": {**source, "row": i}, "data": {}}) + b"\n" for i in range(3))
    started = time.monotonic()
    pub = dbsync("publish", "--config", str(rogue_conf), env=rogue_env, stdin=lines, timeout=60, check=False)
    err = pub.stderr.decode()
    assert pub.returncode not in (0, None), err
    assert time.monotonic() - started < 45
    last = err.strip().splitlines()[-1]
    assert last.startswith("dbsync: ") and "certificate" in last and broker_tls_settings.address in last, err
    assert checkpoint(rogue_home) is None, "the checkpoint moved although nothing was confirmed"
    sender = dbsync("sender", "--config", str(rogue_conf), "--until-idle", env=rogue_env, timeout=60, check=False)
    sender_err = sender.stderr.decode()
    assert sender.returncode not in (0, None) and "certificate" in sender_err.strip().splitlines()[-1], sender_err
    assert checkpoint(rogue_home) is None
    for text in (err, sender_err):
        assert broker_tls_settings.password not in text and repl.password not in text


# --------------------------------------------------------------------------------------------------- topic


def test_topic_mode_durable_subscription_receives_everything(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    generate(admin, seed=51, patients=3, mutations=0.3)
    topic = queue_name("topic")
    client_id, durable = f"dbsync-test-{uuidlib.uuid4().hex[:8]}", "central"
    first = Subscriber(broker_settings, topic, client_id=client_id, durable=durable)
    first.close()  # the durable subscription exists now; nobody is connected while the sender publishes
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=topic)
    env = {**env, "DBSYNC_BROKER__DESTINATION_TYPE": "topic"}
    sent = confirmed(dbsync("sender", "--config", str(conf), "--until-idle", env=env).stderr)
    assert sent > 100
    again = Subscriber(broker_settings, topic, client_id=client_id, durable=durable)
    try:
        again.wait_for(lambda ms: len(ms) >= sent, timeout=60)
        again.collect(1)
    finally:
        again.close(unsubscribe=True)
    ids = [m["id"] for m in again.messages]
    assert len(ids) == sent == len(set(ids))


# --------------------------------------------------------------------------------------------------- malformed input


def test_malformed_lines_to_enrich_and_publish_are_reported_and_skipped(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = queue_name("malformed")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, snapshot="never")
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    generate(admin, seed=61, patients=1, mutations=0)
    events = [orjson.loads(line) for line in
              dbsync("capture", "--config", str(conf), "--until-idle", env=env).stdout.splitlines()]
    rows = [e for e in events if e["op"] == "c" and e["table"] == "person"][:3]
    assert len(rows) == 3
    no_key = {**rows[0], "after": {k: v for k, v in rows[0]["after"].items() if k != "person_id"}}
    lines = [
        orjson.dumps(rows[0]),
        b'{"op": "c", "table": "person", "after": {',  # line 2: truncated JSON
        b"[1, 2, 3]",  # line 3: not an object
        b'{"op": "c", "table": "person", "after": {"person_id": 1, "gender": "\xff\xfe"}}',  # line 4: bad UTF-8
        orjson.dumps({**rows[1], "table": "no_such_table"}),  # line 5
        orjson.dumps(no_key),  # line 6
        orjson.dumps(rows[1]),
        orjson.dumps(rows[2]),
    ]
    enriched = dbsync("enrich", "--config", str(conf), env=env, stdin=b"\n".join(lines) + b"\n")
    err = enriched.stderr.decode()
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 5, err
    assert "line 2" in errors[0] and "malformed JSON" in errors[0]
    assert "line 3" in errors[1] and "object" in errors[1]
    assert "line 4" in errors[2]
    assert "no_such_table" in errors[3] and "not synced" in errors[3]
    assert "person" in errors[4] and "malformed" in errors[4]
    out = [orjson.loads(line) for line in enriched.stdout.splitlines()]
    # the two events it could not use are drop records in their place, for publish to count (issue 25)
    assert [(o["dropped"]["reason"], o["source"]) for o in out if "dropped" in o] == [
        ("not_synced", rows[1]["source"]), ("malformed", rows[0]["source"])]
    messages = [o for o in out if o.get("op") != "h"]
    assert [m["uuid"] for m in messages] == [r["after"]["uuid"] for r in rows]

    no_id = {k: v for k, v in messages[1].items() if k != "id"}
    lines = [
        orjson.dumps(messages[0]),
        b'{"v": 1, "id": ',  # line 2
        b'"just a string"',  # line 3
        b'{"v": 1, "id": "x:1", "table": "person", "data": {"a": "\xc3\x28"}}',  # line 4: bad UTF-8
        orjson.dumps(no_id),  # line 5: no id (the broker's duplicate detection and the receiver need it)
        orjson.dumps(messages[1]),
        orjson.dumps(messages[2]),
    ]
    published = dbsync("publish", "--config", str(conf), env=env, stdin=b"\n".join(lines) + b"\n", timeout=60)
    err = published.stderr.decode()
    errors = [line for line in err.splitlines() if "ERROR" in line]
    assert len(errors) == 4, err
    for number, line in zip((2, 3, 4), errors, strict=False):
        assert f"line {number}" in line, line
    assert "id" in errors[3] and "person" in errors[3], errors[3]
    got = drain(broker_settings, dest, idle=1.5)
    assert [m["id"] for m in got] == [m["id"] for m in messages]
    assert checkpoint(tmp_path / "home-site1") == messages[2]["source"]


# --------------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_exits_0_and_the_next_run_sends_nothing_twice(site, broker_settings, tmp_path) -> None:
    admin, repl = site
    dest = queue_name("term")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    home = tmp_path / "home-site1"
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    baseline = drain(broker_settings, dest, idle=1)
    truths = [generate(admin, seed=71, patients=250, mutations=0.3, transaction_rows=0, batch_rows=200)]
    with background_sender(conf, env, tmp_path) as sender:
        wait_until(lambda: (checkpoint(home) or {}).get("row", -1) > 500, 60, "the sender to be mid-transaction")
        assert sender.terminate() == 0, sender.stderr.decode()[-2000:]
        first = confirmed(sender.stderr)
    stopped_at = checkpoint(home)
    assert stopped_at is not None and stopped_at["row"] >= 0, "should have stopped inside the big transaction"
    sent_before = drain(broker_settings, dest, idle=1)
    assert len(sent_before) == first
    assert sent_before[-1]["source"] == stopped_at, "checkpoint must be the last confirmed message"
    rest = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    second = confirmed(rest.stderr)
    after = drain(broker_settings, dest)
    assert second == len(after) > 0
    first_after = after[0]["source"]
    assert (first_after["file"], first_after["pos"]) == (stopped_at["file"], stopped_at["pos"])
    assert first_after["row"] > stopped_at["row"], "the next run resumed inside the transaction"
    ids = [m["id"] for m in sent_before + after]
    assert len(ids) == len(set(ids)), "a message was sent twice across the SIGTERM"
    check_final_state(admin, truths, baseline + sent_before + after)


def test_the_capture_process_holds_the_binlog_stream_and_dies_with_a_killed_sender(site, services, broker_settings,
                                                                                  tmp_path) -> None:
    """`dbsync sender` decodes the binlog in a child process; kill -9 of the sender leaves no orphan reading the
    site's binlog, and the next sender goes on from the checkpoint with nothing lost."""
    admin, repl = site
    dest = queue_name("child")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    home = tmp_path / "home-site1"
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    truths = [generate(admin, seed=91, patients=30, mutations=0.2, transaction_rows=100)]
    with background_sender(conf, env, tmp_path) as sender:
        readers: list[int] = []  # multiprocessing's resource tracker is a child too

        def binlog_reader() -> bool:
            readers[:] = [c for c in with_children(sender.proc.pid)[1:] if any(
                command == "Binlog Dump" for _, command in connections_of(services["site1"].admin, c, repl.user))]
            return bool(readers)

        wait_until(binlog_reader, 30, "a child of the sender to read the binlog")
        child = readers[0]
        sender.proc.kill()
        sender.proc.wait()
        wait_until(lambda: not Path(f"/proc/{child}").exists() or
                   "zombie" in Path(f"/proc/{child}/status").read_text(), 10, "the capture process to end")
    truths.append(generate(admin, seed=92, patients=5, mutations=0.2))
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    assert checkpoint(home) is not None
    check_final_state(admin, truths, drain(broker_settings, dest))


def test_capture_in_the_sender_process_when_configured_so(site, broker_settings, tmp_path) -> None:
    """sender.capture_process = false: one process (a one-core site), the same messages."""
    admin, repl = site
    dest = queue_name("oneproc")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    env = {**env, "DBSYNC_SENDER__CAPTURE_PROCESS": "false"}
    truths = [generate(admin, seed=93, patients=10, mutations=0.2)]
    run = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    assert confirmed(run.stderr) > 0
    check_final_state(admin, truths, drain(broker_settings, dest))


# --------------------------------------------------------------------------------------------------- supervision


def test_killed_db_connections_restart_the_chain_without_loss(site, services, broker_settings, tmp_path) -> None:
    admin, repl = site
    server_admin = services["site1"].admin
    dest = queue_name("kill")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    home = tmp_path / "home-site1"
    dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    truths: list[GroundTruth] = []
    with background_sender(conf, env, tmp_path) as sender:
        killed: list[str] = []
        for round_, seed in enumerate((81, 82, 83)):
            truths.append(generate(admin, seed=seed, patients=20, mutations=0.3, transaction_rows=200))
            time.sleep(0.5)
            conns: list[tuple[int, str]] = []
            deadline = time.monotonic() + 30
            while not any(c == "Binlog Dump" for _, c in conns) and time.monotonic() < deadline:
                time.sleep(0.2)
                conns = connections_of(server_admin, sender.proc.pid, repl.user)
            for thread_id, command in conns:
                if round_ == 0 and command != "Binlog Dump" or round_ == 1 and command == "Binlog Dump":
                    continue  # first the binlog stream, then the others, then all
                with contextlib.suppress(Exception):
                    sql(server_admin, f"KILL {int(thread_id)}")
                killed.append(command)
        truths.append(generate(admin, seed=84, patients=5, mutations=0.3))
        target = master_position(admin)
        wait_until(lambda: caught_up(home, target), 120, "the sender to catch up after the kills")
        assert sender.proc.poll() is None, "supervision should keep the sender running"
        assert sender.terminate() == 0
        err = sender.stderr.decode()
    assert "Binlog Dump" in killed and any(c != "Binlog Dump" for c in killed), killed
    assert "sender chain failed" in err and "restarting in" in err, err[-3000:]
    assert repl.password not in err
    rest = dbsync("sender", "--config", str(conf), "--until-idle", env=env)
    assert confirmed(rest.stderr) == 0
    check_final_state(admin, truths, drain(broker_settings, dest))


def test_a_resumed_snapshot_counts_on_from_where_it_stopped(site, broker_settings, tmp_path) -> None:
    """Seen: the progress bar restarted at 0 after a resume and froze at 46 % when the load ended; status showed no
    percent done. The checkpoint carries rows done and total, status shows them, the bar starts where it stopped."""
    import io
    import threading

    from rich.console import Console

    from dbsync_cli.config import load
    from dbsync_cli.sender import snapshot
    from dbsync_cli.sender.checkpoint import CheckpointStore
    from dbsync_cli.sender.run import capture_settings, load_model

    admin, repl = site
    generate(admin, seed=31, patients=20, mutations=0.0)
    dest = queue_name("resume")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=100)
    dbsync("sender", "--config", str(conf), "--max-events", "300", env=env)
    report = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)
    checkpoint = report["checkpoint"]
    total = checkpoint["snapshot_total"]
    # without a terminal the total is InnoDB's estimate (no COUNT(*) of every table before the first row)
    assert checkpoint["snapshot"] and checkpoint["snapshot_done"] == 300 and total > 0, checkpoint
    assert checkpoint["snapshot_percent"] == round(min(100.0, 100 * 300 / total), 1)
    assert any(f"{checkpoint['snapshot_percent']:.1f} % (300 of {total:,} rows)" in n for n in report["notes"])

    cfg = load(conf, "sender", env)
    store = CheckpointStore(cfg.home)
    resume = store.load()
    store.close()
    settings = capture_settings(cfg, load_model(cfg), threading.Event(), progress=True)
    out = io.StringIO()
    snap = snapshot.Snapshot(settings, resume, resume["epoch"],
                             console=Console(file=out, force_terminal=True, width=120))
    sources = [event["source"] for event in snap.events()]
    dones = [source["done"] for source in sources]
    assert dones[0] == 301 and dones == list(range(301, dones[-1] + 1))
    assert {source["total"] for source in sources} == {total}  # counted once, when the load started
    shown = out.getvalue()
    assert f"{dones[-1]}/{dones[-1]}" in shown and " 0/" not in shown, shown[-500:]


def test_on_a_terminal_log_lines_print_above_the_progress_bar(site, broker_settings, tmp_path) -> None:
    """Seen: log lines printed into the snapshot's progress bar. On a terminal the logs go through rich's handler
    on the bar's own console, so each log line stands on a line of its own and the bar ends at 100 %."""
    import pty

    admin, repl = site
    generate(admin, seed=32, patients=10, mutations=0.0)
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=queue_name("tty"))
    leader, follower = pty.openpty()
    with open(tmp_path / "events.ndjson", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "capture", "--until-idle", "--config", str(conf)],
                                env={**env, "COLUMNS": "120", "TERM": "xterm"}, stdout=out, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    rows = (tmp_path / "events.ndjson").read_bytes().count(b'"op":"r"')
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace")).replace("\r", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    logged = [line for line in lines if "snapshot at binlog position" in line]
    assert logged and all(re.match(r"^(\[?\d\d:\d\d:\d\d\]? +)?INFO ", line) for line in logged), lines[:20]
    assert all("━" not in line for line in logged), logged  # no bar fragment on a log line
    assert any(f"{rows}/{rows}" in line for line in lines), lines[-10:]


@pytest.mark.parametrize("metadata", ["FULL", "MINIMAL"])
@pytest.mark.parametrize("method", ["mariadb", "lock", "log_status"])
def test_each_snapshot_method_matches_its_position_while_the_site_writes(site, services, broker_settings, tmp_path,
                                                                         method, metadata) -> None:
    """Issue 12 item 2: the snapshot's binlog position found MariaDB's way (binlog_snapshot_*), MySQL 5.7's way
    (FLUSH TABLES WITH READ LOCK held while the position is read) and MySQL 8's (two equal reads around the
    transaction's start), forced on MariaDB, while the site writes, with row metadata FULL and MINIMAL: no row
    is lost or stale either way."""
    admin, repl = site
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(f"SET GLOBAL binlog_row_metadata = '{metadata}'")
    try:
        _snapshot_while_writing(admin, repl, services, broker_settings, tmp_path, method)
    finally:
        with admin.with_database(None).connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL binlog_row_metadata = 'FULL'")


def _snapshot_while_writing(admin, repl, services, broker_settings, tmp_path, method: str) -> None:
    import threading

    truths = [generate(admin, seed=51, patients=40, mutations=0.0)]
    dest = queue_name("method")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination=dest, batch=200)
    conf.write_text(conf.read_text().replace("[site_db]", f'snapshot_method = "{method}"\n[site_db]'))
    if method == "lock":  # FLUSH TABLES WITH READ LOCK needs RELOAD
        inst = services["site1"]
        env = {**env, "DBSYNC_SITE_DB__USER": inst.admin.user, "DBSYNC_SITE_DB__PASSWORD": inst.admin.password}

    def write() -> None:
        truths.append(generate(admin, seed=52, patients=20, mutations=0.3, transaction_rows=50))

    writer = threading.Thread(target=write)
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "sender", "--until-idle", "--config", str(conf)],
                            env=env, stderr=subprocess.PIPE)
    writer.start()
    writer.join()
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert f"snapshot transaction opened ({method})".encode() in err, err.decode()[-2000:]
    dbsync("sender", "--until-idle", "--config", str(conf), env=env)
    check_final_state(admin, truths, drain(broker_settings, dest))


def test_a_snapshot_method_the_server_lacks_is_one_line(site) -> None:
    """log_status is MySQL 8's table: a server without it (read as MySQL's, on MariaDB) stops with one line
    naming the alternative."""
    from dbsync_cli.sender import servers
    from dbsync_cli.sender.binlog import CaptureStop

    _admin, repl = site
    with repl.connect() as conn, pytest.raises(CaptureStop) as stop:
        servers._read_log_status(conn, "mysql")
    assert stop.value.code == 11 and "log_status cannot be read" in str(stop.value) and "lock" in str(stop.value)
