"""Issue 28 part 3: the broker named by CONNECTED's `server` header, each one's dialect, and what reads its replies
(no broker needed; tests/service/test_brokers.py runs them for real)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dbsync_cli.broker import error_text
from dbsync_cli.broker_depth import _map
from dbsync_cli.broker_kind import ACTIVEMQ, ARTEMIS, OTHER, RABBITMQ, TopicRefused, dialect, kind_of


@pytest.mark.parametrize(("server", "kind"), [
    ("ActiveMQ-Artemis/2.40.0 ActiveMQ Artemis Messaging Engine", ARTEMIS),
    ("ActiveMQ/6.1.7", ACTIVEMQ), ("ActiveMQ/${project.version}", ACTIVEMQ),  # an embedded broker's
    ("RabbitMQ/3.10.8", RABBITMQ), ("", OTHER), (None, OTHER), ("Apollo/1.7", OTHER)])
def test_the_broker_is_named_by_the_server_header(server: str | None, kind: str) -> None:
    assert kind_of(server) == kind


def test_queue_mode_keeps_the_bare_name_everywhere() -> None:
    for server in ("ActiveMQ-Artemis/2.40.0", "ActiveMQ/6.1.7", "RabbitMQ/3.10.8", "Other/1"):
        speak = dialect(server)
        assert speak.destination("openmrs.sync", topic=False) == "openmrs.sync"
        sub = speak.subscription("openmrs.sync", topic=False, subscription="dbsync", client_id="central",
                                 window=1_048_576, default_id="dbsync-consume")
        assert (sub.destination, sub.id) == ("openmrs.sync", "dbsync-consume")


def test_topic_mode_speaks_each_brokers_dialect() -> None:
    """Seen: ActiveMQ and RabbitMQ read Artemis's bare name as a queue: one receiver got the envelope, the other
    nothing."""
    args = {"topic": True, "subscription": "dbsync", "client_id": "central", "window": 1_048_576,
            "default_id": "dbsync-consume"}
    artemis = dialect("ActiveMQ-Artemis/2.40.0").subscription("openmrs.sync", **args)
    assert artemis.destination == "openmrs.sync"
    assert artemis.headers["subscription-type"] == "MULTICAST"
    assert artemis.headers["durable-subscription-name"] == "dbsync"
    activemq = dialect("ActiveMQ/6.1.7").subscription("openmrs.sync", **args)
    assert activemq.destination == "/topic/openmrs.sync"
    assert activemq.headers["activemq.subscriptionName"] == "dbsync"
    rabbit = dialect("RabbitMQ/3.10.8").subscription("openmrs.sync", **args)
    assert rabbit.destination == "/topic/openmrs.sync"
    assert (rabbit.id, rabbit.headers["x-queue-name"]) == ("central.dbsync", "central.dbsync")
    assert (rabbit.headers["durable"], rabbit.headers["auto-delete"]) == ("true", "false")
    assert dialect("ActiveMQ/6.1.7").destination("openmrs.sync", topic=True) == "/topic/openmrs.sync"


def test_topic_mode_on_an_unknown_broker_is_refused_in_one_line() -> None:
    with pytest.raises(TopicRefused) as refused:
        dialect("Apollo/1.7").subscription("s", topic=True, subscription="d", client_id="c", window=1,
                                           default_id="x")
    assert "\n" not in str(refused.value) and "Apollo/1.7" in str(refused.value)
    assert 'destination_type = "queue"' in str(refused.value)


def test_rabbitmq_senders_name_their_login_and_receivers_trust_only_that() -> None:
    """RabbitMQ refuses a user-id that is not the login and passes any other header through: a JMSXUserID a sender
    wrote itself must not count."""
    rabbit = dialect("RabbitMQ/3.10.8")
    assert rabbit.send_headers(False, "site1")["user-id"] == "site1"
    headers = {"user-id": "site1", "JMSXUserID": "site2"}
    rabbit.stamp(headers)
    assert headers["JMSXUserID"] == "site1"
    forged = {"JMSXUserID": "site2"}
    rabbit.stamp(forged)
    assert forged["JMSXUserID"] == ""
    artemis = {"JMSXUserID": "site1"}
    dialect("ActiveMQ-Artemis/2.40.0").stamp(artemis)
    assert artemis == {"JMSXUserID": "site1"}
    assert "user-id" not in dialect("ActiveMQ/6.1.7").send_headers(False, "site1")


def test_an_error_frame_shows_its_body() -> None:
    """RabbitMQ says only `Bad CONNECT` in the header; why is in the body."""
    frame = SimpleNamespace(headers={"message": "Bad CONNECT"}, body=b"Virtual host '127.0.0.1' access denied\n")
    assert error_text(frame) == "Bad CONNECT: Virtual host '127.0.0.1' access denied"
    assert error_text(SimpleNamespace(headers={}, body="")) == "ERROR frame"


def test_activemq_statistics_map() -> None:
    body = (b'{"map":{"entry":[{"string":"size","long":3},{"string":["destinationName","queue:\\/\\/q"]},'
            b'{"string":"consumerCount","long":0},{"string":"averageEnqueueTime","double":0.5}]}}')
    assert _map(body) == {"size": 3, "destinationName": "queue://q", "consumerCount": 0, "averageEnqueueTime": 0.5}


def test_the_receiver_stops_with_exit_2_for_topic_mode_on_an_unknown_broker() -> None:
    """Not a retry loop: a BrokerRefused an operator must fix, with the configuration's exit code."""
    import threading

    from dbsync_cli import exitcodes
    from dbsync_cli.broker import BrokerSettings
    from dbsync_cli.broker_refusals import BrokerRefused
    from dbsync_cli.db import DbParams
    from dbsync_cli.faults import operator_fault
    from dbsync_cli.receiver.consume import Consumer, ConsumeSettings

    consumer = Consumer(ConsumeSettings(broker=BrokerSettings(), db=DbParams(host="h", port=1),
                                        destination_type="topic"), threading.Event())
    with pytest.raises(BrokerRefused) as refused:
        consumer._subscription(dialect("Apollo/1.7"))
    assert refused.value.code == exitcodes.CONFIG and operator_fault(refused.value)
    destination, _id, headers = consumer._subscription(dialect("RabbitMQ/3.10.8"))
    assert destination == "/topic/openmrs.sync" and headers["durable"] == "true"


def test_an_error_frame_echoing_the_connect_never_shows_its_secrets() -> None:
    frame = SimpleNamespace(headers={"message": "Bad CONNECT"},
                            body=b"The message:\n-----\nCONNECT\nlogin:site1\npasscode:s3cret\n\n-----")
    text = error_text(frame)
    assert "s3cret" not in text and "site1" not in text and text.startswith("Bad CONNECT: The message:")
