"""The consumed queue's depth on whichever broker answered: Artemis through its management address (broker_queue),
ActiveMQ Classic through its statistics plugin, RabbitMQ through its management HTTP API; elsewhere, or where the
broker offers no way, NotAvailable says so in one line (`dbsync status` notes it, it is not a fault).

ActiveMQ Classic: the statistics plugin (``<statisticsBrokerPlugin/>`` in activemq.xml) answers a message sent to
``ActiveMQ.Statistics.Destination.<queue>`` with a MapMessage, which reaches a STOMP client only through the
``jms-map-json`` transformation (XStream and Jettison, lib/optional of ActiveMQ's distribution). A queue that does not
exist gets no answer, so the broker's own statistics are asked first: an answer there and none for the queue means
the queue does not exist. The age of the oldest message is the `timestamp` of the first one a browser sees. The
durable subscription of topic mode is no destination of its own there: not available.

RabbitMQ: ``GET /api/queues/<vhost>/<queue>`` (broker.management_url; the user needs the `monitoring` tag). RabbitMQ
keeps no age of the oldest message, so how long messages have waited is not known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import ssl
import time
import urllib.error
import urllib.request
from base64 import b64encode
from typing import Any
from urllib.parse import quote

import orjson
import stomp

from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.broker_kind import ACTIVEMQ, ARTEMIS, NAMES, RABBITMQ, kind_of
from dbsync_cli.broker_queue import NotAvailable, QueueStats, QueueStatsError, Replies, queue_stats

STATISTICS_PREFIX = "ActiveMQ.Statistics."
REPLY_TO = "/temp-queue/dbsync-status"


def depth(settings: BrokerSettings, queue_name: str, *, server: str | None, topic: bool,
          management_url: str | None = None, timeout: float = 5) -> QueueStats:
    """Statistics of the queue the receiver consumes, on the broker that called itself `server` when it connected."""
    kind = kind_of(server)
    if kind == ARTEMIS:
        return queue_stats(settings, queue_name, timeout)
    if kind == ACTIVEMQ:
        if topic:
            raise NotAvailable("not available on ActiveMQ Classic for a durable topic subscription")
        return _activemq(settings, queue_name, timeout)
    if kind == RABBITMQ:
        if not management_url:
            raise NotAvailable("not available on RabbitMQ without broker.management_url (its management API)")
        return _rabbitmq(settings, management_url, queue_name, timeout)
    raise NotAvailable(f"not available on {server or NAMES[kind]}")


def _activemq(settings: BrokerSettings, queue_name: str, timeout: float) -> QueueStats:
    frames = Replies()
    conn = open_connection(dataclasses.replace(settings, connect_timeout=timeout, heartbeats=(0, 0)), listener=frames,
                           auto_decode=False)
    try:
        conn.subscribe(REPLY_TO, id="statistics", ack="auto", headers={"transformation": "jms-map-json"})
        if _statistics(conn, frames, f"{STATISTICS_PREFIX}Broker", timeout) is None:
            raise QueueStatsError(f"broker statistics: {frames.error or f'no answer within {timeout:g}s'} (enable "
                                  "ActiveMQ's statistics plugin and the jms-map-json transformation: "
                                  "docs/installation.md)")
        found = _statistics(conn, frames, f"{STATISTICS_PREFIX}Destination.{queue_name}", min(timeout, 2))
        if found is None:  # the broker answers, the queue does not: it does not exist (yet)
            return QueueStats(queue_name, 0, 0, 0, None, exists=False)
        messages = int(found.get("size", 0))
        age = _oldest_age_ms(conn, frames, queue_name, timeout) if messages else None
        return QueueStats(queue_name, messages, int(found.get("inflightCount", 0)), int(found.get("consumerCount", 0)),
                          age)
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def _statistics(conn: stomp.Connection12, frames: Replies, destination: str, timeout: float) -> dict[str, Any] | None:
    conn.send(f"/queue/{destination}", "", headers={"reply-to": REPLY_TO})
    try:
        frame = frames.frames.get(timeout=timeout)
    except queue.Empty:
        return None
    return _map(frame.body)


def _map(body: bytes | str) -> dict[str, Any]:
    """jms-map-json's `{"map": {"entry": [{"string": "size", "long": 3}, {"string": ["name", "text"]}, …]}}`."""
    try:
        entries = orjson.loads(body)["map"]["entry"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise QueueStatsError(f"broker statistics: unexpected answer {str(body)[:80]!r}") from exc
    found: dict[str, Any] = {}
    for entry in entries if isinstance(entries, list) else [entries]:
        key = entry.get("string")
        if isinstance(key, list) and key:
            found[str(key[0])] = key[1] if len(key) > 1 else None
        elif isinstance(key, str):
            found[key] = next((v for k, v in entry.items() if k != "string"), None)
    return found


def _oldest_age_ms(conn: stomp.Connection12, frames: Replies, queue_name: str, timeout: float) -> int | None:
    """How old the first message is, from its broker timestamp, seen by a queue browser (nothing is consumed)."""
    conn.subscribe(f"/queue/{queue_name}", id="browse", ack="auto",
                   headers={"browser": "true", "activemq.prefetchSize": "1"})
    try:
        frame = frames.frames.get(timeout=timeout)
    except queue.Empty:
        return None
    finally:
        with contextlib.suppress(Exception):
            conn.unsubscribe(id="browse")
    stamp = frame.headers.get("timestamp")
    try:
        return max(0, int(time.time() * 1000) - int(stamp))
    except (TypeError, ValueError):
        return None


def _rabbitmq(settings: BrokerSettings, url: str, queue_name: str, timeout: float) -> QueueStats:
    vhost = settings.vhost or settings.host  # what stomp.py's CONNECT names as the vhost
    address = f"{url.rstrip('/')}/api/queues/{quote(vhost, safe='')}/{quote(queue_name, safe='')}"
    token = b64encode(f"{settings.user}:{settings.password or ''}".encode()).decode()
    request = urllib.request.Request(address, headers={"Authorization": f"Basic {token}"})  # noqa: S310 - http(s) only
    context = ssl.create_default_context(cafile=settings.ca_file) if address.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310
            found = orjson.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return QueueStats(queue_name, 0, 0, 0, None, exists=False)
        why = "the broker user needs the monitoring tag" if exc.code in (401, 403) else exc.reason
        raise QueueStatsError(f"RabbitMQ management API {url}: HTTP {exc.code} ({why})") from None
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        raise QueueStatsError(f"RabbitMQ management API {url}: {reason}") from None
    return QueueStats(queue_name, int(found.get("messages") or 0), int(found.get("messages_unacknowledged") or 0),
                      int(found.get("consumers") or 0), None)


__all__ = ["NotAvailable", "depth"]
