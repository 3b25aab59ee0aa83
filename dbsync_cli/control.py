"""Requests between a site and central over the broker (verify, re-sync): central cannot reach 200 site databases,
so questions travel like the data does.

A site sends a request to ``<sync destination>.control`` (anycast, persistent); the receiver answers on
``<sync destination>.reply.<site>``, a queue only that site's broker user may read. A request is
``{"kind", "id", "site", …}``; the reply carries the request's id as ``correlation-id`` and is ``{"ok": true, …}``
or ``{"ok": false, "error": "…"}``. Handling a request only reads or replaces what the same request wrote before,
so a request the broker delivers twice (a receiver killed before its ACK) is answered twice, harmlessly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
import uuid as uuidlib
from typing import Any

import orjson
import stomp

from dbsync_cli import wire
from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection, server_of
from dbsync_cli.broker_kind import dialect
from dbsync_cli.faults import describe
from dbsync_cli.i18n import _
from dbsync_cli.retrying import backoff, pause

log = logging.getLogger(__name__)

KIND_HEADER = "dbsync-kind"
CORRELATION_HEADER = "correlation-id"
COMPRESS_OVER = 4096
MAX_BODY = 64 * 1024 * 1024  # inflated: a request carries digests, never rows
#: what Artemis says when it refuses a user: a login (AMQ229031) or a permission (AMQ229213, AMQ229032; a
#: subscription refused for a missing `consume`, AMQ339016)
REFUSED = ("Security Error", "AMQ229031", "AMQ229213", "AMQ229032", "AMQ339016", "TLS certificate rejected")


class ControlError(Exception):
    """A request could not be answered (the one-line reason the receiver gave, or why there was no answer)."""


def request_destination(sync_destination: str) -> str:
    return f"{sync_destination}.control"


def reply_destination(sync_destination: str, site: str) -> str:
    return f"{sync_destination}.reply.{site}"


def site_request_destination(sync_destination: str, site: str) -> str:
    """Where central's requests to one site's sender go (re-sync): only central's broker user may send there."""
    return f"{sync_destination}.request.{site}"


def send_confirmed(settings: BrokerSettings, destination: str, body: dict[str, Any], timeout: float = 30) -> None:
    """One persistent message, returned from once the broker confirmed it (RECEIPT)."""
    inbox = FrameQueue()
    conn = open_connection(settings, listener=inbox)
    try:
        send(conn, destination, body, {"receipt": "dbsync-request"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                frame = inbox.frames.get(timeout=0.5)
            except queue.Empty:
                if inbox.closed.is_set():
                    raise BrokerError(inbox.error or "connection lost before the broker confirmed") from None
                continue
            if frame.cmd == "RECEIPT":
                return
        raise BrokerError(f"the broker did not confirm the message to {destination} within {timeout:g} s")
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def encode(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = orjson.dumps(body)
    headers: dict[str, str] = {"persistent": "true", "destination-type": "ANYCAST"}
    return wire._deflated(raw, headers, COMPRESS_OVER)


def decode(frame: Any) -> Any:
    """The JSON of a control frame; ValueError when it is not readable JSON."""
    raw = frame.body if isinstance(frame.body, bytes) else (frame.body or "").encode()
    try:
        return orjson.loads(wire.decode_body(raw, frame.headers, MAX_BODY))
    except Exception as exc:  # noqa: BLE001 - zlib.error or orjson.JSONDecodeError: one line either way
        raise ValueError(f"unreadable control message ({type(exc).__name__})") from None


class FrameQueue(stomp.ConnectionListener):
    """Frames (messages and receipts) handed from stomp.py's io thread to the thread that handles them; the io
    thread never blocks (see DESIGN: a blocked io thread deadlocks ACKs under TLS)."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()
        self.error: str | None = None
        self.closed = threading.Event()

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_error(self, frame: Any) -> None:
        self.error = (frame.headers.get("message") or "broker error").strip()
        self.closed.set()

    def on_disconnected(self) -> None:
        self.closed.set()

    def next(self, conn: stomp.Connection12, timeout: float, what: str) -> Any:
        """The next frame, or None after `timeout`; BrokerError once the connection is gone."""
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            if self.closed.is_set() or not conn.is_connected():
                raise BrokerError(f"{what}: connection lost{': ' + self.error if self.error else ''}") from None
            return None


def send(conn: stomp.Connection12, destination: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    raw, wire_headers = encode(body)
    conn.send(destination, raw, headers={**wire_headers, **headers})


class ControlClient:
    """A site's side: one connection, its reply queue subscribed; `call` sends a request and waits for its reply."""

    def __init__(self, settings: BrokerSettings, sync_destination: str, site: str) -> None:
        self.settings = settings
        self.site = site
        self.requests = request_destination(sync_destination)
        self.replies = reply_destination(sync_destination, site)
        self._numbers = itertools.count(1)
        self.conn: stomp.Connection12 | None = None
        self.inbox = FrameQueue()
        self.bytes_sent = 0
        self.bytes_received = 0
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}  # request id → (kind, body) not answered yet
        self._unsent: dict[str, None] = {}  # pending requests to send (again) on the next connection, in order
        self._replies: dict[str, Any] = {}

    def _connect(self) -> stomp.Connection12:
        if self.conn is not None and self.conn.is_connected() and not self.inbox.closed.is_set():
            return self.conn
        self.close()
        self.inbox = FrameQueue()
        conn = open_connection(self.settings, listener=self.inbox, auto_decode=False)
        try:
            conn.subscribe(self.replies, id="dbsync-replies", ack="client-individual",
                           headers={"subscription-type": "ANYCAST", "receipt": "dbsync-subscribed"})
        except Exception as exc:  # noqa: BLE001 - the link dropped between CONNECT and SUBSCRIBE: connect again
            raise BrokerError(f"subscribing to {self.replies}: {exc or type(exc).__name__}") from None
        deadline = time.monotonic() + self.settings.connect_timeout
        while True:  # a refused subscription (another site's reply queue) ends here, in the broker's words
            try:
                frame = self.inbox.frames.get(timeout=0.2)
            except queue.Empty:
                if self.inbox.closed.is_set() or time.monotonic() > deadline:
                    with contextlib.suppress(Exception):
                        conn.disconnect()
                    raise BrokerError(f"subscribing to {self.replies}: "
                                      f"{self.inbox.error or 'no receipt from the broker'}") from None
                continue
            if frame.cmd == "RECEIPT":
                break
            self.inbox.frames.put(frame)  # a reply that came first: kept for `reply`
        self.conn = conn
        return conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.disconnect()
        self.conn = None

    def call(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and return the receiver's reply (see `submit` and `reply`)."""
        return self.reply(self.submit(kind, body), timeout)

    def submit(self, kind: str, body: dict[str, Any]) -> str:
        """Send a request without waiting for its reply (the receiver answers requests in order, so the site
        can compute its next request meanwhile); returns its id for `reply`. A link that is down does not fail it:
        the request goes when `reply` has a connection again."""
        request_id = f"{self.site}:{uuidlib.uuid4()}"
        self._pending[request_id] = (kind, {**body, "kind": kind, "id": request_id, "site": self.site})
        self._unsent[request_id] = None
        try:
            self._send_unsent()
        except BrokerError as exc:
            if any(marker in str(exc) for marker in REFUSED):
                raise
            log.warning("control: %s; the request is sent when the broker answers again", describe(exc))
            self.close()
        return request_id

    def reply(self, request_id: str, timeout: float) -> dict[str, Any]:
        """The reply to a submitted request. A lost connection is connected again with backoff and every request
        still unanswered sent again (answering twice is harmless), until `timeout`: a link that drops every few
        seconds slows a verify down but never ends it. ControlError when the receiver refuses the request or no
        answer comes in time."""
        kind = self._pending[request_id][0]
        deadline = time.monotonic() + timeout
        failures = 0
        while request_id not in self._replies:
            try:
                self._send_unsent()
                self._receive(kind, deadline)
                failures = 0
            except BrokerError as exc:
                if any(marker in str(exc) for marker in REFUSED):
                    raise  # the broker refused this user: retrying cannot help (exit 3, the broker's own words)
                if time.monotonic() > deadline:
                    raise ControlError(_("no answer from central to {kind}: {error}").format(
                        kind=kind, error=describe(exc))) from None
                failures += 1
                log.warning("control: %s; connecting again", describe(exc))
                self.close()
                self._unsent.update(dict.fromkeys(self._pending))  # all unanswered go again, on the new connection
                pause(min(backoff(failures, maximum=10), max(0.1, deadline - time.monotonic())))
        self._pending.pop(request_id, None)
        reply = self._replies.pop(request_id)
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else None
            raise ControlError(_("central refused {kind}: {error}").format(kind=kind, error=error or _("no reason given")))
        return reply

    def _send_unsent(self) -> None:
        for request_id in list(self._unsent):
            if request_id in self._pending:
                self._send(request_id)
            self._unsent.pop(request_id, None)

    def _send(self, request_id: str) -> None:
        kind, body = self._pending[request_id]
        conn = self._connect()
        raw, headers = encode(body)
        self.bytes_sent += len(raw)
        try:
            stamp = dialect(server_of(conn)).send_headers(False, self.settings.user)  # RabbitMQ: user-id
            conn.send(self.requests, raw, headers={**headers, **stamp, KIND_HEADER: kind,
                                                   CORRELATION_HEADER: request_id,
                                                   "receipt": f"control-{next(self._numbers)}"})
        except Exception as exc:  # noqa: BLE001 - stomp.py raises a few kinds on a broken socket
            raise BrokerError(f"send failed: {self.inbox.error or exc or type(exc).__name__}") from None

    def _receive(self, kind: str, deadline: float) -> None:
        """Wait for the next reply frame and keep it if it answers a pending request."""
        conn = self._connect()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlError(_("no answer from central to {kind} within the timeout (is `dbsync receiver` "
                                     "running, and may this site's broker user read its reply queue?)").format(kind=kind))
            try:
                frame = self.inbox.frames.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.inbox.closed.is_set():
                    raise BrokerError(self.inbox.error or "connection lost") from None
                continue
            if frame.cmd == "RECEIPT":
                continue
            with contextlib.suppress(Exception):
                conn.ack(frame.headers["ack"])
            correlation = frame.headers.get(CORRELATION_HEADER)
            if correlation not in self._pending or correlation in self._replies:
                log.debug("control: dropped a stale or repeated reply %s", correlation)
                continue
            self.bytes_received += len(frame.body or b"")
            self._replies[correlation] = decode(frame)
            return
