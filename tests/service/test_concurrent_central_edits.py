"""Issue 25: central edits that commit while a batch applies, and one message id in flight twice.

Case 1: apply judged a batch's rows from a read without a lock and wrote them later; a central edit committed in
between was overwritten with no conflict. The races here are real ones, driven from outside the applier (a
central transaction the test holds open, an editor thread), never a hook in the product code.

Case 6: two deliveries with one id and different content in flight together (in one apply batch, or both in the
inbox before either is applied): the second vanished. It is judged as the sequential case judges it
(test_field_cases.py::test_a_message_id_seen_again_with_other_content_is_not_taken_as_a_duplicate): applied.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from typing import Any

import pymysql
from receiver_helpers import Central, Site
from test_apply import central, new_person, outcomes, site  # noqa: F401 - fixtures

from dbsync_cli import wire
from dbsync_cli.openmrs import SchemaModel, synced_table_names
from dbsync_cli.receiver import inbox
from dbsync_cli.receiver.apply import Applier, ApplySettings

__all__ = ["central", "site"]

SITE_BIRTHDATE = "2001-01-01"  # what the site's change sets
SITE_CHANGED = "2024-06-01 00:00:00"  # when the site changed it: before any central edit below (NOW())


def _people(site: Site, n: int) -> list[str]:
    """`n` persons at the site, in one statement; their uuids in person_id order."""
    site.sql("INSERT INTO person (gender, birthdate, creator, date_created, uuid) "
             f"SELECT 'F', '1990-05-01', 1, '2024-03-01 01:00:00', UUID() FROM seq_1_to_{n}")
    return [u for (u,) in site.sql(f"SELECT uuid FROM person ORDER BY person_id DESC LIMIT {n}")][::-1]


def _site_changes(site: Site, uuids: list[str]) -> list[dict[str, Any]]:
    marks = ", ".join(["%s"] * len(uuids))
    site.sql(f"UPDATE person SET birthdate = '{SITE_BIRTHDATE}', date_changed = '{SITE_CHANGED}' "
             f"WHERE uuid IN ({marks})", tuple(uuids))
    messages = site.messages()
    assert len(messages) == len(uuids) and {m["op"] for m in messages} == {"u"}
    return messages


def _central_ids(central: Central, uuids: list[str]) -> dict[str, int]:
    marks = ", ".join(["%s"] * len(uuids))
    return dict(central.sql(f"SELECT uuid, person_id FROM person WHERE uuid IN ({marks})", tuple(uuids)))


def _conflicted(central: Central) -> set[str]:
    return {u for (u,) in central.sql(f"SELECT entity_uuid FROM `{central.schema}`.receiver_conflict_queue "
                                      "WHERE resolved = 0")}


def _birthdates(central: Central, uuids: list[str]) -> dict[str, str]:
    marks = ", ".join(["%s"] * len(uuids))
    return dict(central.sql(f"SELECT uuid, CAST(birthdate AS CHAR) FROM person WHERE uuid IN ({marks})",
                            tuple(uuids)))


class Background(threading.Thread):
    """`central.apply(messages)` in a thread (the dbsync apply process), its outcome lines kept."""

    def __init__(self, central: Central, messages: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.central, self.messages = central, messages
        self.results: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.results = self.central.apply(self.messages)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def finish(self, timeout: float = 300) -> list[dict[str, Any]]:
        self.join(timeout)
        assert not self.is_alive(), "apply did not finish"
        assert self.error is None, self.error
        return self.results


def _wait_for_a_lock_wait(central: Central, mine: int, applying: Background, timeout: float = 240) -> None:
    """Until another session of central waits for a row lock (the applier, on a row this test holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = central.sql("SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX "
                              "WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id <> %s", (mine,))
        if waiting:
            return
        assert applying.is_alive(), f"apply ended without waiting for the row: {applying.error or applying.results}"
        # INNODB_TRX is a cache the server refreshes only after 100 ms without a read: polls closer than that keep
        # showing the transactions of the first poll (before apply started) for ever
        time.sleep(0.3)
    sessions = central.sql("SELECT id, command, time, state, LEFT(info, 200) FROM information_schema.PROCESSLIST "
                           "WHERE db = %s", (central.db.database,))
    trx = central.sql("SELECT trx_mysql_thread_id, trx_state, trx_started, trx_wait_started, trx_rows_locked "
                      "FROM information_schema.INNODB_TRX")
    raise AssertionError(f"apply never waited for the row this test holds; sessions: {sessions}; transactions: {trx}")


def test_a_central_edit_committed_between_judge_and_write_is_never_overwritten(central, site) -> None:  # noqa: F811
    """Case 1, made deterministic: the test holds a central edit of one row uncommitted, starts apply, waits until
    apply waits for that row, then commits. Before, apply had judged the row from its unlocked read (unchanged
    since the last sync), its UPDATE waited for the test's lock and then overwrote the committed edit: birthdate
    reverted, conflict queue empty. Now the judged rows are read with a lock: apply waits, sees the edit, parks
    the incoming change."""
    uuids = _people(site, 30)
    assert outcomes(central.apply(site.messages()))["applied"] == 30
    messages = _site_changes(site, uuids)
    target = uuids[17]
    central.env = {**central.env, "DBSYNC_RECEIVER__ROW_LOCK_WAIT_SECONDS": "120"}  # the commit, not the timeout
    editor = central.db.connect(autocommit=False)
    try:
        with editor.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (mine,) = cur.fetchone()
            cur.execute("UPDATE person SET birthdate = '1977-07-07', date_changed = NOW() WHERE uuid = %s", (target,))
        applying = Background(central, messages)
        applying.start()
        _wait_for_a_lock_wait(central, mine, applying)
        editor.commit()
        results = applying.finish()
    finally:
        editor.close()
    got = _birthdates(central, uuids)
    assert got[target] == "1977-07-07", (f"central's committed edit was overwritten ({got[target]}): "
                                         f"{[r for r in results if r.get('uuid') == target]}")
    assert target in _conflicted(central)
    assert outcomes(results) == Counter({"applied": 29, "conflict": 1}), results
    assert {u for u, b in got.items() if b == SITE_BIRTHDATE} == set(uuids) - {target}


def test_a_row_central_holds_locked_parks_its_message_alone_and_the_rest_apply(central, site) -> None:  # noqa: F811
    """An OpenMRS connection left in a transaction holds one central row for minutes. Apply waits for it at most
    ROW_LOCK_WAIT_SECONDS, then replays the batch message by message: the one message whose row stays locked is
    parked for the retry queue, every other message applies (before, the whole batch was retried and re-raised
    for good: no site synced until that transaction ended). The retry pass applies it once the row is free."""
    uuids = _people(site, 12)
    assert outcomes(central.apply(site.messages()))["applied"] == 12
    messages = _site_changes(site, uuids)
    target = uuids[5]
    holder = central.db.connect(autocommit=False)
    try:
        with holder.cursor() as cur:  # a lock held, no edit made: the row is judged unchanged once free
            cur.execute("SELECT person_id FROM person WHERE uuid = %s FOR UPDATE", (target,))
        started = time.monotonic()
        results = central.apply(messages)
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert outcomes(results) == Counter({"applied": 11, "retry": 1}), results
    (held,) = [r for r in results if r.get("uuid") == target or r["outcome"] == "retry"]
    assert held["outcome"] == "retry" and "Lock wait timeout" in (held.get("reason") or ""), held
    assert took < 120, took  # one wait of ROW_LOCK_WAIT_SECONDS for the batch, one for the message: not minutes
    got = _birthdates(central, uuids)
    assert {u for u, b in got.items() if b == SITE_BIRTHDATE} == set(uuids) - {target}
    assert outcomes(central.apply([], "--retry"))["applied"] == 1
    assert _birthdates(central, [target])[target] == SITE_BIRTHDATE


def test_a_deadlock_with_a_central_transaction_retries_the_batch(central, site) -> None:  # noqa: F811
    """Apply locks the rows it judges in key order; a central transaction that locks them the other way round
    makes a deadlock. The server rolls back the lighter transaction (apply's: the test's has thousands of undo
    records); apply must then retry the whole batch (never park a message for it) and judge the rows as they are
    when it gets them: both edited centrally after the incoming change, so both are parked."""
    uuids = _people(site, 2)
    central.apply(site.messages())
    messages = _site_changes(site, uuids)
    ids = _central_ids(central, uuids)
    low, high = sorted(uuids, key=ids.__getitem__)
    # apply's row lock wait lasts far longer than this test needs to see it (on a loaded machine the default 10 s
    # may pass before the test sees the wait); the deadlock, not the timeout, must end it
    central.env = {**central.env, "DBSYNC_RECEIVER__ROW_LOCK_WAIT_SECONDS": "120"}
    central.sql("CREATE TABLE race_ballast (n INT NOT NULL PRIMARY KEY, v INT NOT NULL DEFAULT 0)")
    central.sql("INSERT INTO race_ballast (n) SELECT seq FROM seq_1_to_20000")
    editor = central.db.connect(autocommit=False)
    try:
        with editor.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            (mine,) = cur.fetchone()
            cur.execute("UPDATE race_ballast SET v = v + 1")  # weight: the server picks apply as the victim
            cur.execute("UPDATE person SET birthdate = '1966-06-06', date_changed = NOW() WHERE uuid = %s", (high,))
            applying = Background(central, messages)
            applying.start()
            _wait_for_a_lock_wait(central, mine, applying)  # apply holds `low` and waits for `high`
            cur.execute("UPDATE person SET birthdate = '1955-05-05', date_changed = NOW() WHERE uuid = %s", (low,))
        editor.commit()
        results = applying.finish()
    finally:
        editor.close()
    assert outcomes(results) == Counter({"conflict": 2}), results
    assert _birthdates(central, uuids) == {low: "1955-05-05", high: "1966-06-06"}
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]
    assert "Deadlock found" in central.last_stderr and "retrying it whole" in central.last_stderr, \
        central.last_stderr[-2000:]
    assert "message by message" not in central.last_stderr  # the batch is retried, not replayed to park one


def test_no_central_edit_is_lost_while_a_large_batch_applies(central, site) -> None:  # noqa: F811
    """Case 1 under load: an editor thread edits central's rows (one at a time, and now and then two in descending
    key order, against apply's ascending locks) all the while 2,000 site changes to the same rows apply. After it,
    every row holds central's last committed edit, or the incoming change for it is in the conflict queue."""
    uuids = _people(site, 2000)
    central.apply(site.messages())
    messages = _site_changes(site, uuids)
    ids = _central_ids(central, uuids)
    last: dict[str, str] = {}  # uuid → birthdate of central's last committed edit
    stop = threading.Event()
    deadlocks = Counter[str]()

    def edit() -> None:
        rng = random.Random(25)
        conn = central.db.connect(autocommit=False)
        day = 0
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    pair = rng.sample(uuids, 2 if day % 7 == 0 else 1)
                    pair.sort(key=ids.__getitem__, reverse=True)
                    values = {}
                    try:
                        for uuid in pair:
                            day += 1
                            values[uuid] = str(dt.date(1900, 1, 1) + dt.timedelta(days=day))
                            cur.execute("UPDATE person SET birthdate = %s, date_changed = NOW() WHERE uuid = %s",
                                        (values[uuid], uuid))
                        conn.commit()
                    except pymysql.err.OperationalError as exc:
                        if exc.args[0] not in (1213, 1205):
                            raise
                        conn.rollback()
                        deadlocks[str(exc.args[0])] += 1
                        continue
                    last.update(values)
                    time.sleep(0.001)
        finally:
            conn.close()

    editor = threading.Thread(target=edit, daemon=True)
    editor.start()
    try:
        results = Background(central, messages)
        results.start()
        got = results.finish()
    finally:
        stop.set()
        editor.join(30)
    assert len(got) == len(messages) and set(outcomes(got)) <= {"applied", "conflict"}, outcomes(got)
    assert len(last) > 200, f"the editor made too few edits ({len(last)}) to race with apply"
    rows, parked = _birthdates(central, list(last)), _conflicted(central)
    lost = {u: (rows[u], edit) for u, edit in last.items() if rows[u] != edit and u not in parked}
    assert not lost, f"{len(lost)} central edits overwritten without a conflict, e.g. {list(lost.items())[:3]}"
    applied = {r["uuid"] for r in got if r["outcome"] == "applied"}
    assert parked | applied == set(uuids) and not parked & applied  # every incoming change accounted for once


def _reused_ids(site: Site) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """A patient's messages, and another patient's under the same ids (the sequential test's construction)."""
    new_person(site)
    first = site.messages()
    _person, name = new_person(site, "Bob")
    later = {m["table"]: m for m in site.messages()}
    return first, [dict(later[m["table"]], id=m["id"]) for m in first], name


def test_one_id_with_other_content_in_one_batch_is_judged_as_a_new_change(central, site) -> None:  # noqa: F811
    """Case 6 in one apply batch: the second message under an id the batch has just handled is a new change,
    as it is when it comes in a later batch."""
    first, reused, name = _reused_ids(site)
    results = central.apply(first + reused)
    assert outcomes(results) == Counter({"applied": len(first) + len(reused)}), results
    assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("Bob",)]
    assert outcomes(central.apply(reused)) == Counter({"duplicate": len(reused)})  # as after two batches


def test_one_id_with_other_content_in_the_inbox_together_is_judged_as_a_new_change(central, site) -> None:  # noqa: F811
    """Case 6 in the inbox: both deliveries stored before either is applied. The inbox kept the first and ignored
    the second (its unique id made it look like a redelivery): no row, no count, no log. A redelivery (the same
    bytes) is still absorbed by the inbox; a delivery of the same id with other content is kept beside the first,
    and apply judges each as it judges them one after the other."""
    first, reused, name = _reused_ids(site)
    deliveries = [inbox.Delivery(m["id"], "site1", wire.dumps(m), "") for m in first]
    others = [inbox.Delivery(m["id"], "site1", wire.dumps(m), "") for m in reused]
    conn = central.db.connect(autocommit=False)
    try:
        assert len(inbox.store(conn, central.schema, deliveries)) == len(first)
        stored = inbox.store(conn, central.schema, others)
        assert len(stored) == len(reused), "a delivery with an id in the inbox and other content vanished"
        assert inbox.store(conn, central.schema, deliveries + others) == []  # redeliveries: nothing new
    finally:
        conn.close()
    with central.db.connect() as c:
        model = SchemaModel.load(c, central.db.database or "", synced_table_names(None, None))
    applier = Applier(ApplySettings(central=central.db, state_schema=central.schema), model)
    try:
        records = inbox.oldest(applier.conn, central.schema, 100)
        results = Counter(o.outcome for o in applier.apply_batch(records))
    finally:
        applier.close()
    assert results == Counter({"applied": len(first) + len(reused)}), results
    assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("Bob",)]
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox") == [(0,)]
