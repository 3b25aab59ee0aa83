"""Connection parameters for MySQL/MariaDB, shared by every stage and tool.

Passwords travel only inside this object: never on a command line, never in its repr.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pymysql
import pymysql.cursors


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
        return pymysql.connect(
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
