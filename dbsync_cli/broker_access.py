"""Whether the broker lets this user send to and consume from the addresses its role uses, asked for real.

Artemis tells a user nothing about its own permissions (a site's user may not use management), so each one is
tried without leaving a trace: a SEND inside a STOMP transaction that is then aborted (Artemis checks `send` when
the frame arrives, and an aborted message is never delivered), and a SUBSCRIBE with a selector no message matches,
then UNSUBSCRIBE. A refusal is an ERROR frame, after which Artemis closes the connection: the next probe opens a
new one. Measured with Artemis 2.40: a missing `send` gives a bare ``AMQ339011 … CoreMessage[…]``, a missing
`consume` ``AMQ339016 Error creating subscription``, a missing `createAddress` ``AMQ229032 … permission=…``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import re
from dataclasses import dataclass
from typing import Any

import stomp

from dbsync_cli.broker import BrokerSettings, open_connection, server_of
from dbsync_cli.broker_kind import dialect

SEND, CONSUME = "send", "consume"
_PERMISSION = re.compile(r"AMQ229032:? User:? (\S+) does not have permission='(\w+)' on address (\S+)")


@dataclass(frozen=True)
class Need:
    """A permission the role needs: `operation` on `address`, and why (for the finding's text)."""

    operation: str  # send | consume
    address: str
    why: str
    routing: str = "ANYCAST"


class _Frames(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: queue.Queue[tuple[str, str]] = queue.Queue()

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(("receipt", frame.headers.get("receipt-id", "")))

    def on_error(self, frame: Any) -> None:
        body = frame.body.decode(errors="replace") if isinstance(frame.body, bytes) else str(frame.body or "")
        self.frames.put(("error", frame.headers.get("message") or body or "ERROR frame"))

    def on_disconnected(self) -> None:
        self.frames.put(("error", "connection closed by the broker"))


def refused(needs: list[Need], settings: BrokerSettings, timeout: float = 5) -> list[tuple[Need, str]]:
    """The needs the broker refuses, each with its reason in one line (an empty list: every one granted).
    Raises BrokerError when the broker cannot be reached at all."""
    settings = dataclasses.replace(settings, connect_timeout=timeout, heartbeats=(0, 0))
    out: list[tuple[Need, str]] = []
    conn: stomp.Connection12 | None = None
    frames = _Frames()
    try:
        for number, need in enumerate(needs):
            if conn is None:
                frames = _Frames()
                conn = open_connection(settings, listener=frames)
            answer = _probe(conn, frames, need, f"dbsync-check-{number}", timeout)
            if answer is not None:
                out.append((need, _reason(answer, need)))
                _drop(conn)
                conn = None
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()
    return out


def _probe(conn: stomp.Connection12, frames: _Frames, need: Need, tag: str, timeout: float) -> str | None:
    """None when granted, else the broker's answer."""
    address = dialect(server_of(conn)).destination(need.address, need.routing == "MULTICAST")  # /topic/… elsewhere
    if need.operation == SEND:
        conn.begin(transaction=tag)
        conn.send(address, body="", transaction=tag,
                  headers={"receipt": tag, "destination-type": need.routing, "dbsync-check": "permission"})
    else:
        conn.subscribe(address, id=tag, ack="client-individual",
                       headers={"receipt": tag, "subscription-type": need.routing, "selector": "1=0"})
    try:
        kind, text = frames.frames.get(timeout=timeout)
    except queue.Empty:
        return f"no answer within {timeout:g}s"
    if kind != "receipt":
        return text
    if need.operation == SEND:
        conn.abort(transaction=tag)
    else:
        conn.unsubscribe(id=tag)
    return None


def _drop(conn: stomp.Connection12) -> None:
    """After an ERROR frame Artemis closes the connection: close our side without sending anything more."""
    with contextlib.suppress(Exception):
        conn.transport.disconnect_socket()
    with contextlib.suppress(Exception):
        conn.transport.stop()


def _reason(answer: str, need: Need) -> str:
    text = " ".join(answer.split())
    found = _PERMISSION.search(text)
    if found:
        user, permission, address = found.groups()
        return f"user {user} has no {permission.lower()} permission on address {address} (AMQ229032)"
    if "AMQ339011" in text and need.operation == SEND:
        return "refused (AMQ339011): no send permission"
    if "AMQ339016" in text and need.operation == CONSUME:
        return "refused (AMQ339016): no consume permission"
    if "AMQ339001" in text:
        return "the address does not exist and the broker does not create it (AMQ339001)"
    return re.sub(r"\s*CoreMessage\[.*", "", text)[:200]
