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
from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection

log = logging.getLogger(__name__)

KIND_HEADER = "dbsync-kind"
CORRELATION_HEADER = "correlation-id"
COMPRESS_OVER = 4096
MAX_BODY = 64 * 1024 * 1024  # inflated: a request carries digests, never rows


class ControlError(Exception):
    """A request could not be answered (the one-line reason the receiver gave, or why there was no answer)."""


def request_destination(sync_destination: str) -> str:
    return f"{sync_destination}.control"


def reply_destination(sync_destination: str, site: str) -> str:
    return f"{sync_destination}.reply.{site}"


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


class _Inbox(stomp.ConnectionListener):
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
        self.inbox = _Inbox()
        self.bytes_sent = 0
        self.bytes_received = 0

    def _connect(self) -> stomp.Connection12:
        if self.conn is not None and self.conn.is_connected() and not self.inbox.closed.is_set():
            return self.conn
        self.close()
        self.inbox = _Inbox()
        conn = open_connection(self.settings, listener=self.inbox, auto_decode=False)
        conn.subscribe(self.replies, id="dbsync-replies", ack="client-individual",
                       headers={"subscription-type": "ANYCAST"})
        self.conn = conn
        return conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.disconnect()
        self.conn = None

    def call(self, kind: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and return the receiver's reply; a lost connection is reconnected and the request sent
        again (answering twice is harmless); ControlError when the receiver refuses it or never answers."""
        request_id = f"{self.site}:{uuidlib.uuid4()}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._call_once(kind, request_id, body, deadline)
            except BrokerError as exc:
                if time.monotonic() > deadline:
                    raise ControlError(f"no answer from central to {kind}: {exc}") from None
                log.warning("control: %s; connecting again", exc)
                time.sleep(1)

    def _call_once(self, kind: str, request_id: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        conn = self._connect()
        receipt = f"control-{next(self._numbers)}"
        raw, headers = encode({**body, "kind": kind, "id": request_id, "site": self.site})
        self.bytes_sent += len(raw)
        try:
            conn.send(self.requests, raw, headers={**headers, KIND_HEADER: kind, CORRELATION_HEADER: request_id,
                                                   "receipt": receipt})
        except Exception as exc:  # noqa: BLE001 - stomp.py raises a few kinds on a broken socket
            raise BrokerError(f"send failed: {exc}") from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ControlError(f"no answer from central to {kind} within the timeout (is `dbsync receiver` "
                                   "running, and may this site's broker user read its reply queue?)")
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
            if frame.headers.get(CORRELATION_HEADER) != request_id:
                log.debug("control: dropped a stale reply %s", frame.headers.get(CORRELATION_HEADER))
                continue
            self.bytes_received += len(frame.body or b"")
            reply = decode(frame)
            if not isinstance(reply, dict) or not reply.get("ok"):
                error = reply.get("error") if isinstance(reply, dict) else None
                raise ControlError(f"central refused {kind}: {error or 'no reason given'}")
            return reply
