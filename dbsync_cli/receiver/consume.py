"""Consume: Artemis (STOMP) → the receiver's inbox table on the central server, then ACK.

Each delivery (one message, or a v2 envelope of several) is written to ``<state_schema>.inbox`` (``INSERT IGNORE`` on the unique message id, so a redelivered
duplicate is simply acknowledged again); frames are stored in batches, one transaction per batch, and only after
the COMMIT is each frame acknowledged (``client-individual``). A crash between COMMIT and ACK means a redelivery
that the unique key drops; a crash before COMMIT means a redelivery that is stored then. NACK is never sent:
Artemis treats a STOMP NACK as an ACK and discards the message.

Memory stays constant: the broker sends at most ``consumer_window`` bytes ahead of the acknowledgements, so the
listener's hand-over queue holds at most that much. The listener never waits: it runs on stomp.py's io thread,
which over TLS also writes every outgoing frame (ACKs go through a send queue the io thread drains); a listener
blocked on a full hand-over queue while the writer blocked on a full send queue stopped consume for good (seen
after an 8,000-row DELETE: many small frames in one window).

stomp.py does not reconnect a connection that dropped after it was established: the session loop reconnects
with exponential backoff; unacknowledged deliveries come back from the broker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import stomp
import stomp.exception

from dbsync_cli import exitcodes, wire
from dbsync_cli.broker import BrokerError, BrokerSettings, error_text, open_connection, server_of
from dbsync_cli.broker_kind import Dialect, TopicRefused, dialect
from dbsync_cli.broker_queue import dead_letter_queues
from dbsync_cli.broker_refusals import BrokerRefused, refusal
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.faults import operator_fault
from dbsync_cli.receiver import inbox, state, trust
from dbsync_cli.receiver.inbox import InboxRow, pending_rows
from dbsync_cli.receiver.reasons import Reason, reason
from dbsync_cli.retrying import backoff

log = logging.getLogger("dbsync.consume")

SUBSCRIPTION_ID = "dbsync-consume"

#: Failures that a reconnect (broker and database) can cure.
RECOVERABLE: tuple[type[BaseException], ...] = (
    BrokerError, OSError, stomp.exception.StompException, pymysql.err.OperationalError, pymysql.err.InterfaceError,
)


@dataclass
class ConsumeSettings:
    broker: BrokerSettings
    db: DbParams  # the central server (any database: state tables are schema-qualified)
    # defaults: the config model's (config_model.DEFAULTS), never literals of their own
    state_schema: str = DEFAULTS.central_db.state_schema
    destination: str = DEFAULTS.broker.destination
    destination_type: str = DEFAULTS.broker.destination_type  # queue (ANYCAST) | topic (MULTICAST, durable)
    subscription: str = DEFAULTS.broker.subscription  # durable subscription name (topic mode)
    client_id: str = DEFAULTS.receiver.site_id  # CONNECT client-id (topic mode): the queue is client_id.subscription
    consumer_window: int = DEFAULTS.broker.consumer_window  # bytes the broker may send ahead of the ACKs
    batch_messages: int = DEFAULTS.receiver.batch_messages  # frames per inbox transaction
    batch_linger: float = 0.05  # how long a batch waits for more frames before it is committed
    max_messages: int | None = None  # stop after this many records/rows
    idle_seconds: float | None = None  # stop when nothing was delivered for this long
    page_rows: int = 200  # inbox rows read per query when re-emitting the backlog
    #: apply refuses a message over this (broker.max_message_bytes): a body over it, or a deflate body that inflates
    #: beyond it, is refused here, never stored (64 MB of inflated bomb would pass central's max_allowed_packet)
    max_message_bytes: int = DEFAULTS.broker.max_message_bytes
    worker: int | None = None  # the receiver worker's slot (--worker), kept with each delivery stored


class _Desynced(BrokerError):
    """The connection's frame stream cannot be trusted after a cut-short MESSAGE: reconnect at once."""


class _Deliveries(stomp.ConnectionListener):
    """Listener thread → writer: MESSAGE frames (bounded by the consumer window), plus the connection's fate."""

    def __init__(self) -> None:
        self.frames: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.closed = threading.Event()
        self.error: str | None = None
        #: a MESSAGE arrived cut short (a NUL byte in a header): the bytes after the NUL are read as more frames,
        #: whose headers the sender chose (a forged JMSXUserID, an ack id), so nothing after it is trusted
        self.desynced = threading.Event()

    def on_message(self, frame: Any) -> None:
        if self.desynced.is_set():
            return  # unacknowledged: the broker delivers it again on the next connection
        if "ack" not in frame.headers:
            self.desynced.set()
        self.frames.put(frame)  # never blocks: this is the io thread, which also sends our ACKs over TLS

    def on_error(self, frame: Any) -> None:
        if self.desynced.is_set():
            return  # possibly a frame the sender wrote into a message: the session reconnects anyway
        self.error = error_text(frame)
        log.error("broker error: %s", " ".join(self.error.split()))

    def on_disconnected(self) -> None:
        self.closed.set()

    def take(self, limit: int, linger: float, timeout: float) -> list[Any]:
        """Up to ``limit`` frames: wait ``timeout`` for the first, then ``linger`` for more."""
        try:
            batch = [self.frames.get(timeout=timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + linger
        while len(batch) < limit:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self.frames.get(timeout=remaining) if remaining > 0 else self.frames.get_nowait())
            except queue.Empty:
                break
        return batch


class Consumer:
    """Moves deliveries into the inbox; ``batches()`` yields the rows of each committed (and ACKed) batch."""

    def __init__(self, settings: ConsumeSettings, stop: threading.Event) -> None:
        if settings.destination_type not in ("queue", "topic"):
            raise ValueError(f"broker.destination_type {settings.destination_type!r}: expected queue or topic")
        self.settings = settings
        self.stop = stop
        state.schema_name(settings.state_schema)  # fail early on a bad name
        self.count = 0  # messages handed out (backlog + new; an envelope counts its rows)
        self.stored = 0  # new inbox rows committed by this consumer
        self.duplicates = 0  # deliveries already in the inbox (acked again)
        self.broken = 0  # deliveries cut short (a NUL byte in a header): parked, or left to the dead-letter queue
        self.refused = 0  # deliveries over the size limit (or deflate bombs): parked without their body
        self.last_delivery = time.monotonic()

    # -- stop conditions ------------------------------------------------------------------------------------
    def _remaining(self) -> int | None:
        limit = self.settings.max_messages
        return None if limit is None else max(0, limit - self.count)

    def _idle(self) -> bool:
        idle = self.settings.idle_seconds
        return idle is not None and time.monotonic() - self.last_delivery >= idle

    def _finished(self) -> bool:
        return self.stop.is_set() or self._remaining() == 0 or self._idle()

    # -- backlog --------------------------------------------------------------------------------------------
    def backlog(self) -> Iterator[InboxRow]:
        """The inbox rows already there and not applied (a restart re-emits them), page by page."""
        conn = self.settings.db.connect(autocommit=False)
        try:
            after = 0
            while self._remaining() != 0 and not self.stop.is_set():
                rows = pending_rows(conn, self.settings.state_schema, after,
                                    min(self.settings.page_rows, self._remaining() or self.settings.page_rows))
                if not rows:
                    return
                for row in rows:
                    self.count += row.rows
                    yield row
                after = rows[-1].id
        finally:
            conn.close()

    # -- broker → inbox -------------------------------------------------------------------------------------
    def batches(self) -> Iterator[list[InboxRow]]:
        """Committed batches until stop / max_messages / idle; reconnects with backoff in between."""
        failures = 0
        self.last_delivery = time.monotonic()
        while not self._finished():
            try:
                for rows in self._session():
                    failures = 0
                    yield rows
                return
            except _Desynced as exc:
                log.info("consume: %s; reconnecting", exc)  # no backoff: nothing is wrong with the broker
                continue
            except RECOVERABLE as exc:
                if operator_fault(exc):  # a refused login or certificate: reconnecting cannot fix it
                    raise
                failures += 1
                if self._idle() or self.stop.is_set():
                    if self.stop.is_set():
                        return
                    raise  # nothing arrives and we cannot connect: a script asked for an idle exit, say why
                delay = backoff(failures, multiplier=0.5, maximum=30)
                log.warning("consume: %s; reconnecting in %.1f s", " ".join(str(exc).split()) or type(exc).__name__,
                            delay)
                self.stop.wait(delay)

    def _subscription(self, speak: Dialect) -> tuple[str, str, dict[str, str]]:
        """Destination, subscription id and headers in the broker's own dialect (broker_kind); topic mode on a
        broker whose fan-out is unknown stops the receiver with one line instead of losing messages."""
        settings = self.settings
        try:
            sub = speak.subscription(settings.destination, topic=settings.destination_type == "topic",
                                     subscription=settings.subscription, client_id=settings.client_id,
                                     window=settings.consumer_window, default_id=SUBSCRIPTION_ID)
        except TopicRefused as exc:
            raise BrokerRefused(str(exc), permanent=True, code=exitcodes.CONFIG, kind="topic") from None
        return sub.destination, sub.id, sub.headers

    def _session(self) -> Iterator[list[InboxRow]]:
        settings = self.settings
        deliveries = _Deliveries()
        client_id = settings.client_id if settings.destination_type == "topic" else None
        # bodies stay bytes (deflate, or anything a sender put there): no UTF-8 decoding with errors="replace"
        conn = open_connection(settings.broker, client_id=client_id, listener=deliveries, auto_decode=False)
        db = None
        try:
            speak = dialect(server_of(conn))
            destination, subscription_id, headers = self._subscription(speak)
            db = settings.db.connect(autocommit=False)
            conn.subscribe(destination, id=subscription_id, ack="client-individual", headers=headers)
            log.info("consuming %s %s from %s (%s)", settings.destination_type, destination,
                     settings.broker.address, speak.server or speak.name)
            delivered = False  # an ERROR frame before the first delivery is the broker refusing the SUBSCRIBE
            while not self._finished():
                limit = settings.batch_messages
                remaining = self._remaining()
                if remaining is not None:
                    limit = min(limit, remaining)
                frames = deliveries.take(limit, settings.batch_linger, timeout=0.2)
                if not frames:
                    if deliveries.closed.is_set() or not conn.is_connected():
                        raise self._lost(deliveries, delivered)
                    continue
                delivered = True
                self.last_delivery = time.monotonic()
                for frame in frames:
                    speak.stamp(frame.headers)
                broken = [frame for frame in frames if "ack" not in frame.headers]
                frames = [frame for frame in frames if "ack" in frame.headers]
                rows = self.store(db, frames)
                acks = [frame.headers["ack"] for frame in frames] + self._park_broken(db, broken)
                ack_error: BaseException | None = None
                for ack in acks:
                    try:
                        conn.ack(ack)
                    except RECOVERABLE as exc:  # stored already: the redelivery will be a dropped duplicate
                        ack_error = exc
                        break
                self.count += sum(row.rows for row in rows)
                self.stored += len(rows)
                self.duplicates += len(frames) - len(rows)
                if rows:
                    yield rows
                if ack_error is not None:
                    raise BrokerError(f"acknowledgement failed: {ack_error}")
                if deliveries.desynced.is_set():
                    raise _Desynced("frames after a cut-short delivery are not trusted")
        finally:
            deliveries.closed.set()
            try:
                if conn.is_connected():
                    conn.disconnect()  # unacked deliveries go back to the queue
            except Exception:  # noqa: BLE001,S110 - closing a broken connection must not hide the real error
                pass
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()

    def _lost(self, deliveries: _Deliveries, delivered: bool) -> BrokerError:
        """Why the connection closed: a refused subscription named in one line (a missing `consume`, an unknown
        address: permanent, so the receiver stops with the exit code publish gives the same fault), else the
        broker's own words."""
        lost = f"connection to {self.settings.broker.address} lost"
        if deliveries.error is None:
            return BrokerError(lost)
        named = refusal(deliveries.error, self.settings.destination, "the subscription")
        if named.permanent or not delivered:
            return named
        return BrokerError(f"{lost}: {deliveries.error}")

    def _park_broken(self, db: Any, frames: list[Any]) -> list[str]:
        """Deliveries cut short by a NUL byte in a header (no ack header, body lost): one line each; parked in the
        retry queue and acknowledged by their message-id (Artemis acks by it); without one they cannot be
        acknowledged and reach the dead-letter queue after max-delivery-attempts. Returns the ids to ack."""
        acks: list[str] = []
        for frame in frames:
            self.broken += 1
            problem = broken_delivery(frame.headers, self.settings.destination)
            broker_id = frame.headers.get("message-id")
            if not broker_id:
                log.warning("%s; it has no message-id either, so it cannot be acknowledged: the broker moves it "
                            "to %s after its delivery attempts", problem,
                            dead_letter_queues(self.settings.destination)["dead_letter"])
                continue
            parked = reason("cut_short_parked", **problem.args)
            log.warning("%s", parked)
            inbox.park_broken(db, self.settings.state_schema, f"broker:{broker_id}",
                              self._site_of(db, frame.headers), frame.headers.get(wire.VALIDATED_USER_HEADER), parked)
            acks.append(broker_id)
        return acks

    def _site_of(self, db: Any, headers: dict[str, str]) -> str | None:
        """The site a cut-short delivery came from: its dbsync-site header when whole, else the site that sends as
        its broker user (counted per site in `dbsync status`)."""
        if wire.SITE_HEADER in headers and list(headers)[-1] != wire.SITE_HEADER:
            return headers[wire.SITE_HEADER] or None
        user = headers.get(wire.VALIDATED_USER_HEADER)
        sites = [site.identifier for site in state.sites(db, self.settings.state_schema).values()
                 if user and site.broker_user == user]
        db.commit()
        return sites[0] if len(sites) == 1 else None

    def store(self, db: Any, frames: list[Any], signed_by: str | None = None) -> list[InboxRow]:
        """One transaction for the batch; returns the rows that were new (duplicates are ignored). A delivery apply
        would refuse for its size (over `max_message_bytes`, or deflated and inflating beyond it) is parked in the
        retry queue with one line instead, without its body: storing it could exceed what central accepts in one
        statement (max_allowed_packet) and stop consume for every site.

        `signed_by`: the frames come from a bundle whose signature was checked (`dbsync import`): they are stored
        as sent by that key (`wire.SIGNED_USER_PREFIX`), as if the broker had stamped it. A broker user whose name
        looks like one is stored with a prefix, so no broker login can pass for a signature."""
        deliveries = []
        limit = self.settings.max_message_bytes
        for frame in frames:
            frame.headers[wire.VALIDATED_USER_HEADER] = trust.stamped_user(frame.headers, signed_by)
            message_id = wire.delivery_id(frame.headers)
            raw = frame.body if isinstance(frame.body, bytes) else (frame.body or "").encode("utf-8")
            problem = "refused_too_large" if len(raw) > limit else None
            try:
                body = wire.decode_body(raw, frame.headers, limit)
            except zlib.error as exc:
                body = raw
                if _inflates_beyond(raw, limit):
                    problem = "refused_deflate"
                else:  # broken, and small: stored as received, apply refuses it with one line (malformed JSON)
                    log.warning("message %s: deflate body cannot be inflated (%s); stored as received", message_id,
                                exc)
            if problem is not None:
                self._refuse(db, message_id, frame.headers, problem, len(raw))
                continue
            deliveries.append(inbox.Delivery(
                message_id, frame.headers.get(wire.SITE_HEADER) or None, body,
                frame.headers.get(wire.VALIDATED_USER_HEADER) or "", wire.delivery_rows(frame.headers),
                frame.headers.get(wire.SNAPSHOT_HEADER) == "1"))
        return inbox.store(db, self.settings.state_schema, deliveries, self.settings.worker)

    def _refuse(self, db: Any, message_id: str, headers: dict[str, str], problem: str, size: int) -> None:
        """A delivery consume does not store: one line, an entry of the retry queue without a body (counted per site
        in `dbsync status`); the caller acknowledges it with the rest of its batch. `problem`: its reason code."""
        self.refused += 1
        site = headers.get(wire.SITE_HEADER) or None
        refused = reason(problem, message=message_id, user=headers.get(wire.VALIDATED_USER_HEADER) or "?", size=size,
                         limit=self.settings.max_message_bytes)
        log.warning("%s; refused and parked", refused)
        inbox.park_broken(db, self.settings.state_schema, message_id, site, headers.get(wire.VALIDATED_USER_HEADER),
                          refused)


def _inflates_beyond(raw: bytes, limit: int) -> bool:
    """Whether a deflate body holds more than `limit` bytes (a deflate bomb), reading no more than that."""
    try:
        return len(zlib.decompressobj().decompress(raw, limit + 1)) > limit
    except zlib.error:
        return False


def broken_delivery(headers: dict[str, str], destination: str) -> Reason:
    """One line naming a delivery whose headers stop short (stomp.py ends a frame at a NUL byte, which STOMP
    cannot carry in a header): its broker id, destination, sender and the header it stops in."""
    last = next(reversed(headers), "") if headers else ""
    return reason("cut_short", delivery=headers.get("message-id") or "?", last=last[:64],
                  destination=headers.get("destination") or destination,
                  user=headers.get(wire.VALIDATED_USER_HEADER) or "?")


def consume(settings: ConsumeSettings, stop: threading.Event, *, max_messages: int | None = None,
            idle_seconds: float | None = None) -> Iterator[dict[str, Any]]:
    """Inbox records: first the backlog (rows not applied yet, in id order), then each newly committed row.

    Records are ``{"inbox": id, "message_id", "site", "body"}``. Stops after ``max_messages`` records, after
    ``idle_seconds`` without a delivery, or when ``stop`` is set (the batch in hand is committed and acked first).
    """
    if max_messages is not None:
        settings.max_messages = max_messages
    if idle_seconds is not None:
        settings.idle_seconds = idle_seconds
    consumer = Consumer(settings, stop)
    for row in consumer.backlog():
        yield row.record()
    for rows in consumer.batches():
        for row in rows:
            yield row.record()
    log.info("consume: %d records (%d new in the inbox, %d duplicate deliveries)", consumer.count,
             consumer.stored, consumer.duplicates)


def run_into_inbox(settings: ConsumeSettings, stop: threading.Event,
                   notify: threading.Event | None = None) -> int:
    """Only move deliveries into the inbox (the supervised receiver applies from the table); returns rows stored.

    ``notify`` is set after every commit that added rows, so an applier can wake up at once.
    """
    consumer = Consumer(settings, stop)
    for _rows in consumer.batches():
        if notify is not None:
            notify.set()
    return consumer.stored
