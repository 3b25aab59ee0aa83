"""What the broker holds for a consumer: messages waiting, being delivered, consumers, age of the oldest message.

Read through Artemis's management address over STOMP (a request to ``activemq.management`` naming the queue and
the operation, the answer sent to a reply queue). The body must travel as a *text* message, so the request goes
without a content-length header (with one Artemis reads it as bytes and refuses it with a bare AMQ339011). The
broker user needs the ``manage`` permission on ``activemq.management`` (docs/installation.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import stomp

from dbsync_cli.broker import BrokerError, BrokerSettings, error_text, open_connection, server_of
from dbsync_cli.broker_kind import ARTEMIS, kind_of

MANAGEMENT_ADDRESS = "activemq.management"
NO_SUCH_QUEUE = "AMQ229067"  # "Cannot find resource": Artemis creates the queue on the first SEND or SUBSCRIBE
OPERATIONS = {"messages": "getMessageCount", "delivering": "getDeliveringCount", "consumers": "getConsumerCount",
              "first_message_age_ms": "getFirstMessageAge"}


#: where the shipped broker.xml's address settings (auto-create-dead-letter-resources, auto-create-expiry-resources,
#: Artemis's default prefixes) put the messages of a destination D that Artemis gave up on
DEAD_LETTER_PREFIX = "DLQ."
EXPIRY_PREFIX = "EXP."


def dead_letter_queues(destination: str) -> dict[str, str]:
    """The queues holding what Artemis took off `destination`: delivered max-delivery-attempts times without an
    ACK ("dead_letter") or expired ("expiry"). The one place that knows their names."""
    return {"dead_letter": f"{DEAD_LETTER_PREFIX}{destination}", "expiry": f"{EXPIRY_PREFIX}{destination}"}


class QueueStatsError(Exception):
    """The broker did not answer a management request (one line)."""


class NotAvailable(QueueStatsError):
    """This broker (or its configuration) offers no way to read it: said once, not a warning."""


@dataclass(frozen=True)
class QueueStats:
    queue: str
    messages: int  # waiting plus being delivered, not acknowledged yet
    delivering: int
    consumers: int
    first_message_age_ms: int | None
    exists: bool = True

    def waiting_unconsumed_seconds(self) -> float:
        """How long messages have waited with nobody consuming them (0 when consumed or empty)."""
        if self.consumers > 0 or self.messages == 0:
            return 0.0
        return (self.first_message_age_ms or 0) / 1000


class Replies(stomp.ConnectionListener):
    """The answers to management requests, and the broker's ERROR frame if one came (broker_depth uses it too)."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()
        self.error: str | None = None

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_error(self, frame: Any) -> None:
        self.error = error_text(frame)


class _Management:
    """One STOMP connection for management requests, each answered on a private reply queue."""

    def __init__(self, settings: BrokerSettings, timeout: float) -> None:
        self.replies = Replies()
        self.timeout = timeout
        settings = dataclasses.replace(settings, connect_timeout=timeout, heartbeats=(0, 0))
        self.conn = open_connection(settings, listener=self.replies, auto_decode=False)
        server = server_of(self.conn)
        if kind_of(server) != ARTEMIS:  # activemq.management is Artemis's: elsewhere nothing would answer
            self.close()
            raise NotAvailable(f"Artemis management is not available on {server or 'a broker that does not name itself'}")
        self.reply_to = f"dbsync.status.reply.{uuid.uuid4().hex[:12]}"
        self.conn.auto_content_length = False  # a text message: see the module docstring
        self.conn.subscribe(self.reply_to, id="reply", ack="auto", headers={"subscription-type": "ANYCAST"})

    def call(self, resource: str, operation: str, *params: Any) -> Any:
        self.conn.send(MANAGEMENT_ADDRESS, body=orjson.dumps(list(params)).decode(), headers={
            "_AMQ_ResourceName": resource, "_AMQ_OperationName": operation, "reply-to": self.reply_to,
            "destination-type": "ANYCAST"})
        return _answer(self.replies, operation, resource, self.timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.disconnect()


def queue_stats(settings: BrokerSettings, queue_name: str, timeout: float = 5) -> QueueStats:
    """Statistics of one queue (for a topic subscription: the durable queue ``client_id.subscription``)."""
    management = _Management(settings, timeout)
    try:
        found: dict[str, Any] = {}
        for key, operation in OPERATIONS.items():
            try:
                found[key] = management.call(f"queue.{queue_name}", operation)
            except QueueStatsError as exc:
                if NO_SUCH_QUEUE in str(exc):  # nothing was ever sent to it, nobody subscribed: nothing waits
                    return QueueStats(queue_name, 0, 0, 0, None, exists=False)
                raise
    finally:
        management.close()
    return QueueStats(queue_name, _count(found["messages"]), _count(found["delivering"]), _count(found["consumers"]),
                      _number(found["first_message_age_ms"]))


@dataclass(frozen=True)
class AddressInfo:
    address: str
    exists: bool
    routing_types: tuple[str, ...]  # ANYCAST, MULTICAST: what the address routes; empty when it does not exist
    auto_create: bool  # the broker's address-settings create it on first use


def address_info(settings: BrokerSettings, address: str, timeout: float = 5) -> AddressInfo:
    """Whether an address exists, its routing types and whether the broker would create it on first use."""
    management = _Management(settings, timeout)
    try:
        address_settings = management.call("broker", "getAddressSettingsAsJSON", address)
        try:
            auto_create = bool(orjson.loads(address_settings).get("autoCreateAddresses", True))  # Artemis's default
        except (orjson.JSONDecodeError, AttributeError):
            auto_create = False
        try:
            types = management.call(f"address.{address}", "getRoutingTypes")
        except QueueStatsError as exc:
            if NO_SUCH_QUEUE in str(exc):
                return AddressInfo(address, False, (), auto_create)
            raise
    finally:
        management.close()
    if isinstance(types, str):
        types = [t.strip() for t in types.strip("[]").split(",") if t.strip()]
    return AddressInfo(address, True, tuple(sorted(str(t).upper() for t in types)), auto_create)


def _number(value: Any) -> int | None:
    """An answer as an int; None for what is not one (the age of the first message of an empty queue is '')."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _count(value: Any) -> int:
    number = _number(value)
    if number is None:
        raise QueueStatsError(f"broker management: expected a count, got {str(value)[:40]!r}")
    return number


def _answer(replies: Replies, operation: str, resource: str, timeout: float) -> Any:
    try:
        frame = replies.frames.get(timeout=timeout)
    except queue.Empty:
        why = replies.error or f"no answer within {timeout:g}s"
        raise QueueStatsError(f"broker management {operation} on {resource}: {why} (the broker user "
                              "needs the manage permission on activemq.management)") from None
    body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        result = [body.decode("utf-8", "replace")[:200]]
    value = result[0] if isinstance(result, list) and result else result
    if frame.headers.get("_AMQ_OperationSucceeded") != "true":
        raise QueueStatsError(f"broker management {operation} on {resource}: {value}")
    return value


__all__ = ["AddressInfo", "BrokerError", "NotAvailable", "QueueStats", "QueueStatsError", "address_info",
           "queue_stats"]
