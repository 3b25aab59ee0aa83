"""Issue 28 part 3: the brokers the seed allows. A small two-site sync through ActiveMQ Artemis, ActiveMQ Classic
and RabbitMQ, in queue mode (one receiver) and topic mode (two receivers, each on a durable subscription of its own,
each into its own central database): the broker is killed (-9) and restarted while a receiver runs, a receiver is
killed (-9) and started again, and every row reaches every central database (read with plain SQL). Each site sends
as its own broker user and is registered with it, so a broker whose stamp of the sender the receiver misread would
leave rows refused.

ActiveMQ Classic and RabbitMQ start on first use (devtools/services: an embedded activemq-all, Debian's
rabbitmq-server on ports of their own), so other tests never pay for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from helpers import dbsync, dbsync_cmd, query, receiver_config, sender_config

from dbsync_cli.broker import BrokerError, BrokerSettings, error_text, open_connection
from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state
from devtools.services import other_broker
from devtools.services.activemq import kill_activemq, start_activemq
from devtools.services.artemis import broker as artemis_broker
from devtools.services.artemis import start_artemis
from devtools.services.common import pid_alive, port_open, services_home, wait_until
from devtools.services.rabbitmq import kill_rabbitmq, start_rabbitmq

pytestmark = pytest.mark.lane2

PEOPLE = 4  # per site and round: 3 rounds × 2 sites × 4 = 24 people (person + patient + name: 72 rows)


@dataclass(frozen=True)
class Broker:
    kind: str
    central: BrokerSettings
    sites: dict[str, BrokerSettings]
    destination_prefix: str  # Artemis's shipped broker.xml lets the site users send to test.trust.* only
    kill: Callable[[], None]
    start: Callable[[], None]
    management_url: str | None = None  # RabbitMQ's management API


def _kill_artemis() -> None:
    art = artemis_broker()
    pid = art.pid()
    if pid is not None and pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid) and not any(port_open(p, art.host) for p in (art.core_port,
                                                                                              art.stomp_port,
                                                                                              art.tls_port)),
                   timeout=30, what="artemis gone after kill -9")


@pytest.fixture(scope="module", params=["artemis", "activemq", "rabbitmq"])
def broker(request, services) -> Broker:
    if request.param == "artemis":
        art = services.artemis
        return Broker("artemis", art.central_settings(), {s: art.site_settings(s) for s in ("site1", "site2")},
                      "test.trust.", _kill_artemis, lambda: start_artemis(services_home()) and None)
    endpoint = other_broker(request.param)
    kill, start = ((kill_activemq, start_activemq) if request.param == "activemq" else (kill_rabbitmq, start_rabbitmq))
    return Broker(request.param, endpoint.settings(), {s: endpoint.site_settings(s) for s in ("site1", "site2")},
                  "test.brokers.", kill, lambda: start() and None, endpoint.management_url)


def _broker_keys(settings: BrokerSettings, destination: str, mode: str) -> str:
    """The [broker] keys beyond those the helpers write (they write url, user, destination, ca_file last)."""
    keys = f'destination_type = "{mode}"\n'
    if settings.vhost:
        keys += f'vhost = "{settings.vhost}"\n'
    return keys


@dataclass
class Receiver:
    config: Path
    env: dict[str, str]
    db: DbParams
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        seen = self.log.read_text().count("consuming ") if self.log.exists() else 0
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(dbsync_cmd("receiver", "--config", str(self.config)), env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        # a topic subscription must exist before anything is published to it
        wait_until(lambda: self.log.read_text().count("consuming ") > seen, timeout=60,
                   what=f"receiver ({self.log})", alive=lambda: self.proc is not None and self.proc.poll() is None,
                   log=self.log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def people(self, uuids: list[str]) -> int:
        marks = ",".join(["%s"] * len(uuids))
        return query(self.db, f"SELECT COUNT(*) FROM person p JOIN person_name n ON n.person_id = p.person_id "
                              f"WHERE p.uuid IN ({marks})", tuple(uuids))[0][0]


def _people(admin: DbParams, count: int) -> list[str]:
    """`count` patients with a name at a site, in one transaction; their person uuids."""
    uuids = [str(uuidlib.uuid4()) for _ in range(count)]
    with admin.connect(autocommit=False) as conn, conn.cursor() as cur:
        for value in uuids:
            cur.execute("INSERT INTO person (gender, creator, date_created, uuid) "
                        "VALUES ('F', 1, '2024-03-01 01:00:00', %s)", (value,))
            person_id = cur.lastrowid
            cur.execute("INSERT INTO patient (patient_id, creator, date_created) VALUES (%s, 1, "
                        "'2024-03-01 01:00:00')", (person_id,))
            cur.execute("INSERT INTO person_name (person_id, given_name, family_name, creator, date_created, "
                        "preferred, uuid) VALUES (%s, 'Ann', 'Doe', 1, '2024-03-01 01:00:00', 1, UUID())",
                        (person_id,))
        conn.commit()
    return uuids


@pytest.fixture
def receivers(request) -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.stop()


@pytest.mark.parametrize("mode", ["queue", "topic"])
def test_two_sites_sync_through_kills_of_the_broker_and_the_receiver(broker, mode, services, openmrs_db, tmp_path,
                                                                     receivers) -> None:
    run_id = uuidlib.uuid4().hex[:8]
    destination = f"{broker.destination_prefix}{run_id}"
    sites = {}
    for name in ("site1", "site2"):
        admin = openmrs_db(name)
        repl = services[name].repl.with_database(admin.database)
        conf, env = sender_config(tmp_path, repl, broker.sites[name], site=name, destination=destination, batch=20)
        conf.write_text(conf.read_text() + _broker_keys(broker.sites[name], destination, mode))
        sites[name] = (admin, conf, env)
    schemas = []
    for number in range(2 if mode == "topic" else 1):
        db = openmrs_db("central")
        schema = f"{db.database}_state"[:64]
        schemas.append((db, schema))
        with db.connect(autocommit=False) as conn:
            state.migrate(conn, schema, db.database)
            for name in sites:
                state.add_site(conn, schema, name, broker_user=name)  # trust: each site sends as its own user
        conf, env = receiver_config(tmp_path, db, broker.central, destination=destination, state_schema=schema,
                                    destination_type=mode, site_id=f"central{number}-{run_id}",
                                    name=f"receiver{number}")
        conf.write_text(conf.read_text() + (f'vhost = "{broker.central.vhost}"\n' if broker.central.vhost else "")
                        + (f'management_url = "{broker.management_url}"\n' if broker.management_url else ""))
        receivers.append(Receiver(conf, env, db, tmp_path / f"receiver{number}.log"))
    try:
        sent: list[str] = []

        def round_of_changes() -> None:
            for admin, conf, env in sites.values():
                sent.extend(_people(admin, PEOPLE))
                dbsync("sender", "--config", str(conf), "--until-idle", env=env, timeout=120)

        def all_arrived(receiver: Receiver) -> None:
            wait_until(lambda: receiver.people(sent) == len(sent), timeout=90,
                       what=f"{len(sent)} people at {receiver.db.database} ({receiver.log})")

        for receiver in receivers:
            receiver.start()
        round_of_changes()
        for receiver in receivers:
            all_arrived(receiver)
        # the broker dies holding confirmed messages; the receivers reconnect to it once it is back
        round_of_changes()
        broker.kill()
        broker.start()
        for receiver in receivers:
            all_arrived(receiver)
        # a receiver dies; what is sent meanwhile waits for it at the broker (its durable subscription in topic mode)
        for receiver in receivers:
            receiver.kill()
        round_of_changes()
        _status_sees_the_waiting_messages(broker, mode, receivers[0])
        for receiver in receivers:
            receiver.start()
            all_arrived(receiver)
        for receiver in receivers:
            refused = query(receiver.db, f"SELECT COUNT(*) FROM `{receiver_schema(receiver, schemas)}`"
                                         ".receiver_retry_queue")[0][0]
            assert refused == 0, f"{refused} message(s) parked at {receiver.db.database}"
        assert len(sent) == 3 * 2 * PEOPLE
    finally:
        for receiver in receivers:
            receiver.stop()
        for db, schema in schemas:
            query(db, f"DROP DATABASE IF EXISTS `{schema}`")
        if mode == "topic" and broker.kind == "artemis":
            for number in range(len(schemas)):
                _unsubscribe_artemis(services.artemis.settings(), f"central{number}-{run_id}", destination)


def _status_sees_the_waiting_messages(broker: Broker, mode: str, receiver: Receiver) -> None:
    """`dbsync status` reads the consumed queue the broker's own way (Artemis management, ActiveMQ's statistics
    plugin, RabbitMQ's management API), or says once that it cannot: never a WARNING that it got no answer."""
    deadline = time.monotonic() + 15  # RabbitMQ's management statistics lag (collect_statistics_interval)
    while True:
        run = dbsync("status", "--config", str(receiver.config), "--json", env=receiver.env, check=False)
        report = orjson.loads(run.stdout)
        queue = report["broker"]["queue"]
        if queue.get("messages") or "messages" not in queue or time.monotonic() > deadline:
            break
        time.sleep(1)
    problems = " | ".join(p["message"] for p in report["problems"])
    assert "cannot read broker queue statistics" not in problems, problems
    if broker.kind == "activemq" and mode == "topic":
        assert queue["available"] is False, queue
        assert queue["note"] == "not available on ActiveMQ Classic for a durable topic subscription"
        assert any("not available on ActiveMQ Classic" in note for note in report["notes"]), report["notes"]
        return
    assert queue["messages"] > 0 and queue["consumers"] == 0, queue
    if broker.kind == "rabbitmq":  # RabbitMQ keeps no age of its oldest message: a warning at once
        assert queue["first_message_age_seconds"] is None and "with no consumer" in problems, problems
    else:
        assert queue["first_message_age_seconds"] is not None, queue


def receiver_schema(receiver: Receiver, schemas: list[tuple[DbParams, str]]) -> str:
    return next(schema for db, schema in schemas if db.database == receiver.db.database)


def _unsubscribe_artemis(settings: BrokerSettings, client_id: str, destination: str) -> None:
    """Artemis keeps a durable subscription's queue (and what reaches it) until it is removed (as the admin user:
    it takes deleteDurableQueue)."""
    with contextlib.suppress(BrokerError, OSError):
        conn = open_connection(settings, client_id=client_id)
        try:
            conn.subscribe(destination, id="cleanup", ack="auto",
                           headers={"subscription-type": "MULTICAST", "durable-subscription-name": "dbsync"})
            conn.unsubscribe("cleanup", headers={"durable-subscription-name": "dbsync"})
            time.sleep(0.3)
        finally:
            conn.disconnect()


def test_rabbitmq_names_why_it_refused_the_connect(services) -> None:
    """RabbitMQ reads STOMP's host header as the vhost: without broker.vhost every CONNECT was refused with a bare
    `Bad CONNECT`; the one-line error now carries the ERROR frame's body (the vhost refused), never the password."""
    central = other_broker("rabbitmq").settings()
    wrong = dataclasses.replace(central, vhost=None)  # stomp.py then names the broker's host
    with pytest.raises(BrokerError) as refused:
        open_connection(wrong)
    text = str(refused.value)
    assert "Bad CONNECT" in text and "127.0.0.1" in text and "access" in text.lower(), text
    assert central.password and central.password not in text
    open_connection(central).disconnect()  # with the vhost: connected


def test_rabbitmq_refuses_a_user_id_that_is_not_the_login(services) -> None:
    """The receiver's trust on RabbitMQ: the broker refuses a SEND whose user-id is another site's."""
    import stomp

    errors: list[str] = []

    class Errors(stomp.ConnectionListener):
        def on_error(self, frame) -> None:
            errors.append(error_text(frame))

    conn = open_connection(other_broker("rabbitmq").site_settings("site1"), listener=Errors())
    try:
        conn.send(f"test.brokers.{uuidlib.uuid4().hex[:8]}", "{}", headers={"user-id": "site2", "receipt": "r"})
        wait_until(lambda: bool(errors), timeout=10, what="an ERROR frame")
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()
    # "precondition_failed: ... user_id property set to 'site2' but authenticated user was 'site1'"
    assert "'site2'" in errors[0] and "'site1'" in errors[0], errors
