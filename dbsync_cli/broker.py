"""STOMP connections to Artemis: settings, and one call that connects (TLS verified) or fails clearly.

``open_connection`` makes a single attempt and raises :class:`BrokerError` with a one-line message
naming host:port and the reason; reconnecting is the caller's job (stomp.py does not reconnect a
connection that dropped after it was established). TLS verifies the broker's certificate chain
against ``ca_file`` (or the system store) and, unless disabled, its host name. The password never
appears in a repr or an error message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import ssl
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import stomp
import stomp.exception

from dbsync_cli.i18n import _
from dbsync_cli.retrying import STOP, Stopped

if TYPE_CHECKING:
    from dbsync_cli.config import Config

SCHEMES = {"stomp": False, "stomp+ssl": True, "stomp+tls": True, "ssl": True}
DEFAULT_PORTS = {False: 61613, True: 61614}


class BrokerError(RuntimeError):
    """The broker could not be reached, refused TLS, or refused the login."""


@dataclass(frozen=True)
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 61613
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    verify_hostname: bool = True
    heartbeats: tuple[int, int] = (10000, 10000)
    vhost: str | None = None
    connect_timeout: float = 15.0

    @classmethod
    def from_url(cls, url: str, *, user: str | None = None, password: str | None = None,
                 ca_file: str | None = None, verify_hostname: bool = True,
                 heartbeats: tuple[int, int] = (10000, 10000), vhost: str | None = None,
                 connect_timeout: float = 15.0) -> BrokerSettings:
        """``stomp://host:port`` (plain) or ``stomp+ssl://host:port`` (TLS); credentials come separately."""
        parts = urlsplit(url.strip())
        if parts.scheme not in SCHEMES:
            raise BrokerError(f"broker url {url!r}: scheme must be one of {', '.join(sorted(SCHEMES))}")
        if parts.password is not None:
            raise BrokerError("broker url must not contain a password: configure it separately")
        tls = SCHEMES[parts.scheme]
        try:
            port = parts.port or DEFAULT_PORTS[tls]
        except ValueError as exc:
            raise BrokerError(f"broker url {url!r}: bad port") from exc
        if not parts.hostname:
            raise BrokerError(f"broker url {url!r}: no host")
        return cls(host=parts.hostname, port=port, user=user or parts.username, password=password, tls=tls,
                   ca_file=ca_file, verify_hostname=verify_hostname, heartbeats=heartbeats, vhost=vhost,
                   connect_timeout=connect_timeout)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'stomp+ssl' if self.tls else 'stomp'}://{self.address}"

    def ssl_context(self) -> ssl.SSLContext:
        """The context a TLS connection must pass: chain verified, host name checked unless disabled."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = self.verify_hostname
        return ctx


def settings_from_config(cfg: Config) -> BrokerSettings:
    """From the ``broker.*`` keys of a sender or receiver config; `broker.tls = true` turns TLS on for stomp:// too."""
    settings = BrokerSettings.from_url(
        cfg["broker.url"], user=cfg["broker.user"], password=cfg["broker.password"],
        ca_file=cfg.get("broker.ca_file"), verify_hostname=cfg["broker.verify_hostname"],
        vhost=cfg.get("broker.vhost"),
    )
    return dataclasses.replace(settings, tls=True) if cfg["broker.tls"] else settings


#: the CONNECTED frame's `server` header of each open connection (broker_kind reads the broker's dialect from it)
_SERVERS: weakref.WeakKeyDictionary[stomp.Connection12, str] = weakref.WeakKeyDictionary()


def server_of(conn: stomp.Connection12) -> str:
    """What the broker called itself when `conn` connected (``ActiveMQ/6.1.7``, ``RabbitMQ/3.10.8``, …; "" if
    nothing)."""
    return _SERVERS.get(conn, "")


_SECRET_HEADER = re.compile(r"\b(passcode|login|password|authorization)\s*:\s*\S+", re.IGNORECASE)


def error_text(frame) -> str:
    """An ERROR frame in one line: its `message` header and its body (RabbitMQ puts the reason only in the body,
    e.g. "Virtual host '127.0.0.1' access denied" under a bare "Bad CONNECT")."""
    body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else str(frame.body or "")
    message = str(frame.headers.get("message") or "").strip()
    # a broker may echo the offending frame ("The message: ---- CONNECT login:… passcode:…"): never its secrets
    body = _SECRET_HEADER.sub(r"\1:***", " ".join(body.split()))[:300]
    if message and body and body not in message:
        return f"{message}: {body}"
    return message or body or "ERROR frame"


class _ConnectWaiter(stomp.ConnectionListener):
    """Turns the CONNECTED / ERROR / disconnect callbacks into one outcome the caller can wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self.server = ""

    def on_connected(self, frame) -> None:
        self.server = str(frame.headers.get("server") or "")
        self.done.set()

    def on_error(self, frame) -> None:
        self.error = error_text(frame)
        self.done.set()

    def on_disconnected(self) -> None:
        self.error = self.error or "connection closed by the broker"
        self.done.set()


def _fail(settings: BrokerSettings, reason: object) -> BrokerError:
    text = " ".join(str(reason).split())
    if settings.password:
        text = text.replace(settings.password, "***")
    message = _("cannot connect to STOMP broker {address} (TLS): {reason}") if settings.tls \
        else _("cannot connect to STOMP broker {address}: {reason}")
    return BrokerError(message.format(address=settings.address, reason=text))


def _diagnose(settings: BrokerSettings) -> str:
    """stomp.py hides why a socket failed; redo the TCP (+TLS) step alone to name the reason."""
    try:
        with socket.create_connection((settings.host, settings.port), timeout=settings.connect_timeout) as sock:
            if settings.tls:
                settings.ssl_context().wrap_socket(sock, server_hostname=settings.host).close()
    except ssl.SSLCertVerificationError as exc:
        return f"TLS certificate rejected: {exc.verify_message or exc.reason}"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "connection failed"


def open_connection(settings: BrokerSettings, *, client_id: str | None = None,
                    listener: stomp.ConnectionListener | None = None, auto_decode: bool = True) -> stomp.Connection12:
    """Connect, log in and wait for CONNECTED; raise BrokerError otherwise (one attempt, no retries).

    ``listener`` is registered (as "dbsync") before connecting; ``client_id`` is sent as Artemis'
    ``client-id`` header (needed for durable subscriptions). ``auto_decode=False`` keeps bodies as bytes
    (compressed bodies must not pass through a UTF-8 decoder).
    """
    conn = stomp.Connection12([(settings.host, settings.port)], heartbeats=settings.heartbeats, vhost=settings.vhost,
                              reconnect_attempts_max=1, timeout=settings.connect_timeout, keepalive=True,
                              auto_decode=auto_decode)
    legacy = False
    if settings.tls and settings.ca_file and not Path(settings.ca_file).is_file():
        # stomp.py would retry a missing CA file forever ("Could not find file None"): fail once, naming it
        raise _fail(settings, f"CA file {settings.ca_file}: no such file")
    if settings.tls:
        # stomp.py builds an SSLContext(ssl_version): PROTOCOL_TLS_CLIENT checks the host name, the
        # generic PROTOCOL_TLS does not; verify=True makes the chain check CERT_REQUIRED in both.
        legacy = not settings.verify_hostname
        version = ssl.PROTOCOL_TLS if legacy else ssl.PROTOCOL_TLS_CLIENT
        conn.transport.set_ssl(for_hosts=[(settings.host, settings.port)], ca_certs=settings.ca_file,
                               ssl_version=version, verify=True)
    waiter = _ConnectWaiter()
    conn.set_listener("dbsync-connect", waiter)
    if listener is not None:
        conn.set_listener("dbsync", listener)
    headers = {"client-id": client_id} if client_id else {}
    try:
        with warnings.catch_warnings():
            if legacy:
                warnings.simplefilter("ignore", DeprecationWarning)
            conn.connect(settings.user, settings.password, wait=False, headers=headers)
    except stomp.exception.ConnectFailedException:
        raise _fail(settings, _diagnose(settings)) from None
    except stomp.exception.NotConnectedException:  # the link dropped between the TCP connect and CONNECT
        raise _fail(settings, "the connection was closed before logging in") from None
    except OSError as exc:
        raise _fail(settings, exc) from None
    deadline = time.monotonic() + settings.connect_timeout
    while not waiter.done.wait(min(0.25, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
        if STOP.is_set():  # SIGTERM while a slow or silent broker has not answered: do not wait it out
            with contextlib.suppress(Exception):
                conn.disconnect()
            raise Stopped(f"stopped while connecting to {settings.address}")
    ok = waiter.done.is_set()
    conn.remove_listener("dbsync-connect")
    if ok and waiter.error is None and conn.is_connected():
        _SERVERS[conn] = waiter.server
        return conn
    with contextlib.suppress(Exception):  # best effort close of a half-open connection
        conn.disconnect()
    reason = waiter.error or f"no CONNECTED frame within {settings.connect_timeout:g}s"
    raise _fail(settings, reason)
