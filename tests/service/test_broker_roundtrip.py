"""A persistent message really goes through Artemis on the plain and the TLS acceptor, and a client that
does not trust the broker's CA is refused (with an error that names the endpoint but not the password)."""

from __future__ import annotations

import dataclasses
import queue
import uuid

import pytest
import stomp

from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection
from devtools.services import Services


class Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: queue.Queue[stomp.utils.Frame] = queue.Queue()
        self.receipts: queue.Queue[str] = queue.Queue()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])


@pytest.fixture(params=["plain", "tls"])
def settings(request: pytest.FixtureRequest, broker_settings: BrokerSettings,
             broker_tls_settings: BrokerSettings) -> BrokerSettings:
    return broker_tls_settings if request.param == "tls" else broker_settings


def test_persistent_anycast_roundtrip(settings: BrokerSettings) -> None:
    dest = f"dbsync.test.roundtrip.{uuid.uuid4().hex[:8]}"
    body = '{"v":1,"note":"héllo"}'
    sent = Collector()
    producer = open_connection(settings, listener=sent)
    try:
        producer.send(dest, body, content_type="application/json", receipt="r-1",
                      headers={"persistent": "true", "destination-type": "ANYCAST"})
        assert sent.receipts.get(timeout=10) == "r-1"  # the broker has the message: safe to checkpoint
    finally:
        producer.disconnect()

    got = Collector()
    consumer = open_connection(settings, listener=got, client_id=f"test-{uuid.uuid4().hex[:6]}")
    try:
        consumer.subscribe(dest, id="s1", ack="client-individual", headers={"subscription-type": "ANYCAST"})
        frame = got.messages.get(timeout=10)
        assert frame.body == body
        assert frame.headers["persistent"] == "true"
        consumer.ack(frame.headers["message-id"], "s1")
    finally:
        consumer.disconnect()


def test_rogue_ca_is_refused(services: Services, broker_tls_settings: BrokerSettings) -> None:
    assert services.artemis is not None
    rogue = dataclasses.replace(broker_tls_settings, ca_file=services.artemis.rogue_ca_file, connect_timeout=5)
    with pytest.raises(BrokerError) as err:
        open_connection(rogue)
    text = str(err.value)
    assert rogue.address in text and "certificate" in text, text
    assert rogue.password and rogue.password not in text and "\n" not in text


def test_wrong_password_is_refused_without_leaking_it(broker_settings: BrokerSettings) -> None:
    wrong = dataclasses.replace(broker_settings, password="not-" + (broker_settings.password or ""))
    with pytest.raises(BrokerError) as err:
        open_connection(wrong)
    text = str(err.value)
    assert wrong.address in text and wrong.password and wrong.password not in text, text
    assert broker_settings.password not in text
