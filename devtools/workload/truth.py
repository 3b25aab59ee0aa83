"""Ground truth of a workload run, and the comparison of a database against it.

Rows are known by uuid and foreign keys by the referenced row's uuid, so the same truth can be checked at the site and
at central, where local integer ids differ. Tables without a uuid (patient, drug_order, test_order) are keyed by their
parent's uuid (person, orders).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pymysql

from dbsync_cli.db import DbParams

Row = dict[str, Any]
_IDENT = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SUFFIXED = {("users", "username"), ("users", "system_id"), ("provider", "identifier")}
"""Columns central suffixes with `|<site>` so that sites cannot collide."""


def ref(table: str, uuid: str | None) -> dict[str, str] | None:
    """The canonical form of a foreign key: the target table and the target row's uuid."""
    return None if uuid is None else {"$ref": table, "uuid": uuid}


@dataclass
class GroundTruth:
    """What one site's database holds after a workload run: final values of the columns the generator set."""

    site: str
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, Row]] = field(default_factory=dict)
    deleted: dict[str, dict[str, None]] = field(default_factory=dict)
    baseline: dict[str, list[str]] = field(default_factory=dict)
    """identities present before the run (ignored by `compare(strict=True)`)."""
    stats: dict[str, Any] = field(default_factory=dict, compare=False)
    """timings and counts of the run; not part of the JSON (it would break repeatability)."""

    def put(self, table: str, uuid: str, row: Row) -> None:
        self.tables.setdefault(table, {})[uuid] = row

    def update(self, table: str, uuid: str, changes: Row) -> None:
        self.tables[table][uuid].update(changes)

    def delete(self, table: str, uuid: str) -> None:
        del self.tables[table][uuid]
        self.deleted.setdefault(table, {})[uuid] = None

    def counts(self) -> dict[str, int]:
        return {t: len(rows) for t, rows in self.tables.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "site": self.site, "seed": self.seed, "params": self.params, "tables": self.tables,
                "deleted": {t: list(u) for t, u in self.deleted.items()}, "baseline": self.baseline}

    def to_json(self, path: str | Path) -> None:
        Path(path).write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroundTruth:
        if d.get("version") != 1:
            raise ValueError(f"unsupported ground truth version {d.get('version')!r}")
        return cls(site=d["site"], seed=d["seed"], params=d["params"], tables=d["tables"],
                   deleted={t: dict.fromkeys(u) for t, u in d["deleted"].items()}, baseline=d["baseline"])

    @classmethod
    def from_json(cls, path: str | Path) -> GroundTruth:
        return cls.from_dict(orjson.loads(Path(path).read_bytes()))


def canonical(value: Any) -> Any:
    """A DB value in the truth's JSON form (datetimes and dates as strings, decimals as strings)."""
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        s = int(value.total_seconds())
        return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _q(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"unsafe identifier {name!r}")
    return f"`{name}`"


class SchemaInfo:
    """Primary keys, uuid columns and parent links read from information_schema, plus cached id→uuid maps."""

    def __init__(self, conn: pymysql.connections.Connection, database: str) -> None:
        self.conn = conn
        with conn.cursor() as cur:
            cur.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema=%s", (database,))
            self.columns: dict[str, set[str]] = {}
            for t, c in cur.fetchall():
                self.columns.setdefault(t, set()).add(c)
            cur.execute("SELECT table_name, column_name FROM information_schema.key_column_usage "
                        "WHERE table_schema=%s AND constraint_name='PRIMARY'", (database,))
            self.pk = dict(cur.fetchall())
            cur.execute("SELECT table_name, column_name, referenced_table_name FROM information_schema.key_column_usage "
                        "WHERE table_schema=%s AND referenced_table_name IS NOT NULL", (database,))
            self.parent = {t: rt for t, c, rt in cur.fetchall() if self.pk.get(t) == c}
        self._maps: dict[str, dict[int, str]] = {}

    def has_uuid(self, table: str) -> bool:
        return "uuid" in self.columns.get(table, ())

    def id_to_uuid(self, table: str) -> dict[int, str]:
        """Local id → identity uuid (through the parent for tables without a uuid)."""
        if table not in self._maps:
            pk = _q(self.pk[table])
            with self.conn.cursor() as cur:
                if self.has_uuid(table):
                    cur.execute(f"SELECT {pk}, uuid FROM {_q(table)}")
                    self._maps[table] = dict(cur.fetchall())
                else:
                    parent = self.id_to_uuid(self.parent[table])
                    cur.execute(f"SELECT {pk} FROM {_q(table)}")
                    self._maps[table] = {i: parent[i] for (i,) in cur.fetchall() if i in parent}
        return self._maps[table]


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        return expected is not None and actual is not None and math.isclose(float(expected), float(actual), rel_tol=1e-12)
    return expected == actual


def compare(db: DbParams, truth: GroundTruth, *, username_suffix: str | None = None, strict: bool = False,
            tables: list[str] | None = None, limit: int | None = 1000) -> list[str]:
    """Differences between `db` and `truth`: missing rows, column mismatches, deleted rows still present, and
    (with strict) rows the truth does not know. `username_suffix` (e.g. "|site1") is expected on the columns central
    suffixes. One full read per table plus one id→uuid read per referenced table."""
    diffs: list[str] = []
    conn = db.connect()
    try:
        schema = SchemaInfo(conn, db.database or "")
        for table in tables or list(truth.tables):
            expected = truth.tables.get(table, {})
            if table not in schema.pk:
                diffs.append(f"{table}: table missing")
                continue
            diffs.extend(_compare_table(conn, schema, table, expected, truth, username_suffix, strict))
            if limit is not None and len(diffs) > limit:
                break
    finally:
        conn.close()
    if limit is not None and len(diffs) > limit:
        return [*diffs[:limit], f"... and {len(diffs) - limit} more differences"]
    return diffs


def _compare_table(conn: pymysql.connections.Connection, schema: SchemaInfo, table: str, expected: dict[str, Row],
                   truth: GroundTruth, suffix: str | None, strict: bool) -> list[str]:
    diffs: list[str] = []
    cols = sorted({c for row in expected.values() for c in row})
    unknown = [c for c in cols if c not in schema.columns[table]]
    if unknown:
        return [f"{table}: columns missing in database: {', '.join(unknown)}"]
    pk = schema.pk[table]
    ident = "uuid" if schema.has_uuid(table) else pk
    select = ", ".join(_q(c) for c in [ident, *cols])
    identity = None if schema.has_uuid(table) else schema.id_to_uuid(table)
    deleted = truth.deleted.get(table, {})
    known = set(truth.baseline.get(table, ()))
    seen: set[str | None] = set()
    with conn.cursor() as cur:
        cur.execute(f"SELECT {select} FROM {_q(table)} ORDER BY {_q(pk)}")
        rows = cur.fetchall()
    for raw in rows:
        uuid = raw[0] if identity is None else identity.get(raw[0])
        if uuid in seen:
            diffs.append(f"{table} {uuid}: duplicate identity")
            continue
        seen.add(uuid)
        exp = expected.get(uuid) if uuid is not None else None
        if exp is None:
            if uuid in deleted:
                diffs.append(f"{table} {uuid}: deleted at the site but still present")
            elif strict and uuid not in known:
                diffs.append(f"{table} {uuid}: extra row")
            continue
        for col, actual in zip(cols, raw[1:], strict=True):
            if col not in exp:
                continue
            want = exp[col]
            got = canonical(actual)
            if isinstance(want, dict) and "$ref" in want:
                if got is not None:
                    got = ref(want["$ref"], schema.id_to_uuid(want["$ref"]).get(int(got), f"<unknown id {got}>"))
            elif suffix and want is not None and (table, col) in SUFFIXED:
                want = f"{want}{suffix}"
            if not _same(want, got):
                diffs.append(f"{table} {uuid}: {col} expected {want!r}, found {got!r}")
    diffs.extend(f"{table} {u}: missing" for u in expected if u not in seen)
    return diffs
