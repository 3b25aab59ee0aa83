"""Which broker answered, from the CONNECTED frame's `server` header, and how to speak its STOMP dialect.

Measured (issue 28): ActiveMQ Classic and RabbitMQ read a bare destination name as a queue and ignore Artemis's
`destination-type` / `subscription-type` headers, so a "topic" sent that way went to one receiver and not the other.
Each broker fans out only on its own terms:

- Artemis: the bare name with `destination-type: MULTICAST`; a durable subscription is the CONNECT `client-id` and
  `durable-subscription-name`; the broker stamps the sender's login as JMSXUserID (populate-validated-user).
- ActiveMQ Classic: `/topic/<name>`; a durable subscription is the CONNECT `client-id` and
  `activemq.subscriptionName`; with populateJMSXUserID the broker stamps JMSXUserID.
- RabbitMQ: `/topic/<name>` with a `durable:true`, `auto-delete:false` subscription whose `id` names it (its queue
  is named `x-queue-name`: `<client id>.<subscription>`, the name Artemis gives its subscription queue too); the
  broker stamps nothing, but refuses a SEND whose `user-id` header is not the login, so the sender sets it and the
  receiver trusts only that header (a JMSXUserID a sender wrote passes through RabbitMQ untouched).

Queue mode keeps the bare name on every broker (all three read it as the same durable queue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbsync_cli.wire import VALIDATED_USER_HEADER

ARTEMIS, ACTIVEMQ, RABBITMQ, OTHER = "artemis", "activemq", "rabbitmq", "other"
NAMES = {ARTEMIS: "ActiveMQ Artemis", ACTIVEMQ: "ActiveMQ Classic", RABBITMQ: "RabbitMQ", OTHER: "an unknown broker"}
#: the header a broker's MESSAGE frames carry the sender's validated login in (None: the broker stamps nothing)
STAMP_HEADERS = {ARTEMIS: "JMSXUserID", ACTIVEMQ: "JMSXUserID", RABBITMQ: "user-id", OTHER: "JMSXUserID"}
#: unacknowledged messages a broker without a byte window (ActiveMQ, RabbitMQ) may send ahead: the consumer window
#: divided by this many bytes (envelopes are up to message_bytes, most far smaller)
PREFETCH_BYTES = 16_384


def kind_of(server: str | None) -> str:
    """ARTEMIS, ACTIVEMQ, RABBITMQ or OTHER from a CONNECTED frame's `server` header (e.g. ``ActiveMQ/6.1.7``,
    ``RabbitMQ/3.10.8``, ``ActiveMQ-Artemis/2.40.0 ActiveMQ Artemis Messaging Engine``)."""
    product = (server or "").split("/", 1)[0].strip().lower()
    if product in ("activemq-artemis", "artemis"):
        return ARTEMIS
    if product == "activemq":
        return ACTIVEMQ
    if product == "rabbitmq":
        return RABBITMQ
    return OTHER


class TopicRefused(ValueError):
    """Topic mode on a broker whose fan-out dbsync does not know: it could lose messages without a word."""


@dataclass(frozen=True)
class Subscription:
    destination: str
    id: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Dialect:
    kind: str
    server: str = ""

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    def check_topic(self) -> None:
        """Raise TopicRefused (one line) where topic mode would be a guess."""
        if self.kind == OTHER:
            server = self.server or "a broker that does not name itself"
            raise TopicRefused(f'broker.destination_type = "topic" is not supported on {server}: dbsync knows the '
                               "topic fan-out of ActiveMQ Artemis, ActiveMQ Classic and RabbitMQ only; use "
                               'destination_type = "queue"')

    def destination(self, name: str, topic: bool) -> str:
        """The STOMP destination to send to or subscribe to."""
        if topic and self.kind in (ACTIVEMQ, RABBITMQ):
            return f"/topic/{name}"
        return name

    def send_headers(self, topic: bool, user: str | None) -> dict[str, str]:
        """Headers every SEND carries on this broker besides the message's own."""
        headers = {"destination-type": "MULTICAST" if topic else "ANYCAST"}
        if self.kind == RABBITMQ and user:
            headers["user-id"] = user  # RabbitMQ refuses it unless it is the login: the receiver's proof of sender
        return headers

    def subscription(self, name: str, *, topic: bool, subscription: str, client_id: str, window: int,
                     default_id: str) -> Subscription:
        """Where and how a receiver subscribes: queue mode reads the queue; topic mode a durable subscription named
        `subscription` of the client `client_id`, which keeps what arrives while the receiver is away."""
        prefetch = str(max(1, window // PREFETCH_BYTES))
        headers = {"consumer-window-size": str(window)}
        if self.kind == ACTIVEMQ:
            headers["activemq.prefetchSize"] = prefetch
        elif self.kind == RABBITMQ:
            headers["prefetch-count"] = prefetch
        if not topic:
            headers["subscription-type"] = "ANYCAST"
            return Subscription(name, default_id, headers)
        self.check_topic()
        if self.kind == ACTIVEMQ:
            headers["activemq.subscriptionName"] = subscription
        elif self.kind == RABBITMQ:
            headers.update({"durable": "true", "auto-delete": "false", "x-queue-name": f"{client_id}.{subscription}"})
            return Subscription(self.destination(name, topic), f"{client_id}.{subscription}", headers)
        else:
            headers.update({"subscription-type": "MULTICAST", "durable-subscription-name": subscription})
        return Subscription(self.destination(name, topic), default_id, headers)

    def stamp(self, headers: dict[str, Any]) -> None:
        """Put the login the broker vouches for where apply reads it (wire.VALIDATED_USER_HEADER): on RabbitMQ the
        `user-id` it checked against the login; a JMSXUserID a sender wrote itself there is dropped."""
        header = STAMP_HEADERS[self.kind]
        if header != VALIDATED_USER_HEADER:
            headers[VALIDATED_USER_HEADER] = headers.get(header, "")


def dialect(server: str | None) -> Dialect:
    return Dialect(kind_of(server), server or "")
