"""Local id → uuid at the site, cached and batched: one `IN (…)` query per table per batch, never per row."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dbsync_cli.lru import LruMap
from dbsync_cli.sql import chunks, placeholders, quote, sql


class IdToUuid:
    """Local integer key → uuid of a table's identity (the table itself, or a subclass's parent)."""

    def __init__(self, conn: Any, size: int = 200_000):
        self.conn = conn
        self.cache: dict[str, LruMap] = {}
        self.size = size

    def _table(self, table: str) -> LruMap:
        if table not in self.cache:
            self.cache[table] = LruMap(self.size)
        return self.cache[table]

    def resolve(self, table: str, key: str, ids: Iterable[Any]) -> dict[Any, str]:
        """uuids for these ids of `table` (names come from the schema model, never from input)."""
        cache = self._table(table)
        found: dict[Any, str] = {}
        missing = []
        for value in set(ids):
            if value is None:
                continue
            hit = cache.get(value)
            if hit is None:
                missing.append(value)
            else:
                found[value] = hit
        for part in chunks(sorted(missing, key=str)):
            with self.conn.cursor() as cur:
                cur.execute(sql("SELECT {key}, uuid FROM {table} WHERE {key} IN ({values})", key=quote(key),
                                table=quote(table), values=placeholders(len(part))), part)
                for local, uuid in cur.fetchall():
                    cache.put(local, uuid)
                    found[local] = uuid
        return found
