"""The console's worker (review finding 9): it holds the applier lock for one request at a time, so a receiver that
starts gets the lock within seconds, and it serves again a request a process that stopped left `running`. Real
central, real worker; the checks read the request table with SQL of their own."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib

import orjson
import pytest
from receiver_helpers import Central, drop_schema, make_central

from dbsync_cli import config as config_mod
from dbsync_cli.console.worker import Worker
from dbsync_cli.receiver import run as run_mod
from dbsync_cli.receiver.apply import AlreadyApplying, Applier


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    made = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        yield made
    finally:
        drop_schema(made)


def _worker(central: Central) -> Worker:
    cfg = config_mod.load(central.config, "receiver", env=central.env)
    model = run_mod.load_model(cfg)
    return Worker(central.db.connect, central.schema, lambda: Applier(run_mod.apply_settings(cfg), model))


def _park(central: Central, n: int) -> list[int]:
    with central.db.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO `{central.schema}`.receiver_retry_queue (message_id, site, table_name, reason, "
                        "attempts, date_created, kind) VALUES (%s, 'site1', 'obs', 'held', 1, UTC_TIMESTAMP(3), "
                        "'permanent')", [(f"site1:test:{uuidlib.uuid4().hex}",) for _ in range(n)])
        conn.commit()
    return [r[0] for r in central.sql(f"SELECT id FROM `{central.schema}`.receiver_retry_queue ORDER BY id")]


def _request(central: Central, number: int, state: str = "pending", taken_by: int | None = None) -> None:
    central.sql(f"INSERT INTO `{central.schema}`.receiver_request (action, args, requested_by, date_created, state, "
                "taken_by) VALUES ('retry_drop', %s, 'test', UTC_TIMESTAMP(3), %s, %s)",
                (orjson.dumps({"number": number}).decode(), state, taken_by))


def _states(central: Central) -> dict[str, int]:
    return dict(central.sql(f"SELECT state, COUNT(*) FROM `{central.schema}`.receiver_request GROUP BY state"))


def test_a_receiver_that_starts_gets_the_lock_between_two_requests(central) -> None:
    entries = _park(central, 150)
    for number in entries:
        _request(central, number)
    worker = _worker(central)
    serving = threading.Thread(target=worker.serve_once)
    serving.start()
    while _states(central).get("done", 0) < 3:  # the worker is under way
        time.sleep(0.05)
    started = time.monotonic()
    with central.db.connect() as receiver, receiver.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 10)", (f"dbsync:{central.schema}",))  # as Applier.claim
        assert cur.fetchone() == (1,)
        waited = time.monotonic() - started
        serving.join(30)
        assert not serving.is_alive()
        states = _states(central)
    assert waited < 5, waited
    assert states.get("pending", 0) > 0, states  # the worker let go before the end, and stays off while it is held
    assert states.get("running", 0) == 0, states
    worker.serve_once()  # the "receiver" stopped: the worker carries on
    assert _states(central) == {"done": len(entries)}
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]


def test_a_request_left_running_by_a_process_that_stopped_is_served_again(central) -> None:
    (entry,) = _park(central, 1)
    _request(central, entry, state="running", taken_by=987654321)  # its connection is gone
    assert _worker(central).serve_once() == 1
    assert _states(central) == {"done": 1}
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]


def test_a_starting_receiver_waits_for_an_operator_action_in_progress_instead_of_stopping(central) -> None:
    """A long bulk action holds the applier lock for its whole run. A receiver that starts meanwhile must wait for
    it (exit 13 is in the units' RestartPreventExitStatus: systemd would leave central's receiver down), while a
    holder that is not carrying out an action is still another receiver: refused."""
    cfg = config_mod.load(central.config, "receiver", env=central.env)
    model = run_mod.load_model(cfg)
    name = f"dbsync:{central.schema}"
    with central.db.connect() as holder, holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", (name,))
        got, mine = cur.fetchone()
        assert got == 1
        # 1. the holder is no operator action: another receiver, refused after the wait
        applier = Applier(run_mod.apply_settings(cfg), model)
        try:
            with pytest.raises(AlreadyApplying):
                applier.claim(wait=1)
        finally:
            applier.close()
        # 2. the holder carries out an operator action: the starting receiver waits, then gets the lock
        _request(central, 1, state="running", taken_by=mine)
        applier = Applier(run_mod.apply_settings(cfg), model)
        outcome: list[BaseException | None] = []

        def start() -> None:
            try:
                applier.claim(wait=1)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        starting = threading.Thread(target=start)
        starting.start()
        time.sleep(3.5)  # three of its lock waits
        assert starting.is_alive() and not outcome, outcome
        cur.execute(f"UPDATE `{central.schema}`.receiver_request SET state = 'done' WHERE taken_by = %s", (mine,))
        holder.commit()
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    starting.join(10)
    try:
        assert outcome == [None], outcome
    finally:
        applier.close()
