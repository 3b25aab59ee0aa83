"""Publish: sync messages → Artemis over STOMP, and the only stage that moves the sender's checkpoint.

Messages travel in envelopes (wire version 2): up to `rows_per_message` consecutive rows, all live or all of the
initial load, deflated as one body, because a clinic link is slow and the broker's cost is per message, not per
byte; `wire_version = 1` sends one row per message for a receiver older than envelopes. Every SEND is persistent;
a batch ends with a RECEIPT request, and since frames on one connection are processed in
order, the receipt confirms the whole batch. Only then is the checkpoint written. While the broker persists a batch
the next ones are built and sent (at most `max_unconfirmed_batches` in flight, confirmed strictly in order). A dropped
connection means reconnect with backoff and resend every unconfirmed batch with the same ids (the receiver drops
the copies; the broker's duplicate detection is not used: wire.py says why).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic as time_now
from typing import Any

import stomp
from tenacity import RetryCallState

from dbsync_cli import exitcodes, wire
from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection, server_of
from dbsync_cli.broker_access import SEND, Need, refused
from dbsync_cli.broker_kind import TopicRefused, dialect
from dbsync_cli.broker_refusals import BrokerRefused, refusal, second_opinion
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.faults import describe
from dbsync_cli.files import private_dir
from dbsync_cli.retrying import GRACE_SECONDS, Stopped, backoff, jittered, pause, retrying, stopping
from dbsync_cli.sender import drops
from dbsync_cli.sender.binlog import CaptureStop
from dbsync_cli.wire import dumps

log = logging.getLogger("dbsync.publish")

# connect failures that retrying cannot fix: the broker's certificate is not trusted, or the login is refused
_PERMANENT = ("TLS certificate rejected", "Security Error", "password is invalid", "Bad CONNECT")
#: the longest wait between two connect attempts while the broker cannot be reached. A clinic link comes back without
#: a word, and every second the sender still waits then is a second of link unused: with waits up to 30 s a backlog
#: drained over a link down 10 s every 30 s used 71 % of its up time (scripts/bench-link). A refused connect costs
#: the broker next to nothing, and the waits stay jittered (half of each is random), so sites cut off together do not
#: come back in the same second. A refusal or a lost receipt still waits up to 30 s before the batches go again.
RECONNECT_MAX_SECONDS = 4.0


class BrokerStop(CaptureStop):
    """The broker refuses us for a reason only an operator can fix: stop (exit code) instead of retrying forever."""


@dataclass
class PublishSettings:
    broker: BrokerSettings
    # defaults: the config model's (config_model.DEFAULTS), never literals of their own
    destination: str = DEFAULTS.broker.destination
    destination_type: str = DEFAULTS.broker.destination_type  # queue (ANYCAST) | topic (MULTICAST, durable)
    batch_messages: int = DEFAULTS.broker.batch_messages  # rows per confirmed batch
    batch_bytes: int = DEFAULTS.broker.batch_bytes
    compress_over: int = DEFAULTS.broker.compress_over
    wire_version: int = DEFAULTS.broker.wire_version  # 2: envelopes of several rows; 1: one row per message
    rows_per_message: int = DEFAULTS.broker.rows_per_message  # rows per envelope
    message_bytes: int = DEFAULTS.broker.message_bytes  # JSON bytes per envelope before deflate
    max_message_bytes: int = DEFAULTS.broker.max_message_bytes
    #: seconds without a word from the broker (receipt or heart-beat) before the connection counts as dead
    receipt_timeout: float = 30.0
    max_unconfirmed_batches: int = 2  # sent while earlier ones await their receipt (0: wait for every batch)
    reject_dir: Path | None = None  # oversized messages are kept here for an operator, never silently dropped
    stop: threading.Event = field(default_factory=threading.Event)


RETRYABLE = (BrokerError, OSError, stomp.exception.StompException)


@dataclass
class _Batch:
    """Frames sent together; `receipt` is the id the broker confirms them with (None: nothing to confirm)."""

    frames: list[tuple[bytes, dict[str, str]]]
    records: list[dict[str, Any]]  # the rows the frames carry
    source: dict[str, Any] | None
    receipt: str | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)  # drop records the checkpoint moves past (drops.py)


class _Receipts(stomp.ConnectionListener):
    """One connection's answers. `received` is the publisher's, shared by its connections: a receipt that came
    before the connection dropped still confirms its batch (on a link that drops every few seconds, the batches
    confirmed before a drop are not sent again)."""

    def __init__(self, destination: str = "", previous: str = "", received: set[str] | None = None) -> None:
        self.destination = destination
        self.previous = previous  # the kind of the last refusal on this publisher (broker_refusals.refusal)
        self.lock = threading.Condition()
        self.received: set[str] = received if received is not None else set()
        self.error: str | None = None
        self.disconnected = False
        self.last_heard = time_now()  # a receipt, a heart-beat: the broker is alive and answering

    def _heard(self) -> None:
        with self.lock:
            self.last_heard = time_now()

    def on_connected(self, frame: Any) -> None:
        self._heard()

    def on_heartbeat(self) -> None:
        self._heard()

    def on_receipt(self, frame: Any) -> None:
        with self.lock:
            self.received.add(frame.headers.get("receipt-id", ""))
            self.last_heard = time_now()
            self.lock.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.lock:
            self.error = frame.headers.get("message", "ERROR frame") + (f": {frame.body[:200]}" if frame.body else "")
            self.lock.notify_all()

    def on_disconnected(self) -> None:
        with self.lock:
            self.disconnected = True
            self.lock.notify_all()

    def wait(self, receipt: str, silence: float, stop: threading.Event | None = None) -> None:
        """Until the receipt, an ERROR frame, a dropped connection, or `silence` seconds without a word from the
        broker (neither a receipt nor a heart-beat). A batch on a slow link may take minutes to arrive, and that is
        no reason to send it again while the broker keeps talking; a dead link is one that stopped talking. Once a
        stop is asked, at most GRACE_SECONDS more (then Stopped: the batch stays unconfirmed and is sent again at the
        next start)."""
        stop_by: float | None = None
        started = time_now()
        warn_at = started + silence
        with self.lock:
            while True:
                ok = self.lock.wait_for(lambda: receipt in self.received or self.error or self.disconnected, 0.25)
                if ok or time_now() - max(self.last_heard, started) >= silence:
                    break
                if time_now() >= warn_at:  # the broker talks but does not confirm: a slow link, a blocked producer
                    log.warning("still waiting for the broker's receipt after %.0f s (the broker answers heart-beats)",
                                time_now() - started)
                    warn_at += silence
                if stopping(stop):
                    stop_by = stop_by or time_now() + GRACE_SECONDS
                    if time_now() >= stop_by:
                        raise Stopped("stopped while waiting for the broker's receipt")
            if receipt in self.received:
                return
            if self.error:
                refused = refusal(self.error, self.destination, previous=self.previous)
                if refused.permanent:  # e.g. no send permission: retrying cannot help, an operator must act
                    raise BrokerStop(str(refused), refused.code) from refused
                raise refused
            if self.disconnected:
                raise BrokerError("connection to the broker dropped before the receipt")
            raise BrokerError(f"the broker sent nothing (no receipt, no heart-beat) for {silence:.0f} s")


class Publisher:
    def __init__(self, settings: PublishSettings, on_confirmed: Callable[[dict[str, Any]], None],
                 on_sent: Callable[[int], None] | None = None,
                 on_dropped: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_refused: Callable[[str | None, str], None] | None = None,
                 on_batch: Callable[[list[dict[str, Any]]], None] | None = None):
        self.settings = settings
        #: the rows of a confirmed batch, told before on_confirmed (the complex obs files they name: file_jobs.py)
        self.on_batch = on_batch
        #: the broker's last refusal (kind, one line) for `dbsync status`, told (None, "") once a batch is confirmed
        #: again; the first confirmation of a run also clears one a previous run left
        self.on_refused = on_refused
        self._refusal_open = True
        self.on_confirmed = on_confirmed
        self.on_dropped = on_dropped  # drop records of a confirmed batch, told before on_confirmed (drops.py)
        self.dropped: list[dict[str, Any]] = []  # drop records since the last batch was sealed
        self.on_sent = on_sent  # messages confirmed per batch, told before on_confirmed (the rate for `dbsync status`)
        self.conn: stomp.Connection12 | None = None
        self.receipts_got: set[str] = set()  # receipts received, on any connection, for batches not popped yet
        self.receipts = _Receipts(settings.destination, received=self.receipts_got)
        self.sent = 0
        self.speak = dialect(None)  # the connected broker's dialect (broker_kind), read at each connect

    def _connect(self) -> stomp.Connection12:
        if self.conn is not None and self.conn.is_connected() and not self.receipts.disconnected:
            return self.conn
        self.close()
        self.receipts = _Receipts(self.settings.destination, self.receipts.previous, self.receipts_got)
        try:
            self.conn = open_connection(self.settings.broker, listener=self.receipts)
        except BrokerError as exc:
            if any(marker in str(exc) for marker in _PERMANENT):
                raise BrokerStop(str(exc), exitcodes.UNREACHABLE) from None
            raise
        self.speak = dialect(server_of(self.conn))
        if self.settings.destination_type == "topic":
            try:
                self.speak.check_topic()
            except TopicRefused as exc:
                self.close()
                raise BrokerStop(str(exc), exitcodes.CONFIG) from None
        sock = getattr(self.conn.transport, "socket", None)
        if sock is not None:
            # without it, Nagle holds the small RECEIPT-carrying tail of a batch until the broker's delayed ACK
            # (~40 ms per batch, most of the publish time)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info("connected to %s:%d", self.settings.broker.host, self.settings.broker.port)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection must not hide the original error
                self.conn.disconnect()
            self.conn = None

    @staticmethod
    def _valid(message: dict[str, Any]) -> bool:
        """A record without an id or table is not a sync message: sending it would break dedup and the receiver."""
        if isinstance(message.get("id"), str) and message["id"] and message.get("table"):
            return True
        log.error("record at %s (table %r) has no message id or table: not a sync message; skipped",
                  message.get("source"), message.get("table"))
        return False

    def _json(self, message: dict[str, Any]) -> bytes | None:
        """The row's JSON, or None when it is over the receiver's limit with room for its envelope (kept for an
        operator instead)."""
        body = dumps(message)
        room = 0 if self.settings.wire_version == 1 else wire.ENVELOPE_ROOM
        if len(body) > self.settings.max_message_bytes - room:
            self._reject(message, len(body))
            self.dropped.append(drops.of_message(drops.TOO_LARGE, message))
            return None
        return body

    def _frame(self, messages: list[dict[str, Any]], bodies: list[bytes]) -> tuple[bytes, dict[str, str]]:
        anycast = self.settings.destination_type == "queue"
        if self.settings.wire_version == 1:
            return wire.encode(messages[0], anycast=anycast, compress_over=self.settings.compress_over,
                               body=bodies[0])
        return wire.encode_envelope(messages, bodies, anycast=anycast, compress_over=self.settings.compress_over)

    def _reject(self, message: dict[str, Any], size: int) -> None:
        where = ""
        if self.settings.reject_dir is not None:
            private_dir(self.settings.reject_dir)
            path = self.settings.reject_dir / (message["id"].replace("/", "_").replace(":", "_") + ".json")
            path.write_bytes(dumps(message))
            where = f"; kept in {path}"
        log.error("message %s (%s %s) is %d bytes, over the %d-byte limit: not sent%s", message["id"],
                  message.get("table"), message.get("uuid"), size, self.settings.max_message_bytes, where)

    def _alive(self) -> bool:
        return (self.conn is not None and self.conn.is_connected() and not self.receipts.disconnected
                and self.receipts.error is None)

    def _transmit(self, batch: _Batch, conn: stomp.Connection12) -> None:
        """Send a batch's frames on `conn`, the last one asking for a receipt (a new id each time); no waiting."""
        if not batch.frames:
            batch.receipt = None
            return
        batch.receipt = uuidlib.uuid4().hex
        last = len(batch.frames) - 1
        topic = self.settings.destination_type == "topic"
        destination = self.speak.destination(self.settings.destination, topic)
        extra = self.speak.send_headers(topic, self.settings.broker.user)
        for index, (body, headers) in enumerate(batch.frames):
            sent_headers = {**headers, **extra, "receipt": batch.receipt} if index == last else {**headers, **extra}
            conn.send(destination=destination, body=body, headers=sent_headers, content_type="application/json")

    def _resend(self, pending: deque[_Batch], failures: int = 0) -> None:
        """Reconnect with backoff and send every unconfirmed batch again, in order, on one new connection (the
        receiver drops the copies by their ids). Batches are sent again a message at a time, each asking its
        own receipt: on a link that drops before a whole batch gets through, every message that did is kept."""
        if failures:
            pause(backoff(failures, multiplier=0.5, maximum=30), self.settings.stop)
        self._split(pending)
        # only receipts of batches still pending matter (a DISCONNECT's, a late one of a batch sent again: dropped)
        self.receipts_got.intersection_update({batch.receipt for batch in pending if batch.receipt})

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("publish failed (%s); retrying", describe(error) if error else "no answer")
            self.close()

        for attempt in retrying(retry_on=RETRYABLE, stop=self.settings.stop, before_sleep=before_sleep,
                                wait=jittered(multiplier=0.5, maximum=RECONNECT_MAX_SECONDS)):
            with attempt:
                self.close()
                conn = self._connect()
                for batch in pending:
                    if batch.receipt not in self.receipts_got:  # confirmed before the drop: not sent again
                        self._transmit(batch, conn)

    def _split(self, pending: deque[_Batch]) -> None:
        """Each unconfirmed batch of several messages becomes one batch per message; the rows, the drop records
        and the checkpoint stay with its last message, so nothing moves before the whole batch is confirmed."""
        def whole(batch: _Batch) -> bool:  # one message, confirmed already, or never sent (not failed yet)
            return len(batch.frames) <= 1 or batch.receipt is None or batch.receipt in self.receipts_got

        if all(whole(batch) for batch in pending):
            return
        parts: list[_Batch] = []
        for batch in pending:
            if whole(batch):
                parts.append(batch)
                continue
            parts.extend(_Batch([frame], [], None) for frame in batch.frames[:-1])
            parts.append(_Batch(batch.frames[-1:], batch.records, batch.source, dropped=batch.dropped))
        pending.clear()
        pending.extend(parts)

    def _send(self, pending: deque[_Batch], batch: _Batch) -> None:
        """Send a new batch behind the unconfirmed ones. A connection that dropped since must not carry it alone:
        the earlier batches go first again, or the queue would get them out of order."""
        pending.append(batch)
        try:
            if self._alive() or len(pending) == 1:
                self._transmit(batch, self._connect())
                return
        except RETRYABLE as exc:
            log.warning("publish failed (%s); retrying", describe(exc))
        self._resend(pending)

    def _broken(self) -> bool:
        """The connection dropped or the broker sent an ERROR frame: the unconfirmed batches will not be confirmed
        on it. Noticed at the next heart-beat too (every second), not only when the next batch is sent: at the end
        of a backlog no batch follows, and the last ones waited, lost, for the site's next change."""
        return self.receipts.disconnected or self.receipts.error is not None

    def _unconfirmed(self, pending: deque[_Batch]) -> int:
        """Batches sent and not confirmed yet (a batch without frames, a heart-beat's, needs no receipt)."""
        return sum(1 for batch in pending if batch.receipt is not None and batch.receipt not in self.receipts_got)

    def _confirm(self, pending: deque[_Batch], keep: int) -> Iterator[dict[str, Any]]:
        """Take every confirmed batch off the front, in order (yielding its records and moving the checkpoint); wait
        for the oldest receipt only while more than `keep` batches are unconfirmed, or once the connection broke (the
        wait then fails at once and the unconfirmed batches go again). So the window stays full on a high-latency
        link, and a checkpoint moves as soon as its batch and every one before it are confirmed."""
        failures = 0
        while pending:
            batch = pending[0]
            if batch.receipt is not None and batch.receipt not in self.receipts_got:
                if self._unconfirmed(pending) <= keep and not self._broken():
                    return
                try:
                    self._wait(batch.receipt)
                except BrokerStop as exc:
                    self._refused(exc.__cause__, exc)
                    raise
                except RETRYABLE as exc:
                    self._refused(exc, exc)
                    failures += 1
                    log.warning("publish failed (%s); retrying %d unconfirmed batch(es)", describe(exc), len(pending))
                    self._resend(pending, failures)
                    continue
            pending.popleft()
            self.receipts_got.discard(batch.receipt or "")
            if batch.receipt is not None and self._refusal_open and self.on_refused is not None:
                self.on_refused(None, "")  # the broker takes batches again: status stops naming the refusal
                self._refusal_open = False
            if batch.dropped and self.on_dropped is not None:
                self.on_dropped(batch.dropped)
            if batch.records:
                self.sent += len(batch.records)
                if self.on_sent is not None:
                    self.on_sent(len(batch.records))
                if self.on_batch is not None:
                    self.on_batch(batch.records)
            if batch.source is not None:
                self.on_confirmed(batch.source)
            yield from batch.records

    def _wait(self, receipt: str) -> None:
        """The receipt; a permission refusal read from a bare AMQ339011 is first checked with the probe `config
        check` uses, since a broker past max-disk-usage sometimes answers a send so (broker_refusals.second_opinion)."""
        try:
            self.receipts.wait(receipt, self.settings.receipt_timeout, self.settings.stop)
        except BrokerStop as exc:
            first = exc.__cause__
            if not (isinstance(first, BrokerRefused) and first.bare):
                raise
            routing = "ANYCAST" if self.settings.destination_type == "queue" else "MULTICAST"
            need = Need(SEND, self.settings.destination, "publish", routing)
            try:
                answers = refused([need], self.settings.broker)
            except BrokerError as probe_error:
                answer: str | None = describe(probe_error)
            else:
                answer = answers[0][1] if answers else None
            second = second_opinion(first, answer, self.settings.destination)
            if second is first:
                raise
            if second.permanent:  # refused for another reason an operator must fix (an unknown address)
                raise BrokerStop(str(second), second.code) from second
            raise second from None

    def _refused(self, cause: BaseException | None, error: BaseException) -> None:
        """Record a refusal the broker named (broker_refusals: disk full, a permission, …) for `dbsync status`."""
        if isinstance(cause, BrokerRefused) and self.on_refused is not None:
            self.on_refused(cause.kind or "other", " ".join(str(error).split()))
            self._refusal_open = True
        if isinstance(cause, BrokerRefused):
            self.receipts.previous = cause.kind

    def run(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield each message once the broker confirmed it; heartbeats move the checkpoint after the batch.

        The next batch is built and sent while the broker persists the previous ones (at most
        `max_unconfirmed_batches` in flight); batches are confirmed strictly in order, so the checkpoint only moves
        over confirmed data. A heartbeat's checkpoint moves when every batch before it is confirmed (it does not
        empty the window: on a link with a long round trip that left it idle most of the time); the end of input
        waits for everything.
        """
        pending: deque[_Batch] = deque()
        frames: list[tuple[bytes, dict[str, str]]] = []
        batch: list[dict[str, Any]] = []
        group: list[dict[str, Any]] = []  # rows of the envelope being filled
        bodies: list[bytes] = []
        size = group_size = 0
        last_source: dict[str, Any] | None = None
        per_message = 1 if self.settings.wire_version == 1 else max(1, self.settings.rows_per_message)

        def seal() -> None:
            nonlocal group, bodies, group_size, size
            if group:
                frame = self._frame(group, bodies)
                frames.append(frame)
                batch.extend(group)
                size += len(frame[0])
            group, bodies, group_size = [], [], 0

        def flush(keep: int) -> Iterator[dict[str, Any]]:
            nonlocal frames, batch, size, last_source
            seal()
            if not frames and not batch and pending and not pending[-1].frames and not pending[-1].records:
                # a heart-beat behind a heart-beat: the later checkpoint replaces the earlier (one batch, not two)
                pending[-1].source = last_source or pending[-1].source
                pending[-1].dropped.extend(self.dropped)
            elif frames or last_source is not None or self.dropped:
                self._send(pending, _Batch(frames, batch, last_source, dropped=self.dropped))
            frames, batch, size, last_source = [], [], 0, None
            self.dropped = []
            yield from self._confirm(pending, keep)

        window = max(0, self.settings.max_unconfirmed_batches)
        try:
            for record in records:
                if stopping(self.settings.stop):  # confirm what was sent (GRACE_SECONDS at most), read no more
                    break
                if drops.is_dropped(record):  # not sent by enrich: counted with the checkpoint that passes it
                    self.dropped.append(record)
                    last_source = record.get("source") or last_source
                    continue
                if record.get("op") == wire.HEARTBEAT:  # its checkpoint moves once every batch before it is confirmed
                    last_source = record.get("source") or last_source
                    yield from flush(window)
                    continue
                if not self._valid(record):
                    self.dropped.append(drops.of_message(drops.NOT_A_MESSAGE, record))
                    continue
                body = self._json(record)
                last_source = record.get("source") or last_source
                if body is None:
                    continue
                if group and (group_size + len(body) > self.settings.message_bytes
                              or bool(record.get("snapshot")) != bool(group[0].get("snapshot"))
                              or record.get("site") != group[0].get("site")):
                    seal()
                group.append(record)
                bodies.append(body)
                group_size += len(body)
                if len(group) >= per_message:
                    seal()
                if len(batch) + len(group) >= self.settings.batch_messages or size >= self.settings.batch_bytes:
                    yield from flush(window)
            yield from flush(0)
        finally:
            self.close()


def publish(records: Iterable[dict[str, Any]], settings: PublishSettings,
            on_confirmed: Callable[[dict[str, Any]], None],
            on_sent: Callable[[int], None] | None = None,
            on_dropped: Callable[[list[dict[str, Any]]], None] | None = None,
            on_refused: Callable[[str | None, str], None] | None = None,
            on_batch: Callable[[list[dict[str, Any]]], None] | None = None) -> Iterator[dict[str, Any]]:
    yield from Publisher(settings, on_confirmed, on_sent, on_dropped, on_refused, on_batch).run(records)
