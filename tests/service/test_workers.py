"""Several receiver workers (`dbsync receiver --worker`) on one central, real MariaDB and Artemis.

Artemis gives all messages of one group (JMSXGroupID, set by every sender to its site) to one consumer of a queue;
two workers draining three sites apply every row once in effect and each site's changes in order, a kill -9 of
one worker mid-run leaves its sites to the other (nothing lost), and a receiver without --worker still refuses to
run beside them (exit 13). Checked with plain SQL on central's tables and the sites' ground truth.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid as uuidlib
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import stomp
from helpers import dbsync, dbsync_cmd, sender_config
from receiver_helpers import Site, drop_schema, make_central, make_site, plain_sql
from test_apply import new_person
from test_bulk_actions import park

from devtools.workload.generator import generate
from devtools.workload.truth import compare

pytestmark = [pytest.mark.lane2]

SITES = (("site-a", "site1"), ("site-b", "site2"), ("site-c", "site1"))  # (site id, MariaDB instance)


class _Collect(stomp.ConnectionListener):
    def __init__(self, name: str, seen: dict[str, list[tuple[str, int]]], conn: stomp.Connection12) -> None:
        self.name, self.seen, self.conn = name, seen, conn

    def on_message(self, frame) -> None:
        self.seen[frame.headers["_AMQ_GROUP_ID"]].append((self.name, int(frame.body)))
        self.conn.ack(frame.headers["ack"], frame.headers["subscription"])


def test_artemis_gives_every_message_of_a_group_to_one_consumer_in_order(broker_settings) -> None:
    """The broker's default grouping (no address setting needed): two consumers of one queue, six groups sent
    interleaved; each group's messages all reach one consumer, in the order sent. Sent by plain STOMP with the
    header the senders set."""
    queue = f"test.groups.{uuidlib.uuid4().hex[:8]}"
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    consumers = []
    for name in ("one", "two"):
        conn = stomp.Connection12([(broker_settings.host, broker_settings.port)])
        conn.set_listener("c", _Collect(name, seen, conn))
        conn.connect(broker_settings.user, broker_settings.password, wait=True)
        conn.subscribe(queue, id=name, ack="client-individual",
                       headers={"subscription-type": "ANYCAST", "consumer-window-size": "1024"})
        consumers.append(conn)
    producer = stomp.Connection12([(broker_settings.host, broker_settings.port)])
    producer.connect(broker_settings.user, broker_settings.password, wait=True)
    try:
        groups = [f"site{g}" for g in range(6)]
        for n in range(300):
            producer.send(queue, str(n), headers={"persistent": "true", "destination-type": "ANYCAST",
                                                  "JMSXGroupID": groups[n % len(groups)]})
        deadline = time.monotonic() + 30
        while sum(len(v) for v in seen.values()) < 300 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(len(v) for v in seen.values()) == 300
        owners = {group: {name for name, _n in got} for group, got in seen.items()}
        assert all(len(names) == 1 for names in owners.values()), owners
        assert {name for names in owners.values() for name in names} == {"one", "two"}  # both got groups
        for group, got in seen.items():
            assert [n for _name, n in got] == sorted(n for _name, n in got), group
    finally:
        for conn in [*consumers, producer]:
            conn.disconnect()


def _site(openmrs_db, services, tmp_path: Path, broker, destination: str, name: str, instance: str) -> Site:
    admin = openmrs_db(instance)
    repl = services[instance].repl.with_database(admin.database)
    work = tmp_path / f"work-{name}"
    work.mkdir()
    conf, env = sender_config(work, repl, broker, site=name, destination=destination, home=tmp_path / f"home-{name}")
    site = Site(admin, conf, env, tmp_path / f"home-{name}")
    site.initial = site.messages()  # the metadata rows: central has its own
    return site


def _workers(central, log: Path, count: int) -> list[subprocess.Popen]:
    with log.open("ab") as err:
        return [subprocess.Popen(dbsync_cmd("receiver", "--worker", "--config", str(central.config)),
                                 env=central.env, stderr=err) for _ in range(count)]


def _applied(central) -> int:
    return int(plain_sql(central.db, f"SELECT COUNT(*) FROM `{central.schema}`.applied_message")[0][0])  # noqa: S608


@pytest.mark.slow
def test_two_workers_three_sites_with_a_kill_9(openmrs_db, services, tmp_path, broker_settings) -> None:
    destination = f"test.workers.{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=tuple(n for n, _i in SITES),
                           destination=destination)
    log = tmp_path / "workers.log"
    workers: list[subprocess.Popen] = []
    try:
        sites, truths, sent = [], [], 0
        for seed, (name, instance) in enumerate(SITES, start=41):
            site = _site(openmrs_db, services, tmp_path, broker_settings, destination, name, instance)
            truths.append(generate(site.admin, seed=seed, site=name, patients=5, obs_per_encounter=6,
                                   mutations=0.5))
            sites.append(site)
        workers = _workers(central, log, 2)
        time.sleep(2)  # both consumers subscribed: the broker spreads the groups over them
        publishers = []
        for site in sites:
            messages = site.messages()  # creates, then updates and deletes of the same rows: order matters
            sent += len(messages)
            data = b"".join(orjson.dumps(m) + b"\n" for m in messages)
            publishers.append(threading.Thread(target=dbsync, args=("publish", "--config", str(site.config)),
                                               kwargs={"env": site.env, "stdin": data}))
        for thread in publishers:
            thread.start()
        # kill one worker once both hold sites and apply has begun, so that the one killed surely leaves sites
        # with work behind (killed later, on a loaded machine, its sites may all be done: nothing to take over)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
                len(set(re.findall(r"receiver worker (\d+) applies site", log.read_text()))) < 2
                or _applied(central) < sent // 10):
            time.sleep(0.05)
        at_kill = _applied(central)
        assert at_kill < sent, "every message was applied before the kill: the test proves nothing"
        workers[0].send_signal(signal.SIGKILL)  # mid-run: its sites are taken over by the other worker
        workers[0].wait()
        for thread in publishers:
            thread.join()

        # a receiver without --worker refuses to run beside the workers
        single = dbsync("receiver", "--config", str(central.config), "--idle-exit", "1", env=central.env,
                        check=False, timeout=120)
        assert single.returncode == 13, single.stderr.decode()[-2000:]
        assert b"--worker" in single.stderr

        s = f"`{central.schema}`"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (
                _applied(central) < sent or plain_sql(central.db, f"SELECT COUNT(*) FROM {s}.inbox")[0][0]):  # noqa: S608
            time.sleep(0.2)
        assert _applied(central) == sent, log.read_text()[-4000:]
        assert plain_sql(central.db, f"SELECT COUNT(*) FROM {s}.inbox") == [(0,)]  # noqa: S608
        assert plain_sql(central.db, f"SELECT COUNT(*) FROM {s}.receiver_retry_queue") == [(0,)]  # noqa: S608
        for (name, _instance), truth in zip(SITES, truths, strict=True):
            assert compare(central.db, truth, username_suffix=f"|{name}") == [], name  # every row, in order
        assert plain_sql(central.db, "SELECT COUNT(*) FROM person WHERE void_reason = '[placeholder]'") == [(0,)]
        skipped = dict(plain_sql(central.db, f"SELECT reason, SUM(count) FROM {s}.receiver_skipped "  # noqa: S608
                                               "GROUP BY reason"))
        print("skipped", skipped, "sent", sent, "applied at the kill", at_kill)
        # one applier per site: no message overtook an older one of its site (the order guard never had to act)
        assert "stale" not in skipped, skipped
        text = log.read_text()
        assert text.count("applies site(s)") >= 3  # the survivor took the dead worker's sites over
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_schema(central)


def test_operator_actions_are_carried_out_by_the_lead_worker(openmrs_db, tmp_path, broker_settings) -> None:
    """`dbsync retry drop` while two workers run: handed over (receiver_request), carried out by the lead worker
    holding every site's lock meanwhile; `dbsync apply --from-inbox` (a second applier) still exits 13."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"),
                           destination=f"test.workers.{uuidlib.uuid4().hex[:8]}")
    workers = _workers(central, tmp_path / "workers.log", 2)
    try:
        s = f"`{central.schema}`"
        first = park(central, site="site1", table="obs", reason="refused: test", kind="permanent")
        second = park(central, site="site2", table="obs", reason="refused: test", kind="permanent")
        time.sleep(3)  # both workers up, one of them the lead
        dropped = dbsync("retry", "drop", "--site", "site1", "--yes", "--config", str(central.config),
                         env=central.env, check=False)
        assert dropped.returncode == 0, dropped.stderr.decode()[-2000:]
        left = {r[0] for r in plain_sql(central.db, f"SELECT id FROM {s}.receiver_retry_queue")}  # noqa: S608
        assert first not in left and second in left
        served = plain_sql(central.db, f"SELECT state, taken_by FROM {s}.receiver_request")  # noqa: S608
        assert [r[0] for r in served] == ["done"] and served[0][1] is not None  # a worker served it
        again = dbsync("apply", "--from-inbox", "--config", str(central.config), env=central.env, check=False)
        assert again.returncode == 13 and b"--worker" in again.stderr, again.stderr.decode()[-2000:]
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=60)
        drop_schema(central)


def test_a_placeholder_another_worker_creates_at_the_same_time_is_read_back_not_doubled(
        openmrs_db, services, tmp_path, broker_settings) -> None:
    """Two workers (two sites) referencing one missing person at once both create its placeholder: the loser of
    the unique key waits for the winner's transaction, gets a duplicate key, replays its batch and reads the row."""
    central = make_central(openmrs_db, tmp_path, broker_settings)
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    try:
        person, _name = new_person(site)
        names = [m for m in site.messages() if m["table"] == "person_name"]
        assert len(names) == 1 and names[0]["data"]["person_id"]["uuid"] == person
        winner = central.db.connect(autocommit=False)  # another worker's batch, its placeholder not committed yet
        with winner.cursor() as cur:
            cur.execute("INSERT INTO person (gender, creator, date_created, voided, void_reason, uuid) "
                        "VALUES ('', 1, NOW(), 1, '[placeholder]', %s)", (person,))
        threading.Timer(2.0, winner.commit).start()  # while this apply waits on the unique key
        outcomes = central.apply(names)
        winner.close()
        assert [o["outcome"] for o in outcomes] == ["applied"], central.last_stderr[-2000:]
        assert "Duplicate entry" in central.last_stderr  # the race happened: the batch lost the unique key
        rows = plain_sql(central.db, "SELECT p.person_id, COUNT(n.person_name_id) FROM person p LEFT JOIN "
                                     "person_name n ON n.person_id = p.person_id WHERE p.uuid = %s "
                                     "GROUP BY p.person_id", (person,))
        assert len(rows) == 1 and rows[0][1] == 1  # one person, the name on it
    finally:
        drop_schema(central)


def test_a_worker_that_joins_takes_the_sites_the_first_hands_on_whichever_it_prefers(openmrs_db, tmp_path,
                                                                                     broker_settings) -> None:
    """The first worker up stored and took all four sites; when a second joins, the first hands two on at its next
    round and the second takes exactly those, although it ranks the two the first keeps higher (by name). Real
    server locks on real sessions: before, the second tried only the first two candidates, both held, and stayed
    idle while sites waited (scripts/bench-workers: one worker idle for seconds mid-backlog)."""
    from dbsync_cli.openmrs import SchemaModel, synced_table_names
    from dbsync_cli.receiver import inbox
    from dbsync_cli.receiver.apply import Applier, ApplySettings
    from dbsync_cli.receiver.worker_locks import WorkerSlot
    from dbsync_cli.receiver.worker_sites import WorkerSites

    names = ("wa", "wb", "wc", "wd")
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=names)
    workers: list[tuple[WorkerSlot, Applier, WorkerSites]] = []
    try:
        with central.db.connect(autocommit=False) as conn:
            inbox.store(conn, central.schema, [inbox.Delivery(f"{n}:1", n, b"{}", "") for n in names], worker=0)
        with central.db.connect() as conn:
            model = SchemaModel.load(conn, central.db.database or "", synced_table_names(None, None))
        for _ in range(2):
            slot = WorkerSlot(central.db, central.schema)
            slot.take()
            applier = Applier(ApplySettings(central=central.db, state_schema=central.schema), model)
            workers.append((slot, applier, WorkerSites(applier, slot)))
            if len(workers) == 1:
                workers[0][2].round(idle=True)  # alone: it takes every site with work
                assert workers[0][2].held == set(names)
        (_, _, first), (_, _, second) = workers
        second.round(idle=True)
        assert second.held == set()  # all four are the first's until it hands some on
        first.round(idle=True)
        assert first.held == {"wa", "wb"}  # two went: its share of four sites for two workers is two
        second.round(idle=True)
        assert second.held == {"wc", "wd"}
    finally:
        for slot, applier, _sites in workers:
            applier.close()
            slot.close()
        drop_schema(central)
