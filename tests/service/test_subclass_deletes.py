"""Issue 25 case 2: subclass deletes (patient, drug_order, test_order) carry their parent's uuid whatever the
enrich batching, the sender's lag or a kill -9 of the sender between the subclass delete and the parent's.

A subclass row has no uuid column: its identity is its parent's (person, orders). When the parent is deleted too,
the site DB no longer holds the uuid by the time enrich reads it. Before, enrich found it only in a parent delete of
the same enrich batch and otherwise skipped the subclass delete ("its uuid is unknown (parent gone); skipped"),
moving the checkpoint past it: central kept the patient (and drug_order) rows and the person (orders) deletes went
to the retry queue on their foreign key.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
import uuid as uuidlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import dbsync, dbsync_cmd, drain, sender_config
from receiver_helpers import Central, Site, drop_schema, make_central
from test_apply import new_person

from dbsync_cli.sender.checkpoint import CheckpointStore
from devtools.field.link import LinkProxy
from devtools.workload.generator import generate


@dataclasses.dataclass
class Population:
    """What the tests delete: patients (person + patient + name) and orders with their subclass rows."""

    persons: dict[int, str]  # person_id → uuid
    orders: dict[int, str]  # order_id → uuid (each has a drug_order or a test_order row)


def _site(openmrs_db, services, tmp_path: Path, broker, *, batch: int, transaction_events: int,
          destination: str = "test.unused") -> Site:
    """A site whose enrich batches are small: `batch` events, grown to the end of a transaction up to
    `transaction_events` (sender.max_transaction_events, 20,000 by default)."""
    admin = openmrs_db("site1")
    repl = services["site1"].repl.with_database(admin.database)
    home = tmp_path / "home-site1"
    work = tmp_path / "work-site1"
    work.mkdir(exist_ok=True)
    conf, env = sender_config(work, repl, broker, destination=destination, batch=batch, home=home)
    env["DBSYNC_SENDER__MAX_TRANSACTION_EVENTS"] = str(transaction_events)
    site = Site(admin, conf, env, home)
    site.initial = site.messages()
    return site


def _populate(site: Site, central: Central, patients: int) -> Population:
    """`patients` bare patients and the orders of a small workload, all applied at central."""
    for i in range(patients):
        new_person(site, given=f"Gone{i}")
    generate(site.admin, seed=25, patients=12, mutations=0.0)
    results = central.apply(site.messages())
    assert Counter(r["outcome"] for r in results)["applied"] == len(results), central.last_stderr[-2000:]
    persons = dict(site.sql("SELECT p.person_id, p.uuid FROM person p JOIN person_name n ON n.person_id = p.person_id "
                            "WHERE n.given_name LIKE 'Gone%%'"))
    orders = dict(site.sql("SELECT order_id, uuid FROM orders WHERE order_id IN "
                           "(SELECT order_id FROM drug_order UNION SELECT order_id FROM test_order)"))
    assert len(persons) == patients and len(orders) >= 5, (len(persons), len(orders))
    assert _central_count(central, "person", persons) == patients
    assert _central_count(central, "orders", orders) == len(orders)
    return Population(persons, orders)


def _marks(values: Any) -> str:
    return ", ".join(["%s"] * len(values))


def _delete_subclass_rows(site: Site, population: Population) -> None:
    """One transaction: the patient rows, and the drug_order / test_order rows (and the obs of the tests)."""
    persons, orders = list(population.persons), list(population.orders)
    with site.admin.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM patient WHERE patient_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM obs WHERE order_id IN ({_marks(orders)})", tuple(orders))
        for table in ("drug_order", "test_order"):
            cur.execute(f"DELETE FROM {table} WHERE order_id IN ({_marks(orders)})", tuple(orders))
        conn.commit()


def _delete_parent_rows(site: Site, population: Population) -> None:
    """One transaction: the persons (with their names) and the orders."""
    persons, orders = list(population.persons), list(population.orders)
    with site.admin.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM person_name WHERE person_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM person WHERE person_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM orders WHERE order_id IN ({_marks(orders)})", tuple(orders))
        conn.commit()


def _central_count(central: Central, table: str, uuids: dict[int, str]) -> int:
    values = tuple(uuids.values())
    return int(central.sql(f"SELECT COUNT(*) FROM {table} WHERE uuid IN ({_marks(values)})", values)[0][0])


def _assert_subclass_deletes_carry_their_parent(messages: list[dict[str, Any]], population: Population) -> None:
    """Every subclass delete went out, under its parent's uuid."""
    deleted = Counter((m["table"], m["uuid"]) for m in messages if m["op"] == "d")
    for uuid in population.persons.values():
        assert deleted[("patient", uuid)] >= 1, f"no delete of patient {uuid}"
    for uuid in population.orders.values():
        assert deleted[("drug_order", uuid)] + deleted[("test_order", uuid)] >= 1, f"no subclass delete of {uuid}"


def _patients_left(central: Central, population: Population) -> list[str]:
    values = tuple(population.persons.values())
    return [row[0] for row in central.sql(f"SELECT s.uuid FROM patient p JOIN person s ON s.person_id = p.patient_id "
                                          f"WHERE s.uuid IN ({_marks(values)})", values)]


def _assert_gone_at_central(central: Central, population: Population, run: Any = None) -> None:
    """`run`: (messages, apply's results, the checkpoint at the kill), named for each patient row left."""
    persons = population.persons
    left = _patients_left(central, population)
    if left and run is not None:
        messages, results, killed_at = run
        outcome = {r.get("message_id"): (r.get("outcome"), r.get("reason")) for r in results}
        seen = [(m["id"], m["op"], outcome.get(m["id"])) for m in messages
                if m["table"] == "patient" and m["uuid"] in set(left)]
        pytest.fail(f"{len(left)} patient row(s) left at central; checkpoint at the kill {killed_at}; their patient "
                    f"messages (id, op, outcome): {seen[:30]}")
    assert _central_count(central, "person", persons) == 0
    values = tuple(persons.values())
    assert central.sql(f"SELECT COUNT(*) FROM patient p JOIN person s ON s.person_id = p.patient_id "
                       f"WHERE s.uuid IN ({_marks(values)})", values) == [(0,)]
    assert _central_count(central, "orders", population.orders) == 0
    retry = central.sql(f"SELECT reason FROM `{central.schema}`.receiver_retry_queue")
    assert retry == [], retry[:3]


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    central = make_central(openmrs_db, tmp_path, broker_settings)
    yield central
    drop_schema(central)


def test_a_transaction_longer_than_an_enrich_batch_deletes_subclasses_at_central(
        openmrs_db, services, tmp_path, broker_settings, central) -> None:
    """(a) One purge transaction with more events than an enrich batch may hold (sender.max_transaction_events,
    20,000 in the field, 40 here): the person and orders deletes land in later batches than the patient and
    drug_order deletes."""
    site = _site(openmrs_db, services, tmp_path, broker_settings, batch=20, transaction_events=40)
    population = _populate(site, central, patients=60)
    persons, orders = list(population.persons), list(population.orders)
    with site.admin.connect(autocommit=False) as conn, conn.cursor() as cur:  # every subclass row first, as OpenMRS
        cur.execute(f"DELETE FROM patient WHERE patient_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM obs WHERE order_id IN ({_marks(orders)})", tuple(orders))
        for table in ("drug_order", "test_order"):
            cur.execute(f"DELETE FROM {table} WHERE order_id IN ({_marks(orders)})", tuple(orders))
        cur.execute(f"DELETE FROM person_name WHERE person_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM person WHERE person_id IN ({_marks(persons)})", tuple(persons))
        cur.execute(f"DELETE FROM orders WHERE order_id IN ({_marks(orders)})", tuple(orders))
        conn.commit()
    messages = site.messages()
    central.apply(messages)
    _assert_gone_at_central(central, population)
    _assert_subclass_deletes_carry_their_parent(messages, population)


def test_a_parent_deleted_in_a_later_transaction_while_the_sender_lags(
        openmrs_db, services, tmp_path, broker_settings, central) -> None:
    """(b) The patient and drug_order rows deleted in one transaction, their person and orders rows in a later one,
    both before the sender reads the first: by then the site DB holds neither parent."""
    site = _site(openmrs_db, services, tmp_path, broker_settings, batch=20, transaction_events=20_000)
    population = _populate(site, central, patients=30)
    _delete_subclass_rows(site, population)
    _delete_parent_rows(site, population)
    messages = site.messages()
    central.apply(messages)
    _assert_gone_at_central(central, population)
    _assert_subclass_deletes_carry_their_parent(messages, population)


def _start(mode: str, conf: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    if mode == "sender":
        return [subprocess.Popen(dbsync_cmd("sender", "--config", str(conf)), env=env, stderr=subprocess.DEVNULL)]
    capture = subprocess.Popen(dbsync_cmd("capture", "--config", str(conf)), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    enrich = subprocess.Popen(dbsync_cmd("enrich", "--config", str(conf)), env=env, stdin=capture.stdout,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    publish = subprocess.Popen(dbsync_cmd("publish", "--config", str(conf)), env=env, stdin=enrich.stdout,
                               stderr=subprocess.DEVNULL)
    assert capture.stdout is not None and enrich.stdout is not None
    capture.stdout.close()
    enrich.stdout.close()
    return [capture, enrich, publish]


def _master_position(site: Site) -> tuple[str, int]:
    file, pos = site.sql("SHOW MASTER STATUS")[0][:2]
    return str(file), int(pos)


@pytest.mark.parametrize("mode", ["sender", "pipe"])
def test_a_sender_killed_between_the_subclass_delete_and_the_parent_delete(
        openmrs_db, services, tmp_path, broker_settings, central, mode) -> None:
    """(c) The sender (or the pipe capture | enrich | publish) is killed with SIGKILL while it is inside the
    transaction of the subclass deletes (some of them confirmed, the rest not); the persons and orders are deleted
    before it starts again. Its link to the broker is slow (0.1 s each way) so that the kill lands there."""
    destination = f"test.subclass.{uuidlib.uuid4().hex[:8]}"
    with LinkProxy(broker_settings.host, broker_settings.port, latency_s=0.1) as link:
        slow = dataclasses.replace(broker_settings, port=link.port)
        site = _site(openmrs_db, services, tmp_path, slow, batch=10, transaction_events=10, destination=destination)
        population = _populate(site, central, patients=80)
        before = CheckpointStore(site.home)
        start = _master_position(site)
        _delete_subclass_rows(site, population)
        procs = _start(mode, site.config, site.env)
        deadline = time.monotonic() + 60
        inside = False
        try:
            while time.monotonic() < deadline and not inside:
                checkpoint = before.load() or {}
                inside = (checkpoint.get("file"), checkpoint.get("pos")) == start and checkpoint.get("row", -1) >= 0
                if not inside:
                    time.sleep(0.01)
        finally:
            os.kill(procs[-1 if mode == "pipe" else 0].pid, signal.SIGKILL)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        killed_at = before.load()
        before.close()
        assert inside, f"the sender never stopped inside the deleting transaction: checkpoint {killed_at}"
        _delete_parent_rows(site, population)
        dbsync("sender", "--config", str(site.config), "--until-idle", env=site.env)
    messages = drain(broker_settings, destination)
    results = central.apply(messages)
    _assert_subclass_deletes_carry_their_parent(messages, population)
    _assert_gone_at_central(central, population, (messages, results, killed_at))


def test_a_subclass_delete_whose_parent_uuid_is_nowhere_stops_the_sender_before_it(
        openmrs_db, services, tmp_path, broker_settings, central) -> None:
    """The person deleted *before* its patient row (foreign key checks off), in an earlier transaction: no site DB
    row and no later binlog event holds the uuid. Before, the patient delete was skipped with a warning and the
    checkpoint moved past it; now the sender stops before it (exit 14), and goes on once the row is put back."""
    destination = f"test.subclass.{uuidlib.uuid4().hex[:8]}"
    site = _site(openmrs_db, services, tmp_path, broker_settings, batch=20, transaction_events=20_000,
                 destination=destination)
    person, _name = new_person(site, given="Orphan")
    central.apply(site.messages())
    person_id = site.sql("SELECT person_id FROM person WHERE uuid=%s", (person,))[0][0]
    with site.admin.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute("SET foreign_key_checks = 0")
        cur.execute("DELETE FROM person_name WHERE person_id=%s", (person_id,))
        cur.execute("DELETE FROM person WHERE person_id=%s", (person_id,))
        conn.commit()
    site.messages()  # the person delete went out (central cannot apply it while its patient row is there)
    store = CheckpointStore(site.home)
    before = store.load()
    site.sql("DELETE FROM patient WHERE patient_id=%s", (person_id,))
    run = dbsync("sender", "--config", str(site.config), "--until-idle", env=site.env, check=False)
    assert run.returncode == 14, run.stderr.decode()[-2000:]
    assert b"patient" in run.stderr and b"its uuid is nowhere" in run.stderr, run.stderr.decode()[-2000:]
    assert store.load() == before, "the checkpoint moved past the patient delete"
    with site.admin.connect(autocommit=False) as conn, conn.cursor() as cur:  # the remedy the message names
        cur.execute("SET foreign_key_checks = 0")
        cur.execute("INSERT INTO person (person_id, gender, creator, date_created, uuid) "
                    "VALUES (%s, 'F', 1, NOW(), %s)", (person_id, person))
        conn.commit()
    dbsync("sender", "--config", str(site.config), "--until-idle", env=site.env)
    store.close()
    sent = drain(broker_settings, destination)
    assert [(m["table"], m["op"], m["uuid"]) for m in sent if m["table"] == "patient"] == [("patient", "d", person)]
