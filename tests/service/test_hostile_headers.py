"""Issue 25 case 4: a NUL byte in a STOMP header must not stall consume for every site.

Artemis accepts a SEND whose header value holds a NUL byte (it answers the receipt) and delivers the header bytes
as they are: ``…dbsync-site:site1\\x00evil\\n…ack:N\\n\\n<body>\\x00``. stomp.py ends a frame at the first NUL, so
the consumer gets a MESSAGE whose headers stop inside that value, with no ``ack`` header and no body, and the
rest of the frame is read as further "frames". Seen: ``KeyError: 'ack'`` crash-looped the receiver for minutes,
then the message sat in Artemis's dead-letter queue with no trace in dbsync.

These tests send such a frame on the real broker, as a site's own broker user, between valid messages of that
site and of another one, and run the receiver: every valid message applies, the bad delivery is parked with one
line, nothing restarts; and `dbsync status` counts what sits in the destination's dead-letter and expiry queues.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid as uuidlib
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import Central, drop_schema, make_central, make_site
from test_apply import new_person
from test_field_cases import publish_raw
from test_receiver_e2e import _start, _stop

from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.broker_queue import dead_letter_queues, queue_stats

pytestmark = pytest.mark.lane2

BOUND_SECONDS = 90  # the whole exchange; before the fix the receiver crash-looped for minutes


def _frame(command: str, headers: list[tuple[str, bytes | str]], body: bytes = b"") -> bytes:
    """One raw STOMP frame: header values as given (stomp.py would escape or refuse a NUL)."""
    lines = [command.encode()]
    lines += [name.encode() + b":" + (value if isinstance(value, bytes) else value.encode())
              for name, value in headers]
    return b"\n".join(lines) + b"\n\n" + body + b"\x00"


def _read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def send_with_nul_header(broker: BrokerSettings, destination: str, message: dict[str, Any],
                         header: str = "dbsync-site", forged: dict[str, Any] | None = None) -> None:
    """A persistent SEND of `message` whose `header` value holds a NUL byte, over a raw socket; waits for the
    broker's receipt (Artemis accepts it). `forged`: a message for another site written after a NUL in the
    body, as a whole MESSAGE frame with that site's broker user (what stomp.py reads once the frame is cut)."""
    values: dict[str, bytes | str] = {"dbsync-id": message["id"], "dbsync-site": message["site"]}
    values[header] = str(values[header]).encode() + b"\x00evil"
    body = orjson.dumps(message)
    if forged is not None:
        body += b"\x00\n" + _frame("MESSAGE", [
            ("subscription", "dbsync-consume"), ("message-id", "1,1"), ("destination", destination),
            ("JMSXUserID", forged["site"]), ("dbsync-site", forged["site"]), ("dbsync-id", forged["id"]),
            ("ack", "1,1")], orjson.dumps(forged))
    with socket.create_connection((broker.host, broker.port), timeout=10) as sock:
        sock.sendall(_frame("CONNECT", [("accept-version", "1.2"), ("host", "localhost"),
                                        ("login", broker.user or ""), ("passcode", broker.password or "")]))
        assert _read_until(sock, b"\x00").startswith(b"CONNECTED"), "the site user could not log in"
        sock.sendall(_frame("SEND", [("destination", destination), ("destination-type", "ANYCAST"),
                                     ("persistent", "true"), *values.items(), ("receipt", "nul"),
                                     ("content-length", str(len(body)))], body))
        answer = _read_until(sock, b"\x00")
        assert answer.startswith(b"RECEIPT"), answer
        sock.sendall(_frame("DISCONNECT", []))


def _receive_until_parked(central: Central, names: dict[str, str], tmp_path: Any,
                          columns: str) -> tuple[list[tuple[Any, ...]], str]:
    """Run `dbsync receiver` until every named person is at central and the retry queue holds an entry (or
    BOUND_SECONDS pass); the retry queue's `columns` and the receiver's log."""
    log = tmp_path / "receiver.log"
    started = time.monotonic()
    proc = _start(["receiver", "--config", str(central.config)], central.env, log)
    parked: list[tuple[Any, ...]] = []
    try:
        while time.monotonic() - started < BOUND_SECONDS:
            assert proc.poll() is None, log.read_text()[-3000:]
            parked = central.sql(f"SELECT {columns} FROM `{central.schema}`.receiver_retry_queue")
            if _names(central, names) == names and parked:
                break
            time.sleep(0.5)
    finally:
        _stop(proc, log)
    return parked, log.read_text()


def _names(central: Central, names: dict[str, str]) -> dict[str, str]:
    return dict(central.sql("SELECT uuid, given_name FROM person_name WHERE uuid IN (" +
                            ", ".join(["%s"] * len(names)) + ")", tuple(names)))


def _relabel(messages: list[dict[str, Any]], site: str) -> list[dict[str, Any]]:
    return [dict(m, site=site) for m in messages]


@pytest.mark.parametrize("header", ["dbsync-site", "dbsync-id", "forged"])
def test_a_nul_byte_in_a_header_is_parked_and_stops_nothing(openmrs_db, services, tmp_path, broker_settings,
                                                            header) -> None:
    destination = f"test.trust.nul{uuidlib.uuid4().hex[:10]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"), destination=destination)
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
        names = {new_person(site1, given=f"One{i}")[1]: f"One{i}" for i in range(4)}
        first = site1.messages()
        names |= {new_person(site1, given=f"Two{i}")[1]: f"Two{i}" for i in range(4)}
        second = site1.messages()
        names |= {new_person(site2, given=f"Other{i}")[1]: f"Other{i}" for i in range(4)}
        other = _relabel(site2.messages(), "site2")
        as_site1, as_site2 = services.artemis.site_settings("site1"), services.artemis.site_settings("site2")
        publish_raw(as_site1, destination, first)
        hostile = dict(first[0], id="site1:hostile:1", uuid=str(uuidlib.uuid4()))
        forged = dict(other[-1], id="site2:forged:1", uuid=str(uuidlib.uuid4())) if header == "forged" else None
        header = "dbsync-site" if forged else header
        send_with_nul_header(as_site1, destination, hostile, header, forged)
        publish_raw(as_site1, destination, second)
        publish_raw(as_site2, destination, other)

        parked, text = _receive_until_parked(central, names, tmp_path, "message_id, site, broker_user, reason")
        assert _names(central, names) == names, text[-3000:]  # every valid message of both sites applied
        assert "Traceback" not in text and "KeyError" not in text and "restarting" not in text, text[-3000:]
        # the bad delivery: acknowledged and parked with one line naming what and where
        assert len(parked) == 1, (parked, text[-3000:])
        message_id, site, broker_user, reason = parked[0]
        assert message_id.startswith("broker:") and broker_user == "site1"
        assert "\n" not in reason and "NUL" in reason and header in reason and destination in reason, reason
        assert sum("NUL" in line for line in text.splitlines()) == 1, text[-3000:]
        # a frame written into the body after the NUL is never taken for a delivery (of another site's user)
        assert not central.sql(f"SELECT 1 FROM `{central.schema}`.applied_message WHERE message_id LIKE %s",
                               ("%forged%",))
        if forged:
            assert not central.sql("SELECT 1 FROM person_name WHERE uuid = %s", (forged["uuid"],))
        # nothing is left at the broker to end in the dead-letter queue
        stats = queue_stats(broker_settings, destination)
        assert stats.messages == 0, stats
        for queue in dead_letter_queues(destination).values():
            assert queue_stats(broker_settings, queue).messages == 0
    finally:
        drop_schema(central)


class _Collect:
    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.got = threading.Event()

    def on_message(self, frame: Any) -> None:
        self.frames.append(frame)
        self.got.set()


def _manage(broker: BrokerSettings, operation: str, *params: Any) -> Any:
    from dbsync_cli.broker_queue import _Management

    management = _Management(broker, 10)
    try:
        return management.call("broker", operation, *params)
    finally:
        management.close()


def test_status_counts_the_dead_letter_and_expiry_queues_of_the_destination(openmrs_db, services, tmp_path,
                                                                             broker_settings) -> None:
    """With the shipped broker configuration (per-destination dead-letter and expiry queues, created on use) a
    message delivered max-delivery-attempts times without an ACK lands in DLQ.<destination>, an expired one in
    EXP.<destination>: `dbsync status` counts both, as a WARNING with a hint, in --json too."""
    destination = f"test.trust.dlq{uuidlib.uuid4().hex[:10]}"
    _manage(broker_settings, "addAddressSettings", destination, orjson.dumps({
        "deadLetterAddress": "DLA", "autoCreateDeadLetterResources": True, "maxDeliveryAttempts": 1,
        "expiryAddress": "ExpiryQueue", "autoCreateExpiryResources": True}).decode())
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    try:
        quiet = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                    check=False).stdout)
        assert quiet["broker"]["dead_letters"] == {"dead_letter": 0, "expiry": 0}, quiet["broker"]
        assert not [p for p in quiet["problems"] if p["check"] == "dead_letters"]

        as_site1 = services.artemis.site_settings("site1")
        publish_raw(as_site1, destination, [{"v": 1, "id": "site1:dead:1", "site": "site1"}])
        publish_raw(as_site1, destination, [{"v": 1, "id": "site1:expired:1", "site": "site1"}],
                    expires=str(int(time.time() * 1000) - 60_000))
        collect = _Collect()
        conn = open_connection(broker_settings, listener=collect)
        conn.subscribe(destination, id="s", ack="client-individual", headers={"subscription-type": "ANYCAST"})
        assert collect.got.wait(10), "nothing delivered"
        conn.disconnect()  # not acknowledged, once: max-delivery-attempts 1 moves it to the dead-letter queue
        queues = dead_letter_queues(destination)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(queue_stats(broker_settings, q).messages for q in
                                                       queues.values()):
            time.sleep(0.5)
        result = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
        report = orjson.loads(result.stdout)
        assert report["broker"]["dead_letters"] == {"dead_letter": 1, "expiry": 1}, report["broker"]
        (problem,) = [p for p in report["problems"] if p["check"] == "dead_letters"]
        assert problem["state"] == "WARNING" and "\n" not in problem["message"], problem
        assert queues["dead_letter"] in problem["message"] and queues["expiry"] in problem["message"], problem
        assert result.returncode >= 1
        table = dbsync("status", "--config", str(central.config), env=central.env, check=False).stdout.decode()
        assert queues["dead_letter"] in table and "Traceback" not in table
    finally:
        drop_schema(central)
        _manage(broker_settings, "removeAddressSettings", destination)


@pytest.mark.parametrize("kind", ["deflate_bomb", "oversized"])
def test_a_body_over_the_size_limit_is_refused_at_consume_and_stops_nothing(openmrs_db, services, tmp_path,
                                                                             broker_settings, kind) -> None:
    """Found by the soak: a deflate bomb (64 MB of JSON in 64 KB) was inflated and written into the inbox, over
    central's max_allowed_packet; the insert broke the connection, consume reconnected, was handed the same frame
    and failed again, for good, with every site's messages waiting behind it. A body apply would refuse for its
    size is refused at consume: parked with one line, no body, acknowledged; nothing else waits."""
    import zlib

    from devtools.field.hostile import _bomb

    destination = f"test.trust.big{uuidlib.uuid4().hex[:10]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1",), destination=destination)
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        names = {new_person(site1, given=f"Big{i}")[1]: f"Big{i}" for i in range(4)}
        messages = site1.messages()
        as_site1 = services.artemis.site_settings("site1")
        publish_raw(as_site1, destination, messages[:2])
        _body, headers = wire_encode(dict(messages[0], id="site1:big:1", uuid=str(uuidlib.uuid4())))
        body = _bomb() if kind == "deflate_bomb" else b'{"v":1,"pad":"' + b"x" * 4_100_000 + b'"}'
        if kind == "deflate_bomb":
            headers["dbsync-encoding"] = "deflate"
        else:
            headers.pop("dbsync-encoding", None)
        assert kind != "deflate_bomb" or len(zlib.decompress(body)) > 60_000_000
        send_raw_body(as_site1, destination, body, headers)
        publish_raw(as_site1, destination, messages[2:])
        body_length = (f"COALESCE((SELECT LENGTH(b.body) FROM `{central.schema}`.receiver_retry_body b "
                       f"WHERE b.id = receiver_retry_queue.id), 0)")  # no body row: nothing kept
        parked, text = _receive_until_parked(central, names, tmp_path, f"message_id, site, {body_length}, reason")
        assert _names(central, names) == names, text[-3000:]
        assert "gone away" not in text and "restarting" not in text and "Traceback" not in text, text[-3000:]
        assert len(parked) == 1, parked
        message_id, site, length, reason = parked[0]
        assert message_id == "site1:big:1" and site == "site1" and length == 0, parked
        assert "\n" not in reason and "byte limit" in reason and "site1" in reason, reason
        assert queue_stats(broker_settings, destination).messages == 0
    finally:
        drop_schema(central)


def wire_encode(message: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    from dbsync_cli import wire

    return wire.encode(message, anycast=True, compress_over=1 << 30)


def send_raw_body(broker: BrokerSettings, destination: str, body: bytes, headers: dict[str, str]) -> None:
    """One persistent SEND of `body` with `headers` (stomp.py), confirmed by a receipt."""
    got = threading.Event()

    class Listener:
        def on_receipt(self, frame: Any) -> None:
            got.set()

    conn = open_connection(broker, listener=Listener())
    try:
        conn.send(destination, body, headers={**headers, "receipt": "big"})
        assert got.wait(60), "no receipt from the broker"
    finally:
        conn.disconnect()
