"""STOMP 1.2 over a bare socket, for frames stomp.py will not send or cannot read back.

A NUL byte inside a header value ends a frame for any parser that splits on NUL (stomp.py's does). This client
reads the header block line by line up to the blank line and the body by ``content-length``, so a frame with a
NUL in a header is still read whole, and it writes header values exactly as given apart from STOMP's escapes.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

from dbsync_cli.broker import BrokerSettings

_ESCAPES = {b"\\": b"\\\\", b"\n": b"\\n", b"\r": b"\\r", b":": b"\\c"}
_UNESCAPES = {b"\\\\": b"\\", b"\\n": b"\n", b"\\r": b"\r", b"\\c": b":"}


@dataclass
class Frame:
    command: str
    headers: dict[str, bytes] = field(default_factory=dict)  # values as bytes: they may hold a NUL or bad UTF-8
    body: bytes = b""

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("utf-8", "replace")


def _escape(value: bytes) -> bytes:
    for raw, escaped in _ESCAPES.items():  # backslash first (dicts keep insertion order)
        value = value.replace(raw, escaped)
    return value


def _unescape(value: bytes) -> bytes:
    out, index = bytearray(), 0
    while index < len(value):
        pair = value[index:index + 2]
        if pair in _UNESCAPES:
            out += _UNESCAPES[pair]
            index += 2
        else:
            out.append(value[index])
            index += 1
    return bytes(out)


def encode(command: str, headers: dict[str, str | bytes], body: bytes = b"") -> bytes:
    lines = [command.encode()]
    for name, value in headers.items():
        raw = value if isinstance(value, bytes) else value.encode()
        lines.append(_escape(name.encode()) + b":" + _escape(raw))
    lines.append(b"content-length:" + str(len(body)).encode())
    return b"\n".join(lines) + b"\n\n" + body + b"\x00"


class RawStomp:
    """One STOMP connection, logged in as ``settings.user``; blocking, for tests and tools (no heart-beats)."""

    def __init__(self, settings: BrokerSettings, *, timeout: float = 15.0) -> None:
        self.settings = settings
        sock = socket.create_connection((settings.host, settings.port), timeout=timeout)
        if settings.tls:
            sock = settings.ssl_context().wrap_socket(sock, server_hostname=settings.host)
        self.sock = sock
        self._buffer = b""
        self.send_frame("CONNECT", {"accept-version": "1.2", "host": settings.vhost or "/",
                                    "login": settings.user or "", "passcode": settings.password or "",
                                    "heart-beat": "0,0"})
        reply = self.read_frame()
        if reply is None or reply.command != "CONNECTED":
            message = reply.header("message") if reply is not None else "connection closed"
            self.close()
            raise ConnectionError(f"STOMP login as {settings.user} refused: {message}")

    def send_frame(self, command: str, headers: dict[str, str | bytes], body: bytes = b"") -> None:
        self.sock.sendall(encode(command, headers, body))

    def send(self, destination: str, body: bytes, headers: dict[str, str | bytes], *, receipt: str | None = None,
             timeout: float = 30.0) -> Frame | None:
        """A SEND; with ``receipt``, wait for the RECEIPT (or the ERROR the broker answers instead)."""
        full: dict[str, str | bytes] = {"destination": destination, **headers}
        if receipt:
            full["receipt"] = receipt
        self.send_frame("SEND", full, body)
        if not receipt:
            return None
        self.sock.settimeout(timeout)
        while (frame := self.read_frame()) is not None:
            if frame.command in ("RECEIPT", "ERROR"):
                return frame
        return None

    def subscribe(self, destination: str, *, id: str = "raw", anycast: bool = True) -> None:  # noqa: A002
        headers: dict[str, str | bytes] = {"destination": destination, "id": id, "ack": "auto"}
        if anycast:
            headers["subscription-type"] = "ANYCAST"
        self.send_frame("SUBSCRIBE", headers)

    def read_frame(self) -> Frame | None:
        """The next frame (heart-beat newlines skipped); None when the broker closed the connection."""
        while True:
            while self._buffer.startswith((b"\n", b"\r\n")):
                self._buffer = self._buffer[1:] if self._buffer[:1] == b"\n" else self._buffer[2:]
            end = self._buffer.find(b"\n\n")
            if end >= 0:
                break
            if not self._fill():
                return None
        head, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        command, *lines = head.split(b"\n")
        headers: dict[str, bytes] = {}
        for line in lines:
            name, _, value = line.rstrip(b"\r").partition(b":")
            headers.setdefault(_unescape(name).decode("utf-8", "replace"), _unescape(value))  # first one wins
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            while len(self._buffer) < int(length) + 1:
                if not self._fill():
                    return None
            body, self._buffer = self._buffer[:int(length)], self._buffer[int(length) + 1:]
        else:
            while (nul := self._buffer.find(b"\x00")) < 0:
                if not self._fill():
                    return None
            body, self._buffer = self._buffer[:nul], self._buffer[nul + 1:]
        return Frame(command.decode("utf-8", "replace").strip(), headers, body)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send_frame("DISCONNECT", {})
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawStomp:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
