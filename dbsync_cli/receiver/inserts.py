"""Grouped INSERTs: consecutive new rows of one table written with one multi-row statement.

Apply holds a new row back while the next messages insert into the same table with the same columns, and writes
the group as soon as a statement could depend on a held row (a message for the same entity, or one referencing a
held row). The keys of written rows are read back by uuid — never inferred from auto-increment arithmetic, which
other writers and `auto_increment_increment` can break.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pymysql
import pymysql.cursors

from dbsync_cli.receiver.batch import Batch
from dbsync_cli.receiver.conflict import row_hash
from dbsync_cli.receiver.resolve import UuidToId
from dbsync_cli.schema import SyncedTable

GROUP_ROWS = 1000  # rows per multi-row INSERT at most
GROUP_BYTES = 1_000_000  # and bytes of values (max_allowed_packet is 16 MB by default)


@dataclass
class _Group:
    table: SyncedTable
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # parameters, one tuple per row
    size: int = 0
    uuids: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)  # subclass rows: the parent's key, known before the insert


class GroupedInserts:
    def __init__(self, ids: UuidToId) -> None:
        self.ids = ids
        self.group: _Group | None = None
        self.held: set[tuple[str, str]] = set()  # (identity table, uuid) of every held row

    def holds_any(self, entries: list[tuple[str, str]] | set[tuple[str, str]]) -> bool:
        return bool(self.held) and any(entry in self.held for entry in entries)

    def reset(self) -> None:
        self.group = None
        self.held.clear()

    def hold(self, cur: Any, batch: Batch, table: SyncedTable,
             row: dict[str, Any], uuid: str, site: str, key: Any) -> None:
        """Hold an INSERT back to write it with its neighbours of the same table in one statement."""
        columns = tuple(row)
        values = tuple(row.values())
        size = sum(len(v) if isinstance(v, str | bytes) else 8 for v in values)
        group = self.group
        if group is not None and (group.table.name != table.name or group.columns != columns
                                  or len(group.rows) >= GROUP_ROWS or group.size + size > GROUP_BYTES):
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
        """Write the held rows, then read them back whole in one query: their keys (never inferred from
        auto-increment arithmetic) and their hashes as stored. Any error fails the batch as usual."""
        group, self.group = self.group, None
        self.held.clear()
        if group is None or not group.rows:
            return
        table = group.table
        columns = ", ".join(f"`{c}`" for c in group.columns)
        # parameterised: PyMySQL's executemany sends these as multi-row INSERTs (escaping every value itself)
        cur.executemany(f"INSERT INTO `{table.name}` ({columns}) VALUES "  # noqa: S608
                        f"({', '.join(['%s'] * len(group.columns))})", group.rows)
        if cur.rowcount != len(group.rows):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(group.rows)} grouped rows inserted")
        ident = table.identity.table
        column = table.key if table.is_subclass else "uuid"
        wanted = group.keys if table.is_subclass else group.uuids
        found: dict[Any, dict[str, Any]] = {}
        with cur.connection.cursor(pymysql.cursors.DictCursor) as dcur:
            dcur.execute(f"SELECT * FROM `{table.name}` WHERE `{column}` IN "  # noqa: S608
                         f"({','.join(['%s'] * len(wanted))})", wanted)
            for row in dcur.fetchall():
                found[row[column]] = row
        for uuid, site, wanted_key in zip(group.uuids, group.sites, wanted, strict=True):
            row = found[wanted_key]
            key = row[table.key]
            if not table.is_subclass:
                self.ids.remember(ident, uuid, key)
            batch.touched[(table.name, key)] = (uuid, site)
            batch.hashed[(table.name, key)] = row_hash(row)
