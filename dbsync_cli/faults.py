"""Failures only an operator can fix: retrying them forever (a wrong password, an untrusted certificate, a missing
database) hides the fault behind a restart loop, so supervision lets them end the process with one line."""

from __future__ import annotations

import pymysql

from dbsync_cli.broker import BrokerError

#: MySQL/MariaDB errors that no retry cures: access denied (1044, 1045, 1227, 1698), unknown database (1049),
#: TLS refused (2026)
DB_OPERATOR_CODES = frozenset({1044, 1045, 1049, 1227, 1698, 2026})
#: what open_connection says when the broker refuses our certificate check or our login
BROKER_MARKERS = ("TLS certificate rejected", "Security Error", "AMQ229031", "certificate verify failed")


def operator_fault(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.OperationalError):
        code = exc.args[0] if exc.args else None
        return code in DB_OPERATOR_CODES or "CERTIFICATE_VERIFY_FAILED" in str(exc)
    if isinstance(exc, BrokerError):
        return any(marker in str(exc) for marker in BROKER_MARKERS)
    return False
