"""The broker file the docs give (examples/artemis/broker.xml) is the one the test broker runs: what the documented
deployment's users do works, and what they must not do is refused.

Central logs in as its own user (role dbsync-receiver), never as the broker's administrator, the sites as
theirs. The failures the file was written against: the administrator locked out of `artemis user add`
(AMQ229213), a sender's request queue it may not read (AMQ339016 logged forever), central's status at WARNING
because it could not read the broker's management.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import orjson
import stomp
from helpers import dbsync, receiver_config
from test_field_cases import publish_raw

from dbsync_cli.broker import BrokerSettings, open_connection

DESTINATION = "demo.openmrs.sync"  # the destination the bed renders the file's sections for (and the demo uses)


class _Errors(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.found: list[str] = []
        self.receipts: list[str] = []

    def on_error(self, frame) -> None:
        self.found.append(frame.headers.get("message", ""))

    def on_receipt(self, frame) -> None:
        self.receipts.append(frame.headers.get("receipt-id", ""))


def _subscribe(settings: BrokerSettings, destination: str, wait: float = 3.0) -> list[str]:
    """The broker's errors for a SUBSCRIBE of `destination` as this user (none: it may read it)."""
    listener = _Errors()
    conn = open_connection(settings, listener=listener)
    try:
        conn.subscribe(destination, id="probe", ack="client-individual",
                       headers={"subscription-type": "ANYCAST", "receipt": "sub"})
        deadline = time.monotonic() + wait
        while not listener.found and "sub" not in listener.receipts and time.monotonic() < deadline:
            time.sleep(0.05)
        return listener.found
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def _send(settings: BrokerSettings, destination: str) -> list[str]:
    """The broker's errors for one persistent SEND to `destination` as this user (none: it was taken)."""
    listener = _Errors()
    conn = open_connection(settings, listener=listener)
    try:
        conn.send(destination, b"{}", headers={"persistent": "true", "destination-type": "ANYCAST",
                                               "receipt": "sent"})
        deadline = time.monotonic() + 5
        while not listener.found and "sent" not in listener.receipts and time.monotonic() < deadline:
            time.sleep(0.05)
        return listener.found
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def test_each_site_reads_its_own_request_and_reply_queues_and_only_central_writes_them(services) -> None:
    art = services.artemis
    central, site1, site2 = art.central_settings(), art.site_settings("site1"), art.site_settings("site2")
    for queue in ("request", "reply"):
        own = f"{DESTINATION}.{queue}.site1"
        assert _subscribe(site1, own) == [], queue  # the sender's request loop: no AMQ339016
        refused = _subscribe(site2, own)
        assert refused and "AMQ339016" in refused[0], (queue, refused)
        assert _send(central, own) == [], queue
        refused = _send(site2, own)  # a refused SEND reads AMQ339011 "Error sending message" over STOMP
        assert refused and ("AMQ229032" in refused[0] or "AMQ339011" in refused[0]), (queue, refused)
    # a site sends its rows and its control requests, and reads neither back
    for address in (DESTINATION, f"{DESTINATION}.control"):
        assert _send(site1, address) == [], address
        refused = _subscribe(site1, address)
        assert refused and "AMQ339016" in refused[0], (address, refused)
        assert _subscribe(central, address) == [], address
    # what the probe sent leaves nothing for the demo to read: drained as the administrator (central may not read
    # a site's queues)
    for address in (DESTINATION, f"{DESTINATION}.control", f"{DESTINATION}.reply.site1",
                    f"{DESTINATION}.request.site1"):
        _drain(art.settings(), address)


def _drain(settings: BrokerSettings, destination: str) -> None:
    received: list[object] = []

    class Ack(stomp.ConnectionListener):
        def on_message(self, frame) -> None:
            received.append(frame)
            conn.ack(frame.headers["ack"])

    conn = open_connection(settings, listener=Ack())
    try:
        conn.subscribe(destination, id="drain", ack="client-individual", headers={"subscription-type": "ANYCAST"})
        last = -1
        while last != len(received):
            last = len(received)
            time.sleep(0.5)
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def test_centrals_user_reads_the_broker_management_for_status_and_config_check(openmrs_db, services,
                                                                                tmp_path) -> None:
    """`dbsync config check` and `dbsync status` at central, logged in as central's user of the shipped file: the
    broker's management answers (queue statistics, address settings), so neither reports a broker problem."""
    central_db = openmrs_db("central")
    schema = f"t_file_{uuid.uuid4().hex[:8]}"
    destination = f"test.trust.file{uuid.uuid4().hex[:6]}"
    as_central = services.artemis.central_settings()
    conf, env = receiver_config(tmp_path, central_db, as_central, destination=destination, state_schema=schema)
    publish_raw(services.artemis.site_settings("site1"), destination, [{"v": 1, "id": "site1:x:1", "site": "site1"}])
    dbsync("sites", "add", "site1", "--config", str(conf), env=env)
    run = dbsync("config", "check", "--json", "--config", str(conf), env=env, check=False)
    report = orjson.loads(run.stdout)
    broker = {f["check"]: f for f in report["findings"] if f["check"].startswith("broker")}
    assert run.returncode == 0 and {f["state"] for f in broker.values()} == {"ok"}, broker
    run = dbsync("status", "--json", "--config", str(conf), env=env, check=False)
    status = orjson.loads(run.stdout)
    text = orjson.dumps(status).decode()
    assert "management" not in text and "AMQ" not in text and "permission" not in text, text
    _drain(as_central, destination)
    with services["central"].admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
