"""Bounded id↔uuid caches with batched misses: one `IN (…)` query per table per batch, never per row."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any


class LruMap:
    """A dict that forgets the least recently used entries beyond `size` (constant memory on any backlog)."""

    def __init__(self, size: int = 200_000):
        self.size = size
        self.data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.size:
            self.data.popitem(last=False)

    def pop(self, key: Any) -> None:
        self.data.pop(key, None)


def chunks(values: list[Any], size: int = 1000) -> Iterable[list[Any]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


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
                cur.execute(
                    f"SELECT `{key}`, uuid FROM `{table}` WHERE `{key}` IN ({','.join(['%s'] * len(part))})",  # noqa: S608
                    part,
                )
                for local, uuid in cur.fetchall():
                    cache.put(local, uuid)
                    found[local] = uuid
        return found
