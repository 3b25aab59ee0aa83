"""Grouped INSERTs: consecutive new rows of one table written with one multi-row statement.

Apply holds a new row back while the next messages insert into the same table with the same columns, and writes
the group as soon as a statement could depend on a held row (a message for the same entity, or one referencing a
held row). The group is one INSERT statement, so its auto-increment keys are consecutive when the server promises
it (InnoDB `innodb_autoinc_lock_mode` 0 or 1, `auto_increment_increment` 1, no Galera): the first key comes back
with the statement. Otherwise (MySQL 8's default mode 2 interleaves concurrent inserts) the keys are read back by
uuid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pymysql

from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.receiver.batch import Batch
from dbsync_cli.receiver.resolve import UuidToId
from dbsync_cli.sql import Sql, columns, join, placeholders, quote, sql

log = logging.getLogger("dbsync.apply")

GROUP_ROWS = 1000  # rows per multi-row INSERT at most
GROUP_BYTES = 1_000_000  # and bytes of the statement at most (also at most half the server's max_allowed_packet)


@dataclass
class _Group:
    table: SyncedTable
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # parameters, one tuple per row
    size: int = 0
    uuids: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)  # subclass rows: the parent's key, known before the insert


def consecutive_keys(cur: Any) -> bool:
    """Does one multi-row INSERT on this server get consecutive auto-increment keys?"""
    cur.execute("SHOW VARIABLES WHERE Variable_name IN "
                "('innodb_autoinc_lock_mode', 'auto_increment_increment', 'wsrep_on')")
    settings = {name.lower(): str(value) for name, value in cur.fetchall()}
    consecutive = (settings.get("innodb_autoinc_lock_mode") in ("0", "1")
                   and settings.get("auto_increment_increment") == "1"
                   and settings.get("wsrep_on", "OFF").upper() in ("OFF", "0"))
    log.debug("central %s: new keys are %s", settings, "taken from the statement" if consecutive else "read back")
    return consecutive


def _literal_bytes(value: Any) -> int:
    """An upper bound of the value's size in the statement: 4 bytes a character (utf8mb4), escapes, quotes."""
    if isinstance(value, str):
        return 4 * len(value) + 4
    if isinstance(value, bytes | bytearray):
        return 2 * len(value) + 12
    return 32


class GroupedInserts:
    def __init__(self, ids: UuidToId, consecutive: bool, max_bytes: int = GROUP_BYTES) -> None:
        self.ids = ids
        self.consecutive = consecutive
        self.max_bytes = max_bytes
        self.group: _Group | None = None
        self.held: set[tuple[str, str]] = set()  # (identity table, uuid) of every held row
        self.shapes: dict[tuple[str, tuple[str, ...]], tuple[Sql, Sql]] = {}  # INSERT prefix, one row's values

    def holds_any(self, entries: Any) -> bool:
        return bool(self.held) and any(entry in self.held for entry in entries)

    def reset(self) -> None:
        self.group = None
        self.held.clear()

    def hold(self, cur: Any, batch: Batch, table: SyncedTable, row: dict[str, Any], uuid: str, site: str,
             key: Any, size: int | None = None) -> None:
        """Hold an INSERT back to write it with its neighbours of the same table in one statement; `size` bounds
        the row's values in the statement (apply passes twice its message's JSON plus 16 bytes a column: every
        literal is at most twice its JSON text plus quotes, a reference a short integer)."""
        columns = tuple(row)
        values = tuple(row.values())
        if size is None:
            size = sum(_literal_bytes(v) for v in values)
        group = self.group
        if group is not None and (group.table.name != table.name or group.columns != columns
                                  or len(group.rows) >= GROUP_ROWS or group.size + size > self.max_bytes):
            self.flush(cur, batch)
            group = None
        if group is None:
            group = self.group = _Group(table, columns)
        group.rows.append(values)
        group.size += size
        group.uuids.append(uuid)
        group.sites.append(site)
        group.keys.append(key)
        self.held.add((table.identity.table, uuid))

    def flush(self, cur: Any, batch: Batch) -> None:
        """Write the held rows as one statement and learn their keys; any error fails the batch as usual."""
        group, self.group = self.group, None
        self.held.clear()
        if group is None or not group.rows:
            return
        table = group.table
        shape = (table.name, tuple(group.columns))
        if shape not in self.shapes:  # built once per table and column set: composing SQL text is not free
            self.shapes[shape] = (sql("INSERT INTO {} ({}) VALUES ", quote(table.name), columns(group.columns)),
                                  sql("({})", placeholders(len(group.columns))))
        prefix, one_row = self.shapes[shape]
        # parameterised: one statement (PyMySQL escapes every value), so that its keys are consecutive
        cur.execute(sql("{}{}", prefix, join([one_row] * len(group.rows))), [v for row in group.rows for v in row])
        if cur.rowcount != len(group.rows):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(group.rows)} grouped rows inserted")
        if table.is_subclass:
            keys = group.keys
        elif self.consecutive and cur.lastrowid:
            keys = list(range(cur.lastrowid, cur.lastrowid + len(group.rows)))
        else:
            cur.execute(sql("SELECT uuid, {} FROM {} WHERE uuid IN ({})", quote(table.key), quote(table.name),
                            placeholders(len(group.uuids))), group.uuids)
            found = dict(cur.fetchall())
            keys = [found[u] for u in group.uuids]
        ident = table.identity.table
        for uuid, site, key in zip(group.uuids, group.sites, keys, strict=True):
            if not table.is_subclass:
                self.ids.remember(ident, uuid, key)
            batch.touched[(table.name, key)] = (uuid, site)
