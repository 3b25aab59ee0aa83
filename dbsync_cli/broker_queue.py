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

from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection

MANAGEMENT_ADDRESS = "activemq.management"
NO_SUCH_QUEUE = "AMQ229067"  # "Cannot find resource": Artemis creates the queue on the first SEND or SUBSCRIBE
OPERATIONS = {"messages": "getMessageCount", "delivering": "getDeliveringCount", "consumers": "getConsumerCount",
              "first_message_age_ms": "getFirstMessageAge"}


class QueueStatsError(Exception):
    """The broker did not answer a management request (one line)."""


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


class _Replies(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()
        self.error: str | None = None

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_error(self, frame: Any) -> None:
        self.error = frame.headers.get("message") or "ERROR frame"


def queue_stats(settings: BrokerSettings, queue_name: str, timeout: float = 5) -> QueueStats:
    """Statistics of one queue (for a topic subscription: the durable queue ``client_id.subscription``)."""
    replies = _Replies()
    settings = dataclasses.replace(settings, connect_timeout=timeout, heartbeats=(0, 0))
    conn = open_connection(settings, listener=replies, auto_decode=False)
    reply_to = f"dbsync.status.reply.{uuid.uuid4().hex[:12]}"
    try:
        conn.auto_content_length = False  # a text message: see the module docstring
        conn.subscribe(reply_to, id="reply", ack="auto", headers={"subscription-type": "ANYCAST"})
        found: dict[str, Any] = {}
        for key, operation in OPERATIONS.items():
            conn.send(MANAGEMENT_ADDRESS, body="[]", headers={
                "_AMQ_ResourceName": f"queue.{queue_name}", "_AMQ_OperationName": operation, "reply-to": reply_to,
                "destination-type": "ANYCAST"})
            try:
                found[key] = _answer(replies, operation, queue_name, timeout)
            except QueueStatsError as exc:
                if NO_SUCH_QUEUE in str(exc):  # nothing was ever sent to it, nobody subscribed: nothing waits
                    return QueueStats(queue_name, 0, 0, 0, None, exists=False)
                raise
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()
    return QueueStats(queue_name, _count(found["messages"]), _count(found["delivering"]), _count(found["consumers"]),
                      _number(found["first_message_age_ms"]))


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


def _answer(replies: _Replies, operation: str, queue_name: str, timeout: float) -> Any:
    try:
        frame = replies.frames.get(timeout=timeout)
    except queue.Empty:
        why = replies.error or f"no answer within {timeout:g}s"
        raise QueueStatsError(f"broker management {operation} on queue {queue_name!r}: {why} (the broker user "
                              "needs the manage permission on activemq.management)") from None
    body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        result = [body.decode("utf-8", "replace")[:200]]
    value = result[0] if isinstance(result, list) and result else result
    if frame.headers.get("_AMQ_OperationSucceeded") != "true":
        raise QueueStatsError(f"broker management {operation} on queue {queue_name!r}: {value}")
    return value


__all__ = ["BrokerError", "QueueStats", "QueueStatsError", "queue_stats"]
