"""When a grouped INSERT's keys may be taken from the statement, and how big a group may grow."""

from __future__ import annotations

from typing import Any

import pytest

from dbsync_cli.receiver.inserts import _literal_bytes, consecutive_keys


class _Variables:
    """A cursor answering SHOW VARIABLES."""

    def __init__(self, **values: str) -> None:
        self.values = values

    def execute(self, sql: str, args: Any = None) -> None:
        assert sql.startswith("SHOW VARIABLES")

    def fetchall(self) -> list[tuple[str, str]]:
        return list(self.values.items())


@pytest.mark.parametrize(("variables", "expected"), [
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "1", "wsrep_on": "OFF"}, True),  # MariaDB
    ({"innodb_autoinc_lock_mode": "0", "auto_increment_increment": "1"}, True),  # MySQL 5.7, traditional mode
    ({"innodb_autoinc_lock_mode": "2", "auto_increment_increment": "1"}, False),  # MySQL 8 default: interleaved
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "2", "wsrep_on": "OFF"}, False),
    ({"innodb_autoinc_lock_mode": "1", "auto_increment_increment": "1", "wsrep_on": "ON"}, False),  # Galera
    ({}, False),
])
def test_keys_come_from_the_statement_only_when_the_server_makes_them_consecutive(variables, expected) -> None:
    assert consecutive_keys(_Variables(**variables)) is expected


def test_a_value_is_counted_at_its_largest_possible_size_in_the_statement() -> None:
    assert _literal_bytes("é" * 10) >= len(("é" * 10).encode()) + 2
    assert _literal_bytes(b"\x00" * 10) >= 2 * 10 + 2
    assert _literal_bytes(12345678901234567890) >= 20
