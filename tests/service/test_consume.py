"""`dbsync consume` against the real Artemis and the central MariaDB: deliveries land in the inbox exactly once,
are acknowledged only after the commit, survive kill -9, and odd bodies (not JSON, not UTF-8, compressed) go in
too (apply judges them). Topic mode keeps messages for a durable subscription while consume is down."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
import zlib
from typing import Any

import orjson
import pytest
import stomp
from helpers import dbsync, drain, drop_schema, receiver_config

from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.sender.publish import Publisher, PublishSettings


@pytest.fixture
def central(openmrs_db, services):
    """A fresh central OpenMRS database and a unique state schema name (dropped afterwards)."""
    db = openmrs_db("central", metadata=False)
    schema = f"t_state_{uuidlib.uuid4().hex[:10]}"
    yield db, schema
    drop_schema(services["central"].admin, schema)


def messages(count: int, site: str = "site1", prefix: str | None = None) -> list[dict[str, Any]]:
    prefix = prefix or uuidlib.uuid4().hex[:8]
    return [{"v": 1, "id": f"{site}:{prefix}:{i}", "site": site, "table": "person", "op": "c",
             "uuid": str(uuidlib.uuid4()), "snapshot": False, "sent": "2024-01-01T00:00:00+00:00",
             "source": {"file": "bin.000001", "pos": 4, "row": i},
             "data": {"gender": "F", "birthdate": "1990-01-01", "note": "é" * (i % 3)}} for i in range(count)]


def publish(broker: BrokerSettings, destination: str, batch: list[dict[str, Any]], *, topic: bool = False,
            compress_over: int = 16_384, wire_version: int = 1, rows_per_message: int = 100) -> None:
    """Publish's own path; one row per broker message unless `wire_version` 2 (these tests count deliveries)."""
    settings = PublishSettings(broker=broker, destination=destination, destination_type="topic" if topic else "queue",
                               compress_over=compress_over, wire_version=wire_version,
                               rows_per_message=rows_per_message)
    assert len(list(Publisher(settings, lambda _source: None).run(batch))) == len(batch)


def consume(conf, env, *extra: str, timeout: float = 120) -> list[dict[str, Any]]:
    run = dbsync("consume", "--config", str(conf), *extra, env=env, timeout=timeout)
    return [orjson.loads(line) for line in run.stdout.splitlines() if line.strip()]


def inbox(db, schema: str) -> list[tuple[int, str, str | None, bytes]]:
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, message_id, site, body FROM `{schema}`.inbox ORDER BY id")  # noqa: S608
            return [(r[0], r[1], r[2], bytes(r[3])) for r in cur.fetchall()]
    finally:
        conn.close()


def test_published_messages_land_in_the_inbox_and_the_queue_is_empty(central, broker_settings, tmp_path) -> None:
    db, schema = central
    dest = f"dbsync.test.consume.{uuidlib.uuid4().hex[:8]}"
    sent = messages(60)
    sent[5]["data"]["note"] = "x" * 40_000  # one compressed message among them
    publish(broker_settings, dest, sent)
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=dest, state_schema=schema, batch=25)

    records = consume(conf, env, "--idle-exit", "2")

    assert [r["message_id"] for r in records] == [m["id"] for m in sent]  # order kept
    assert all(r["site"] == "site1" for r in records)
    assert [orjson.loads(r["body"]) for r in records] == sent
    rows = inbox(db, schema)
    assert len(rows) == 60 and [r[0] for r in rows] == [r["inbox"] for r in records]
    assert drain(broker_settings, dest, idle=1.5) == []

    # a second run re-emits the rows not applied yet, and nothing is stored twice
    again = consume(conf, env, "--idle-exit", "1")
    assert [r["inbox"] for r in again] == [r["inbox"] for r in records]
    assert len(inbox(db, schema)) == 60


def test_envelopes_land_in_the_inbox_one_row_each_with_their_row_count(central, broker_settings,
                                                                       tmp_path) -> None:
    db, schema = central
    dest = f"dbsync.test.consume.{uuidlib.uuid4().hex[:8]}"
    live, snap = messages(25), messages(12)
    for m in snap:
        m["snapshot"] = True
    publish(broker_settings, dest, [*snap, *live], wire_version=2, rows_per_message=10)
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=dest, state_schema=schema, batch=25)

    records = consume(conf, env, "--max-messages", "37")

    bodies = [orjson.loads(r["body"]) for r in records]
    assert [b["v"] for b in bodies] == [2] * 5 and [len(b["messages"]) for b in bodies] == [10, 2, 10, 10, 5]
    assert [m for b in bodies for m in b["messages"]] == [*snap, *live]
    conn = db.connect()
    with conn.cursor() as cur:
        cur.execute(f"SELECT n_rows, snapshot, message_id FROM `{schema}`.inbox ORDER BY id")  # noqa: S608
        rows = cur.fetchall()
    conn.close()
    assert [(r[0], r[1]) for r in rows] == [(10, 1), (2, 1), (10, 0), (10, 0), (5, 0)]
    assert [r[2] for r in rows] == [b["id"] for b in bodies]
    assert drain(broker_settings, dest, idle=1.5) == []


def test_max_messages_stops_and_leaves_the_rest_on_the_queue(central, broker_settings, tmp_path) -> None:
    db, schema = central
    dest = f"dbsync.test.consume.{uuidlib.uuid4().hex[:8]}"
    sent = messages(30)
    publish(broker_settings, dest, sent)
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=dest, state_schema=schema, batch=8)

    first = consume(conf, env, "--max-messages", "10")
    assert [r["message_id"] for r in first] == [m["id"] for m in sent[:10]]
    assert len(inbox(db, schema)) == 10
    # the unacked deliveries of the window went back to the queue: the backlog (10) then the other 20
    rest = consume(conf, env, "--idle-exit", "2")
    assert sorted(r["message_id"] for r in rest) == sorted(m["id"] for m in sent)
    assert len(inbox(db, schema)) == 30
    assert drain(broker_settings, dest, idle=1.5) == []


def test_kill_minus_9_loses_nothing_and_a_restart_re_emits_the_inbox(central, broker_settings, tmp_path) -> None:
    db, schema = central
    dest = f"dbsync.test.consume.{uuidlib.uuid4().hex[:8]}"
    total = 4000
    sent = messages(total)
    publish(broker_settings, dest, sent)
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=dest, state_schema=schema, batch=20)

    out = open(tmp_path / "first.ndjson", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "consume", "--config", str(conf)], env=env,
                            stdout=out, stderr=subprocess.DEVNULL)
    stored_at_kill = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                stored_at_kill = len(inbox(db, schema))
            except Exception:  # noqa: BLE001 - the schema is created by the process
                stored_at_kill = 0
            if stored_at_kill >= 200:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    assert 0 < stored_at_kill < total, stored_at_kill

    records = consume(conf, env, "--idle-exit", "3")
    ids = [r["message_id"] for r in records]
    assert len(ids) == len(set(ids)) == total  # the first run's rows re-emitted, the rest consumed, none twice
    assert set(ids) == {m["id"] for m in sent}
    rows = inbox(db, schema)
    assert len(rows) == total and len({r[1] for r in rows}) == total
    assert drain(broker_settings, dest, idle=1.5) == []


def test_odd_bodies_all_land_in_the_inbox(central, broker_settings, tmp_path) -> None:
    db, schema = central
    dest = f"dbsync.test.consume.{uuidlib.uuid4().hex[:8]}"
    good = messages(2, prefix="odd")
    compressed = zlib.compress(orjson.dumps(good[0]))
    frames: list[tuple[bytes, dict[str, str]]] = [
        (b"this is {not json", {"dbsync-id": "odd:notjson", "dbsync-site": "site1"}),
        (b"\xff\xfe{\"broken\": \"\xc3\"}", {"dbsync-id": "odd:badutf8", "dbsync-site": "site1"}),
        (compressed, {"dbsync-id": good[0]["id"], "dbsync-site": "site1", "dbsync-encoding": "deflate"}),
        (b"not deflate at all", {"dbsync-id": "odd:baddeflate", "dbsync-site": "site2", "dbsync-encoding": "deflate"}),
        (b'{"no": "dbsync headers"}', {}),
        (orjson.dumps(good[1]), {"dbsync-id": good[1]["id"], "dbsync-site": "site1"}),
    ]
    receipts = Receipts()
    conn = open_connection(broker_settings, listener=receipts)
    try:
        for index, (body, headers) in enumerate(frames):
            extra = {"receipt": "odd-last"} if index == len(frames) - 1 else {}
            conn.send(dest, body, headers={"persistent": "true", "destination-type": "ANYCAST", **headers, **extra})
        assert receipts.got.wait(10), "no receipt from the broker"
    finally:
        conn.disconnect()
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=dest, state_schema=schema)

    records = consume(conf, env, "--idle-exit", "2")

    assert len(records) == len(frames)
    by_id = {r["message_id"]: r for r in records}
    assert by_id["odd:notjson"]["body"] == "this is {not json"
    assert base64.b64decode(by_id["odd:badutf8"]["body"]["$b64"]) == frames[1][0]
    assert orjson.loads(by_id[good[0]["id"]]["body"]) == good[0]
    assert by_id["odd:baddeflate"]["body"] == "not deflate at all" and by_id["odd:baddeflate"]["site"] == "site2"
    anonymous = [r for r in records if r["message_id"].startswith("broker:")]
    assert len(anonymous) == 1 and anonymous[0]["site"] is None
    assert orjson.loads(by_id[good[1]["id"]]["body"]) == good[1]  # the stream went on after the odd ones
    assert len(inbox(db, schema)) == len(frames)
    assert drain(broker_settings, dest, idle=1.5) == []


class Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.got = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        self.got.set()


def _unsubscribe(broker: BrokerSettings, client_id: str, topic: str, subscription: str) -> None:
    conn = open_connection(broker, client_id=client_id)
    try:
        conn.subscribe(topic, id="cleanup", ack="auto",
                       headers={"subscription-type": "MULTICAST", "durable-subscription-name": subscription})
        conn.unsubscribe("cleanup", headers={"durable-subscription-name": subscription})
        time.sleep(0.3)
    finally:
        conn.disconnect()


def test_topic_durable_subscription_keeps_messages_while_consume_is_down(central, broker_settings, tmp_path) -> None:
    db, schema = central
    topic = f"dbsync.test.topic.{uuidlib.uuid4().hex[:8]}"
    client_id = f"central-{uuidlib.uuid4().hex[:6]}"
    conf, env = receiver_config(tmp_path, db, broker_settings, destination=topic, state_schema=schema,
                                destination_type="topic", site_id=client_id, subscription="dbsync")
    try:
        assert consume(conf, env, "--idle-exit", "1") == []  # subscribes (durably) and goes away
        sent = messages(25)
        publish(broker_settings, topic, sent, topic=True)  # consume is down now
        records = consume(conf, env, "--idle-exit", "2")
        assert [r["message_id"] for r in records] == [m["id"] for m in sent]
        assert len(inbox(db, schema)) == 25
        # nothing left on the durable subscription's queue
        later = consume(conf, env, "--idle-exit", "1")
        assert [r["message_id"] for r in later] == [m["id"] for m in sent]  # backlog only (not applied)
        assert len(inbox(db, schema)) == 25
    finally:
        _unsubscribe(broker_settings, client_id, topic, "dbsync")


def test_many_small_frames_over_tls_never_stall_consume(central, broker_settings, broker_tls_settings) -> None:
    """Issue 10 case 11: after one 8,000-row DELETE (many small frames in the consumer window) consume over TLS
    stopped for good: the listener (stomp.py's io thread, which over TLS also writes our ACKs) waited on a full
    hand-over queue while the ACKs waited on the io thread. Nothing said so: the inbox stayed empty."""
    from dbsync_cli.receiver import consume as consume_mod
    from dbsync_cli.receiver import state

    db, schema = central
    with db.connect() as conn:
        state.migrate(conn, schema)
    dest = f"test.tls-window.{uuidlib.uuid4().hex[:8]}"
    count = 8000
    publish(broker_settings, dest, messages(count))
    settings = consume_mod.ConsumeSettings(broker=broker_tls_settings, db=db, state_schema=schema, destination=dest,
                                           idle_seconds=10)
    stop = threading.Event()
    stored: list[int] = []
    worker = threading.Thread(target=lambda: stored.append(consume_mod.run_into_inbox(settings, stop)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 240
    while worker.is_alive() and time.monotonic() < deadline and len(inbox(db, schema)) < count:
        time.sleep(1)
    got = len(inbox(db, schema))
    stop.set()
    worker.join(30)
    assert got == count, f"consume over TLS stalled at {got} of {count} messages"
    assert drain(broker_settings, dest, idle=1) == []
