"""Failures only an operator can fix: retrying them forever (a wrong password, an untrusted certificate, a missing
database) hides the fault behind a restart loop, so supervision lets them end the process with one line."""

from __future__ import annotations

import pymysql
import stomp.exception

from dbsync_cli import exitcodes
from dbsync_cli.broker import BrokerError
from dbsync_cli.space import out_of_space

#: MySQL/MariaDB errors of a grant the role needs and lacks: database (1044), table (1142), column (1143), a
#: privilege such as REPLICATION SLAVE (1227)
DB_PRIVILEGE_CODES = frozenset({1044, 1142, 1143, 1227})
#: MySQL/MariaDB errors that no retry cures: the missing grants, login refused (1045, 1698), unknown database
#: (1049), TLS refused (2026)
DB_OPERATOR_CODES = DB_PRIVILEGE_CODES | {1045, 1049, 1698, 2026}
#: what open_connection says when the broker refuses our certificate check or our login (Artemis AMQ229031,
#: ActiveMQ Classic "User name [x] or password is invalid", RabbitMQ "Bad CONNECT" for a refused login or vhost)
BROKER_MARKERS = ("TLS certificate rejected", "Security Error", "AMQ229031", "certificate verify failed",
                  "password is invalid", "Bad CONNECT")


def describe(exc: BaseException) -> str:
    """An exception as one line for a log, never empty: stomp.py raises NotConnectedException() without a word
    when a connection drops under a send, which logged "publish failed ()" a hundred times in a soak."""
    text = " ".join(str(exc).split())
    if text:
        return text
    if isinstance(exc, stomp.exception.NotConnectedException):
        return "the connection to the broker dropped"
    return type(exc).__name__


def operator_fault(exc: BaseException) -> bool:
    if out_of_space(exc):  # the home is full: a restart writes to the same full disk
        return True
    if isinstance(exc, pymysql.err.OperationalError):
        code = exc.args[0] if exc.args else None
        return code in DB_OPERATOR_CODES or "CERTIFICATE_VERIFY_FAILED" in str(exc)
    if isinstance(exc, BrokerError):
        if getattr(exc, "permanent", False):  # broker_refusals: a missing permission, an unknown address
            return True
        return any(marker in str(exc) for marker in BROKER_MARKERS)
    return False


def database_exit_code(exc: pymysql.MySQLError) -> int:
    """15 for a missing grant (the fix is a GRANT), 3 for anything else a database refused us with."""
    code = exc.args[0] if exc.args else None
    return exitcodes.PRIVILEGES if code in DB_PRIVILEGE_CODES else exitcodes.UNREACHABLE
