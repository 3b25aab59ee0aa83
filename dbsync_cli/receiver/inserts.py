"""Grouped INSERTs: the batch's new rows written a few multi-row statements at a time, keys learnt afterwards.

Apply holds every new row back and writes the held rows when a statement needs one of them (a message for the
same entity) or the batch ends. A held row's reference to another held row is a `DeferredKey`, resolved when
the rows are written: they go in waves, each wave the held rows whose references are all known, one INSERT per
table and column set. An obs-heavy batch (person → patient → encounter → obs → obs of a group) is then a handful
of statements instead of one for every change of table or reference chain. Rows of one wave never reference each
other, and the transaction commits all of them at once, so the order inside it is invisible outside.

Keys: one statement's auto-increment keys are consecutive when the server promises it (InnoDB
`innodb_autoinc_lock_mode` 0 or 1, `auto_increment_increment` 1, no Galera): the first key comes back with the
statement. Otherwise (MySQL 8's default mode 2 interleaves concurrent inserts) the keys are read back by uuid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pymysql

from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.receiver.batch import Batch
from dbsync_cli.receiver.resolve import DeferredKey, HeldRow, UuidToId
from dbsync_cli.sql import Sql, columns, join, placeholders, quote, sql

log = logging.getLogger("dbsync.apply")

GROUP_ROWS = 1000  # rows per multi-row INSERT at most
GROUP_BYTES = 1_000_000  # and bytes of the statement at most (also at most half the server's max_allowed_packet)


GROUP_HELD = 5000  # rows held at most before they are written (apply's batches are smaller)


@dataclass
class _Held:
    table: SyncedTable
    columns: tuple[str, ...]
    values: tuple[Any, ...]  # parameters; DeferredKey where the row references a held row
    size: int
    uuid: str
    site: str
    key: Any  # subclass rows: the parent's key (a DeferredKey when the parent is held too)
    waits_for: tuple[DeferredKey, ...]


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
        self.entries: list[_Held] = []
        self.rows: dict[tuple[str, str], DeferredKey] = {}  # (table, uuid) of every held row → its key to be
        self.held: set[tuple[str, str]] = set()  # (identity table, uuid) of every held row
        self.shapes: dict[tuple[str, tuple[str, ...]], tuple[Sql, Sql]] = {}  # INSERT prefix, one row's values
        self.statements = 0  # INSERT statements written (the benchmark's profile reads it)

    def holds_any(self, entries: Any) -> bool:
        return bool(self.held) and any(entry in self.held for entry in entries)

    def holds_row(self, table: str, uuid: str) -> bool:
        return (table, uuid) in self.rows

    def deferred(self, table: str, identity: str, uuid: str) -> DeferredKey | None:
        """The key a reference to a held row will have (None: the row is not held). A reference to a subclass
        row whose parent alone is held needs the parent written first: HeldRow."""
        key = self.rows.get((table, uuid))
        if key is None and (identity, uuid) in self.held:
            raise HeldRow(f"{table} {uuid}")
        return key

    def reset(self) -> None:
        self.entries.clear()
        self.rows.clear()
        self.held.clear()

    def hold(self, cur: Any, batch: Batch, table: SyncedTable, row: dict[str, Any], uuid: str, site: str,
             key: Any, size: int | None = None) -> None:
        """Hold an INSERT back to write it with others of its table; `size` bounds the row's values in the
        statement (apply passes twice its message's JSON plus 16 bytes a column: every literal is at most twice
        its JSON text plus quotes, a reference a short integer)."""
        values = tuple(row.values())
        if size is None:
            size = sum(_literal_bytes(v) for v in values)
        waits_for = tuple(v for v in (*values, key) if isinstance(v, DeferredKey))
        self.entries.append(_Held(table, tuple(row), values, size, uuid, site, key, waits_for))
        self.rows[(table.name, uuid)] = DeferredKey(table.name, uuid)
        self.held.add((table.identity.table, uuid))
        if len(self.entries) >= GROUP_HELD:
            self.flush(cur, batch)

    def flush(self, cur: Any, batch: Batch) -> None:
        """Write the held rows, wave by wave, and learn their keys; any error fails the batch as usual."""
        pending, self.entries = self.entries, []
        self.rows.clear()
        self.held.clear()
        known: dict[DeferredKey, Any] = {}
        while pending:
            ready = [e for e in pending if all(d in known for d in e.waits_for)]
            if not ready:  # cannot happen: a row only references rows held before it
                raise RuntimeError("held rows reference each other in a cycle")
            pending = [e for e in pending if not all(d in known for d in e.waits_for)]
            groups: dict[tuple[str, tuple[str, ...]], list[_Held]] = {}
            for entry in ready:
                groups.setdefault((entry.table.name, entry.columns), []).append(entry)
            for group in groups.values():
                part: list[_Held] = []
                size = 0
                for entry in group:
                    if part and (len(part) >= GROUP_ROWS or size + entry.size > self.max_bytes):
                        self._write(cur, batch, part, known)
                        part, size = [], 0
                    part.append(entry)
                    size += entry.size
                self._write(cur, batch, part, known)

    def _write(self, cur: Any, batch: Batch, part: list[_Held], known: dict[DeferredKey, Any]) -> None:
        """One multi-row INSERT of rows of one table and column set; their keys go to `known` and the uuid cache."""
        table, cols = part[0].table, part[0].columns
        shape = (table.name, cols)
        if shape not in self.shapes:  # built once per table and column set: composing SQL text is not free
            self.shapes[shape] = (sql("INSERT INTO {} ({}) VALUES ", quote(table.name), columns(cols)),
                                  sql("({})", placeholders(len(cols))))
        prefix, one_row = self.shapes[shape]
        params = [known[v] if isinstance(v, DeferredKey) else v for entry in part for v in entry.values]
        # parameterised: one statement (PyMySQL escapes every value), so that its keys are consecutive
        cur.execute(sql("{}{}", prefix, join([one_row] * len(part))), params)
        self.statements += 1
        if cur.rowcount != len(part):
            raise pymysql.err.DataError(f"{table.name}: {cur.rowcount} of {len(part)} grouped rows inserted")
        if table.is_subclass:
            keys = [known[e.key] if isinstance(e.key, DeferredKey) else e.key for e in part]
        elif self.consecutive and cur.lastrowid:
            keys = list(range(cur.lastrowid, cur.lastrowid + len(part)))
        else:
            uuids = [e.uuid for e in part]
            cur.execute(sql("SELECT uuid, {} FROM {} WHERE uuid IN ({})", quote(table.key), quote(table.name),
                            placeholders(len(uuids))), uuids)
            found = dict(cur.fetchall())
            keys = [found[u] for u in uuids]
        ident = table.identity.table
        for entry, key in zip(part, keys, strict=True):
            if table.is_subclass:
                self.ids.subclass_rows.put((table.name, key), True)
            else:
                self.ids.remember(ident, entry.uuid, key)
            known[DeferredKey(table.name, entry.uuid)] = key
            batch.touched[(table.name, key)] = (entry.uuid, entry.site)
