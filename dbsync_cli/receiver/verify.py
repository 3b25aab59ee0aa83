"""Central's answers to `dbsync verify` requests, and the results it keeps (`verify_run`, `verify_table`,
`verify_difference`).

1. ``verify-buckets``: the site's per-bucket row counts and digest sums; central computes its own over the rows it
   holds of the site and answers with the buckets that differ.
2. ``verify-rows``: the site's row digests of those buckets (or of single uuids, when it checks again); central
   classifies every row — matched, missing at central, different, extra at central, still a placeholder, held
   by another owner — and says which differing rows were also edited at central (repair would park them).
3. ``verify-done``: the site's final figures, after re-checking rows that changed during the run (and, after a
   repair, once central applied it); stored here.

Both sides digest the same columns: the site's first ``verify-buckets`` names a digest of each table's column set,
and central answers with its own column names where they differ (an OpenMRS upgrade done at central first); the
site then compares only the columns both have, and says in each request which of central's columns to leave out
(``omit``). With ``queued``, a ``verify-rows`` answer also names the rows parked at central (a conflict, the retry
queue), which a repair waits for no longer; ``verify-delete`` deletes rows added at central that the site's
operator confirmed (verify_added.py).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.openmrs.canonical import MAX_PREFIX, columns_digest, valid_buckets, valid_digests
from dbsync_cli.receiver import state
from dbsync_cli.receiver.conflict import hash_sql
from dbsync_cli.receiver.verify_added import AddedRows
from dbsync_cli.receiver.verify_rows import CentralRows
from dbsync_cli.sql import chunks, join, placeholders, quote, sql
from dbsync_cli.wire import canonical_uuid

MAX_ROWS_PER_REQUEST = 100_000
MAX_DIFFERENCES_KEPT = 100_000
KINDS = ("missing", "different", "extra", "placeholders", "not_owned", "changing", "added_at_central")
COUNTS = ("site_rows", "central_rows", "matched", *KINDS, "edited_at_central")
#: the kinds that are differences: a row added at central is central's own, reported apart
DIFFERENCES = ("missing", "different", "extra", "placeholders")
_PREFIX = re.compile(rf"^[0-9a-z-]{{0,{MAX_PREFIX + 1}}}\Z")
_COUNT_COLUMNS = join(quote(c) for c in COUNTS)
_RUN = re.compile(r"^[A-Za-z0-9_.:-]{1,80}\Z")


class RequestError(Exception):
    """A request central will not answer (its shape is wrong): the one-line reason goes back to the site."""


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class VerifyHandler:
    """Answers one site's verify requests on a central connection (session time zone +00:00, as apply's)."""

    def __init__(self, conn: Any, schema: str, model: SchemaModel, tz: dt.tzinfo, files: Path | None = None) -> None:
        self.conn = conn
        self.files = files  # receiver.complex_obs_dir: obs digests cover their files
        self.schema = schema
        self.s = state.schema_name(schema)
        self.model = model
        self.tz = tz

    def handle(self, kind: str, request: dict[str, Any], site: str) -> dict[str, Any]:
        run = request.get("run")
        if not isinstance(run, str) or not _RUN.match(run) or not run.startswith(f"{site}:"):
            raise RequestError("verify: 'run' must be '<site>:<id>' of at most 80 characters")
        tables = request.get("tables")
        if not isinstance(tables, dict) or not all(isinstance(t, str) and t in self.model.synced for t in tables):
            unknown = [str(t)[:64] for t in (tables or {}) if t not in self.model.synced] if isinstance(
                tables, dict) else []
            raise RequestError(f"verify: 'tables' must name synced tables (unknown: {', '.join(unknown) or '-'})")
        rows = CentralRows(self.conn, self.s, self.model, self.tz, site, self.files)
        try:
            if kind == "verify-buckets":
                answer = self._buckets(rows, run, site, bool(request.get("repair")), tables)
                if isinstance(request.get("columns"), dict):
                    answer["columns"] = self._columns_differing(request["columns"])
                return answer
            if kind == "verify-rows":
                return {"ok": True, "tables": {t: self._rows(rows, self.model.synced[t], body, site)
                                               for t, body in tables.items()}}
            if kind == "verify-delete":
                return self._delete(site, tables)
            if kind == "verify-done":
                self._store(run, site, tables, str(request.get("state") or "finished"))
                return {"ok": True}
        finally:
            self.conn.commit()
        raise RequestError(f"unknown request kind {kind[:40]!r}")

    # ---- 1. buckets ------------------------------------------------------------------------------------------
    def _buckets(self, rows: CentralRows, run: str, site: str, repair: bool,
                 tables: dict[str, Any]) -> dict[str, Any]:
        with self.conn.cursor() as cur:
            cur.execute(sql("INSERT INTO {}.verify_run (run_id, site, state, repair, date_started) "
                            "VALUES (%s, %s, 'running', %s, %s) ON DUPLICATE KEY UPDATE state = 'running'", self.s),
                        (run, site, int(repair), now()))
        self.conn.commit()
        answer: dict[str, Any] = {}
        for name, body in tables.items():
            length = body.get("length") if isinstance(body, dict) else None
            if not isinstance(length, int) or not 0 <= length <= MAX_PREFIX or not valid_buckets(
                    body.get("buckets"), length):
                raise RequestError(f"verify: {name}: 'length' and 'buckets' malformed")
            table = self.model.synced[name]
            mine = rows.buckets(table, length, _compared(table, body))
            differing = mine.differing(body["buckets"])
            answer[name] = {"differing": differing, "central_rows": mine.rows, "sub": mine.sub_wire(differing),
                            "added": AddedRows(self.conn, self.s, self.model, site).find(table)}
        return {"ok": True, "tables": answer}

    def _columns_differing(self, digests: dict[str, Any]) -> dict[str, list[str]]:
        """Central's column names of each table whose column set is not the one the site digested."""
        return {name: sorted(self.model.synced[name].data_columns) for name, digest in digests.items()
                if name in self.model.synced and digest != columns_digest(self.model.synced[name].data_columns)}

    # ---- 2. rows ---------------------------------------------------------------------------------------------
    def _rows(self, rows: CentralRows, table: SyncedTable, body: Any, site: str) -> dict[str, Any]:
        if not isinstance(body, dict) or not valid_digests(body.get("rows"), MAX_ROWS_PER_REQUEST):
            raise RequestError(f"verify: {table.name}: 'rows' must be {{uuid: digest or null}}")
        prefixes = body.get("prefixes") or []
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and _PREFIX.match(p) for p in prefixes):
            raise RequestError(f"verify: {table.name}: 'prefixes' must be uuid prefixes")
        site_rows: dict[str, str | None] = {canonical_uuid(u): d for u, d in body["rows"].items()}
        owned = {u for p in prefixes for page in rows.owned(table.name, prefix=p) for u in page}
        listed = set(site_rows) - owned
        owners = rows.owners(table.name, listed)
        owned |= {u for u in listed if owners.get(u) == rows.site}
        central: dict[str, tuple[str, bool]] = {}
        compared = _compared(table, body)
        for part in chunks(sorted(owned | listed)):
            central.update(rows.digests(table, part, compared))
        kinds: dict[str, str] = {}
        digests: dict[str, str | None] = {}
        for uuid in sorted(owned | set(site_rows)):
            mine = site_rows.get(uuid)
            theirs = central.get(uuid)
            kind = _kind(mine, theirs, uuid in owned)
            if kind is None:
                continue
            kinds[uuid] = kind
            digests[uuid] = None if theirs is None else theirs[0]
        different = [u for u, k in kinds.items() if k == "different"]
        answer = {"kinds": {u: k for u, k in kinds.items() if k != "matched"}, "central": {
            u: d for u, d in digests.items() if kinds[u] != "matched"},
            "edited_at_central": self._edited(table, different)}
        if body.get("queued"):
            answer["queued"] = self._queued(site, table, [u for u, k in kinds.items() if k != "matched"])
        return answer

    def _queued(self, site: str, table: SyncedTable, uuids: list[str]) -> list[str]:
        """Of these rows, those a message of this site waits for at central: an unresolved conflict or a retry
        queue entry (an operator's turn, not the pipeline's)."""
        found: set[str] = set()
        for part in chunks(sorted(uuids)):
            with self.conn.cursor() as cur:
                for queue, open_only in (("receiver_conflict_queue", sql(" AND resolved = 0")),
                                         ("receiver_retry_queue", sql(""))):
                    cur.execute(sql("SELECT entity_uuid FROM {}.{} WHERE site = %s AND table_name = %s AND "
                                    "entity_uuid IN ({}){}", self.s, quote(queue), placeholders(len(part)), open_only),
                                [site, table.name, *part])
                    found.update(canonical_uuid(row[0]) for row in cur.fetchall() if row[0])
        return sorted(found)

    def _delete(self, site: str, tables: dict[str, Any]) -> dict[str, Any]:
        wanted: dict[str, list[str]] = {}
        for name, body in tables.items():
            uuids = body.get("uuids") if isinstance(body, dict) else None
            if not isinstance(uuids, list) or len(uuids) > MAX_ROWS_PER_REQUEST or not all(
                    isinstance(u, str) and len(u) <= 38 for u in uuids):
                raise RequestError(f"verify: {name}: 'uuids' must be a list of uuids")
            wanted[name] = [canonical_uuid(u) for u in uuids]
        deleted, kept = AddedRows(self.conn, self.s, self.model, site).delete(wanted)
        return {"ok": True, "deleted": deleted, "kept": kept}

    def _edited(self, table: SyncedTable, uuids: list[str]) -> list[str]:
        """Of these rows, those whose row at central changed since dbsync last wrote it (a repair parks them)."""
        edited: list[str] = []
        ident = table.identity
        for part in chunks(uuids):
            with self.conn.cursor() as cur:
                if table.is_subclass:
                    cur.execute(sql("SELECT p.{u}, t.h FROM (SELECT {k} AS k, {h} AS h FROM {t}) t JOIN {p} p "
                                    "ON p.{pk} = t.k WHERE p.{u} IN ({})", placeholders(len(part)), u=quote("uuid"),
                                    k=quote(table.key), h=hash_sql(table), t=quote(table.name),
                                    p=quote(ident.table), pk=quote(ident.key)), part)
                else:
                    cur.execute(sql("SELECT {}, {} FROM {} WHERE {} IN ({})", quote("uuid"), hash_sql(table),
                                    quote(table.name), quote("uuid"), placeholders(len(part))), part)
                current = {canonical_uuid(u): h for u, h in cur.fetchall()}
                cur.execute(sql("SELECT entity_uuid, hash FROM {}.entity_hash WHERE table_name = %s AND "
                                "entity_uuid IN ({})", self.s, placeholders(len(part))), [table.name, *part])
                stored = {canonical_uuid(u): h for u, h in cur.fetchall()}
            edited += [u for u in part if u in current and stored.get(u) != current[u]]
        return edited

    # ---- 3. the result ---------------------------------------------------------------------------------------
    def _store(self, run: str, site: str, tables: dict[str, Any], run_state: str) -> None:
        if run_state not in ("finished", "repaired", "failed"):
            raise RequestError("verify: 'state' must be finished, repaired or failed")
        with self.conn.cursor() as cur:
            cur.execute(sql("DELETE FROM {}.verify_table WHERE run_id = %s", self.s), (run,))
            cur.execute(sql("DELETE FROM {}.verify_difference WHERE run_id = %s", self.s), (run,))
            kept = 0
            for name, body in tables.items():
                counts = body.get("counts") if isinstance(body, dict) else None
                if not isinstance(counts, dict) or not all(isinstance(counts.get(c, 0), int) for c in COUNTS):
                    raise RequestError(f"verify: {name}: 'counts' malformed")
                columns = body.get("columns") or {}
                one_side = [_column_list(columns, side) for side in ("site_only", "central_only")]
                cur.execute(sql("INSERT INTO {}.verify_table (run_id, table_name, {}, site_only_columns, "
                                "central_only_columns) VALUES (%s, %s, {}, %s, %s)", self.s,
                                _COUNT_COLUMNS, placeholders(len(COUNTS))),
                            [run, name, *(max(0, counts.get(c, 0)) for c in COUNTS), *one_side])
                differences = body.get("differences") or {}
                if not isinstance(differences, dict):
                    raise RequestError(f"verify: {name}: 'differences' malformed")
                values = [(run, name, u, k) for u, k in differences.items()
                          if isinstance(u, str) and len(u) <= 38 and k in (*KINDS, "edited_at_central")]
                values = values[: max(0, MAX_DIFFERENCES_KEPT - kept)]
                kept += len(values)
                for part in chunks(values, 500):
                    cur.execute(sql("INSERT INTO {}.verify_difference (run_id, table_name, entity_uuid, kind) "
                                    "VALUES {}", self.s, join([sql("(%s, %s, %s, %s)")] * len(part))),
                                [v for row in part for v in row])
            cur.execute(sql("INSERT INTO {}.verify_run (run_id, site, state, date_started, date_finished) "
                            "VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE state = VALUES(state), "
                            "date_finished = VALUES(date_finished)", self.s), (run, site, run_state, now(), now()))


def _compared(table: SyncedTable, body: Any) -> list[str] | None:
    """The columns a request compares: all of central's but those the site says it lacks (``omit``)."""
    omit = body.get("omit") if isinstance(body, dict) else None
    if not omit:
        return None
    if not isinstance(omit, list) or not all(isinstance(c, str) and c in table.data_columns for c in omit):
        raise RequestError(f"verify: {table.name}: 'omit' must name columns central has")
    return [c for c in table.data_columns if c not in omit]


def _column_list(columns: Any, side: str) -> str | None:
    """A side's columns as stored (JSON text), or NULL when it has none the other lacks."""
    names = columns.get(side) if isinstance(columns, dict) else None
    if not names:
        return None
    if not isinstance(names, list) or not all(isinstance(c, str) and len(c) <= 64 for c in names):
        raise RequestError(f"verify: 'columns.{side}' must be column names")
    return json.dumps(sorted(names)[:200])


def _kind(mine: str | None, theirs: tuple[str, bool] | None, owned: bool) -> str | None:
    if theirs is None:
        return None if mine is None else "missing"
    digest, placeholder = theirs
    if mine is None:
        return "extra" if owned else None
    if placeholder:
        return "placeholders"
    if not owned:
        return "not_owned"
    return "matched" if digest == mine else "different"


def latest_runs(conn: Any, schema: str, site: str | None = None) -> list[dict[str, Any]]:
    """The latest verify run of each site (or of one), with its figures per table and in total."""
    s = state.schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT r.run_id, r.site, r.state, r.repair, r.date_started, r.date_finished "
                        "FROM {s}.verify_run r JOIN (SELECT site, MAX(date_started) AS started FROM {s}.verify_run "
                        "GROUP BY site) l ON l.site = r.site AND l.started = r.date_started{w} ORDER BY r.site", s=s,
                        w=sql(" WHERE r.site = %s") if site else sql("")),
                    [site] if site else [])
        runs = [dict(zip(("run", "site", "state", "repair", "started", "finished"), row, strict=True))
                for row in cur.fetchall()]
        for run in runs:
            cur.execute(sql("SELECT table_name, {}, site_only_columns, central_only_columns FROM {}.verify_table "
                            "WHERE run_id = %s ORDER BY table_name", _COUNT_COLUMNS, s), (run["run"],))
            run["tables"] = {row[0]: {**dict(zip(COUNTS, (int(v) for v in row[1:-2]), strict=True)),
                                      "columns_only_at_site": json.loads(row[-2] or "[]"),
                                      "columns_only_at_central": json.loads(row[-1] or "[]")}
                             for row in cur.fetchall()}
            run["totals"] = {c: sum(t[c] for t in run["tables"].values()) for c in COUNTS}
            run["differences"] = sum(run["totals"][k] for k in DIFFERENCES)
            run["repair"] = bool(run["repair"])
    conn.commit()
    return runs


def differences(conn: Any, schema: str, run: str, limit: int = 1000) -> list[dict[str, str]]:
    s = state.schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT table_name, entity_uuid, kind FROM {}.verify_difference WHERE run_id = %s "
                        "ORDER BY table_name, entity_uuid LIMIT %s", s), (run, limit))
        found = [{"table": t, "uuid": u, "kind": k} for t, u, k in cur.fetchall()]
    conn.commit()
    return found

