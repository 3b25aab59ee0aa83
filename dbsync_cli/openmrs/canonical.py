"""The canonical row, the one form a site and central compare (`dbsync verify`), and its digest.

A row's canonical form is its wire `data` (local keys dropped, every reference as the referenced row's uuid, a
subclass through its parent, `org.openmrs.*` attribute values as uuids, users' secrets left out) with DATETIME and
TIMESTAMP in UTC, DATE and TIME as they are, and central's `|site` suffix taken off again. Both sides compute it
from their own database, so a digest that matches means the rows match, whatever time zone either side runs in.

Rows are grouped in buckets by the first characters of their uuid: a bucket's digest is the sum of its rows'
digests (order-free), so either side may read its rows in any order with constant memory, and a range of uuids
(`uuid LIKE 'ab%'`) is an index range on both sides.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from dbsync_cli import wire
from dbsync_cli.openmrs.model import SyncedTable

#: how many rows a bucket holds at most, on average (the prefix grows by a hex digit until it does)
BUCKET_ROWS = 500
MAX_PREFIX = 4
_MOD = 1 << 128
_DATETIME_TYPES = ("datetime", "timestamp")


def canonical_value(data_type: str, value: Any) -> Any:
    """A wire value in canonical form: a reference as its canonical uuid, DATETIME/TIMESTAMP in UTC, binary as
    base64."""
    target = wire.ref_target(value)
    if target is not None:
        return wire.canonical_uuid(target[1])
    if isinstance(value, dict) and wire.B64 in value:
        return value[wire.B64]
    if data_type in _DATETIME_TYPES and isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        return parsed.isoformat(sep=" ")
    return value


def canonical_row(table: SyncedTable, data: Mapping[str, Any],
                  columns: Iterable[str] | None = None) -> list[list[Any]]:
    """[[column, value], …] sorted by column: every data column of the table (or only `columns`, those both sides
    have), secrets never."""
    info = table.info.columns
    return [[c, canonical_value(info[c].data_type, data.get(c))]
            for c in sorted(table.data_columns if columns is None else columns)]


def row_digest(table: SyncedTable, uuid: str, data: Mapping[str, Any], columns: Iterable[str] | None = None,
               file_digest: str | None = None) -> str:
    """32 hex characters: the blake2b digest of the table, the uuid and the canonical row (every uuid in its
    canonical letter case: a site may spell one as central does not), and of a complex obs's file when each side
    has its folder (complex_obs.digest_for_verify): a file changed at central makes its obs differ."""
    row: list[Any] = [table.name, wire.canonical_uuid(uuid), canonical_row(table, data, columns)]
    if file_digest is not None:
        row.append(["$file", file_digest])
    body = orjson.dumps(row)
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def columns_digest(columns: Iterable[str]) -> str:
    """16 hex characters naming a set of column names: what a site sends so that central can tell, without the
    names, whether both sides digest the same columns (they differ after an upgrade done on one side first)."""
    return hashlib.blake2b(orjson.dumps(sorted(columns)), digest_size=8).hexdigest()


def prefix_length(rows: int) -> int:
    """The uuid prefix that makes buckets of about BUCKET_ROWS rows (0: one bucket for a small table)."""
    length = 0
    while length < MAX_PREFIX and rows > BUCKET_ROWS * 16**length:
        length += 1
    return length


def bucket_of(uuid: str, length: int) -> str:
    return uuid[:length].lower()


class Buckets:
    """Per-bucket row count and digest sum: what one side sends of a table when nothing differs. The sums one
    hex digit deeper are kept too (never sent unless a bucket differs), so a differing bucket is narrowed to its
    differing sixteenths before any row digest travels: with changes spread over every bucket, only the rows of
    ~1/16 of each cross the wire."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.sums: dict[str, list[int]] = {}
        self.subs: dict[str, list[int]] = {}
        self.rows = 0

    def add(self, uuid: str, digest: str) -> None:
        value = int(digest, 16)
        for sums, length in ((self.sums, self.length), (self.subs, self.length + 1)):
            entry = sums.setdefault(bucket_of(uuid, length), [0, 0])
            entry[0] += 1
            entry[1] = (entry[1] + value) % _MOD
        self.rows += 1

    @staticmethod
    def _wire(sums: Mapping[str, list[int]], prefixes: Iterable[str] | None = None) -> dict[str, list[Any]]:
        wanted = None if prefixes is None else tuple(prefixes)
        return {prefix: [n, f"{total:032x}"] for prefix, (n, total) in sorted(sums.items())
                if wanted is None or prefix.startswith(wanted)}

    def as_wire(self) -> dict[str, list[Any]]:
        return self._wire(self.sums)

    def sub_wire(self, prefixes: Iterable[str]) -> dict[str, list[Any]]:
        """The sums one digit deeper, under these buckets."""
        return self._wire(self.subs, prefixes) if prefixes else {}

    def differing(self, other: Mapping[str, Any]) -> list[str]:
        """Buckets whose count or digest differ from `other` (another side's ``as_wire()``), either side's."""
        return _differing(self.as_wire(), other)

    def differing_subs(self, prefixes: list[str], other: Mapping[str, Any]) -> list[str]:
        """Of these differing buckets, their sixteenths that differ from `other` (the other side's `sub_wire`)."""
        return _differing(self.sub_wire(prefixes), {p: v for p, v in other.items() if p.startswith(tuple(prefixes))})


def _differing(mine: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    return sorted(p for p in set(mine) | set(other) if mine.get(p) != (list(other[p]) if p in other else None))


def valid_buckets(value: Any, length: int) -> bool:
    """Whether a request's buckets have the shape ``{prefix: [count, 32 hex]}`` for this prefix length."""
    if not isinstance(value, dict) or len(value) > 16**length * 4:  # uuids are not all hex: room for more
        return False
    return all(isinstance(p, str) and len(p) <= length and isinstance(v, list) and len(v) == 2
               and isinstance(v[0], int) and isinstance(v[1], str) and len(v[1]) == 32 for p, v in value.items())


def valid_digests(value: Any, limit: int) -> bool:
    """``{uuid: digest or null}`` of at most `limit` rows."""
    if not isinstance(value, dict) or len(value) > limit:
        return False
    return all(isinstance(u, str) and wire.UUID_TEXT.match(u) and (d is None or isinstance(d, str) and len(d) == 32)
               for u, d in value.items())

