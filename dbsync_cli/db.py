"""Connection parameters for MySQL/MariaDB, shared by every stage and tool.

Passwords travel only inside this object: never on a command line, never in its repr.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass, field, replace
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors


@functools.cache
def _preferred_tls() -> ssl.SSLContext:
    """The context of PyMySQL's "preferred" TLS (no ssl_ca: encrypted when the server offers TLS, not verified),
    made once per process. PyMySQL makes a new one per connection and loads the system's CA store into it first,
    which it then does not use: `DbParams.connect()` cost 31 ms of CPU a connection with PyMySQL's contexts and
    0.5 ms with this one (30 connections to a server without TLS, on a 2-core test machine)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Connection(pymysql.connections.Connection):
    """PyMySQL's connection with the preferred-TLS context shared (`_preferred_tls`); everything else as PyMySQL's
    (an ssl_ca still gets a context of its own that verifies the server's certificate)."""

    def _create_ssl_ctx(self, sslp: Any) -> Any:
        if isinstance(sslp, dict) and not sslp:  # PyMySQL's own call when no TLS option was given
            return _preferred_tls()
        return super()._create_ssl_ctx(sslp)  # type: ignore[misc]  # private in the stubs


@dataclass(frozen=True)
class DbParams:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = field(default="", repr=False)
    database: str | None = None
    unix_socket: str | None = None
    ssl_ca: str | None = None  # CA file: TLS on, the server's certificate chain verified (like mysql --ssl-ca)
    ssl_verify_identity: bool = True  # with ssl_ca: the certificate must name the host too

    def with_database(self, database: str | None) -> DbParams:
        return replace(self, database=database)

    def connect(self, *, autocommit: bool = True, dict_rows: bool = False, **kwargs) -> pymysql.connections.Connection:
        """Open a connection in utf8mb4, UTC session time zone off (values are read as stored)."""
        return Connection(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            unix_socket=self.unix_socket,
            charset="utf8mb4",
            autocommit=autocommit,
            cursorclass=pymysql.cursors.DictCursor if dict_rows else pymysql.cursors.Cursor,
            **self.ssl_options(),
            **kwargs,
        )

    def ssl_options(self) -> dict[str, Any]:
        """PyMySQL's TLS arguments (also what the binlog reader passes on): none without a CA file."""
        if not self.ssl_ca:
            return {}
        return {"ssl_ca": self.ssl_ca, "ssl_verify_cert": True, "ssl_verify_identity": self.ssl_verify_identity}

    def describe(self) -> str:
        """Where this points, for messages: never includes the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.database or ''}" + (" (TLS)" if self.ssl_ca else "")
