"""The OpenMRS REST worker: rest_call rows on the central server become cleardbcache + searchindexupdate calls,
in order, with Basic auth; failures are counted, kept without the password, and retried until OpenMRS answers."""

from __future__ import annotations

import base64
import threading
import time
import uuid as uuidlib

import pytest
from helpers import drop_schema
from openmrs_stub import OpenMrsStub

from dbsync_cli.config import Config
from dbsync_cli.receiver import state
from dbsync_cli.receiver.rest import RestSettings, RestWorker, enqueue, rest_enabled, rest_status

PASSWORD = "S3cret-Pass!"  # noqa: S105 - test credential


@pytest.fixture
def schema(services):
    admin = services["central"].admin
    name = f"t_rest_{uuidlib.uuid4().hex[:10]}"
    conn = admin.connect(autocommit=False)
    try:
        state.migrate(conn, name)
    finally:
        conn.close()
    yield admin, name
    drop_schema(admin, name)


@pytest.fixture
def stub():
    with OpenMrsStub(user="admin", password=PASSWORD) as server:
        yield server


def add(admin, schema: str, table: str, entity_uuid: str) -> None:
    conn = admin.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            assert enqueue(cur, schema, table, entity_uuid)
        conn.commit()
    finally:
        conn.close()


def rows(admin, schema: str) -> list[tuple]:
    conn = admin.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT resource, sub_resource, entity_uuid, attempts, last_error FROM `{schema}`.rest_call "  # noqa: S608
                        "ORDER BY id")
            return list(cur.fetchall())
    finally:
        conn.close()


def settings(admin, schema: str, url: str, password: str = PASSWORD) -> RestSettings:
    return RestSettings(url=url, user="admin", password=password, db=admin, state_schema=schema, timeout=5,
                        poll_seconds=0.1, retry_base=0.2, retry_max=1.0)


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_calls_arrive_in_order_with_bodies_and_basic_auth(schema, stub) -> None:
    admin, name = schema
    changes = [("person", str(uuidlib.uuid4())), ("person_name", str(uuidlib.uuid4())),
               ("patient", str(uuidlib.uuid4())), ("patient_identifier", str(uuidlib.uuid4())),
               ("person_attribute", str(uuidlib.uuid4()))]
    for table, entity in changes:
        add(admin, name, table, entity)
    conn = admin.connect(autocommit=False)
    with conn.cursor() as cur:
        assert not enqueue(cur, name, "obs", str(uuidlib.uuid4()))  # no REST call for other tables
    conn.close()

    stop = threading.Event()
    worker = RestWorker(settings(admin, name, stub.url), stop)
    thread = worker.start()
    try:
        wait_for(lambda: rows(admin, name) == [])
    finally:
        stop.set()
        thread.join(10)

    calls = stub.calls()
    expected_bodies = [
        {"resource": "person", "uuid": changes[0][1]},
        {"resource": "person", "subResource": "name", "uuid": changes[1][1]},
        {"resource": "patient", "uuid": changes[2][1]},
        {"resource": "patient", "subResource": "identifier", "uuid": changes[3][1]},
        {"resource": "person", "subResource": "attribute", "uuid": changes[4][1]},
    ]
    assert [(c.endpoint, c.body) for c in calls] == [
        (endpoint, body) for body in expected_bodies for endpoint in ("cleardbcache", "searchindexupdate")]
    assert all(c.path.startswith("/openmrs/ws/rest/v1/") for c in calls)
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert all(c.headers["Authorization"] == f"Basic {token}" for c in calls)
    assert all(c.headers["Content-Type"] == "application/json" for c in calls)
    assert worker.calls == 5 and worker.failures == 0


def test_duplicates_collapse_into_one_call(schema, stub) -> None:
    admin, name = schema
    entity = str(uuidlib.uuid4())
    for _ in range(3):
        add(admin, name, "person_name", entity)
    other = str(uuidlib.uuid4())
    add(admin, name, "person", other)
    worker = RestWorker(settings(admin, name, stub.url), threading.Event())
    assert worker.run_once() == 2
    worker.close()
    assert rows(admin, name) == []
    assert [(c.endpoint, c.body["uuid"]) for c in stub.calls()] == [
        ("cleardbcache", entity), ("searchindexupdate", entity), ("cleardbcache", other), ("searchindexupdate", other)]


def test_failures_are_recorded_and_retried_until_openmrs_answers(schema, stub) -> None:
    admin, name = schema
    entity = str(uuidlib.uuid4())
    add(admin, name, "person", entity)
    stub.fail_with = 500
    worker = RestWorker(settings(admin, name, stub.url), threading.Event())
    try:
        assert worker.run_once() == 0
        [(_res, _sub, _uuid, attempts, error)] = rows(admin, name)
        assert attempts == 1 and "HTTP 500" in error and "cleardbcache" in error
        assert "\n" not in error and PASSWORD not in error
        status = rest_status(admin.connect(), name)
        assert status["pending"] == 1 and status["failing"] == 1 and "HTTP 500" in status["last_error"]
        assert status["oldest_pending_seconds"] is not None and status["oldest_pending_seconds"] >= 0

        assert worker.run_once() == 0  # in backoff: not tried again at once
        assert len(stub.calls()) == 1

        wait_for(lambda: worker.run_once() == 0 and rows(admin, name)[0][3] >= 2)  # retried after the backoff
        stub.fail_with = None
        wait_for(lambda: worker.run_once() == 1 or rows(admin, name) == [])
        assert rows(admin, name) == []
        assert [c.endpoint for c in stub.calls()][-2:] == ["cleardbcache", "searchindexupdate"]
        assert rest_status(admin.connect(), name)["pending"] == 0
    finally:
        worker.close()


def test_wrong_password_and_unreachable_server_never_leak_the_password(schema, stub) -> None:
    admin, name = schema
    add(admin, name, "patient", str(uuidlib.uuid4()))
    wrong = "Wrong-Pass-42"
    worker = RestWorker(settings(admin, name, stub.url, password=wrong), threading.Event())
    assert worker.run_once() == 0
    worker.close()
    error = rows(admin, name)[0][4]
    assert "HTTP 401" in error and wrong not in error and PASSWORD not in error

    # nothing listens there: the error says so, in one line, and the row stays
    dead = "http://127.0.0.1:9/openmrs"
    time.sleep(0.3)
    worker = RestWorker(settings(admin, name, dead, password=wrong), threading.Event())
    assert worker.run_once() == 0
    worker.close()
    [(_r, _s, _u, attempts, error)] = rows(admin, name)
    assert attempts == 2 and "cannot reach" in error and wrong not in error


def test_disabled_without_url(schema) -> None:
    admin, name = schema
    add(admin, name, "person", str(uuidlib.uuid4()))
    worker = RestWorker(settings(admin, name, None), threading.Event())
    worker.run()  # returns at once
    assert len(rows(admin, name)) == 1
    cfg = Config(role="receiver", values={"openmrs.url": None}, source="test")
    assert not rest_enabled(cfg)
    assert rest_enabled(Config(role="receiver", values={"openmrs.url": "http://x/openmrs"}, source="test"))
