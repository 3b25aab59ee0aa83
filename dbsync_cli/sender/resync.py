"""Re-sync on request (as EIP's sync request): one row, or a patient and everything that hangs off them, sent
again as ordinary sync messages through enrich and publish.

`dbsync resync` runs it at the site; `dbsync sites resync SITE` at central sends the request over the broker to
``<destination>.request.<site>``, which the running `dbsync sender` reads (only central's broker user may send
there). A patient's rows are found from the schema model, not from a list: every synced row that references the
patient's person or patient row, then every row that references those (visits → encounters → obs → obs of a
group, orders → drug orders …), never through the audit columns and never onward from users or providers (their
rows belong to many patients). Messages carry ids of their own (`<site>:repair:<request>:<table>:<key>`) and are
applied behind live changes, like an initial load's rows; the receiver's rules hold as for every message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuidlib
from typing import Any

from dbsync_cli import complex_obs, control, wire
from dbsync_cli.broker import open_connection, settings_from_config
from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError, SchemaModel, SyncedTable
from dbsync_cli.openmrs.patients import LEAF_TABLES
from dbsync_cli.openmrs.rules import AUDIT_COLUMNS
from dbsync_cli.sender.binlog import current_position
from dbsync_cli.sender.checkpoint import RESYNC_REFUSED, CheckpointStore, record_dropped
from dbsync_cli.sender.enrich import Enricher
from dbsync_cli.sender.file_lane import queue_files
from dbsync_cli.sender.publish import Publisher
from dbsync_cli.sender.settings import enrich_settings, load_model, publish_settings
from dbsync_cli.sql import chunks, placeholders, quote, sql

log = logging.getLogger("dbsync.resync")

MAX_ROWS = 1_000_000


class ResyncError(Exception):
    """What to re-sync does not exist at the site, or the request is malformed (one line)."""


def _keys(conn: Any, statement: Any, values: list[Any]) -> set[Any]:
    found: set[Any] = set()
    for part in chunks(values):
        with conn.cursor() as cur:
            cur.execute(statement(len(part)), part)
            found.update(row[0] for row in cur.fetchall())
    return found


def row_key(conn: Any, table: SyncedTable, uuid: str) -> Any:
    """The local key of a synced row by its (identity) uuid."""
    ident = table.identity
    with conn.cursor() as cur:
        cur.execute(sql("SELECT t.{} FROM {} t JOIN {} p ON p.{} = t.{} WHERE p.{} = %s", quote(table.key),
                        quote(table.name), quote(ident.table), quote(ident.key), quote(table.key), quote("uuid"))
                    if table.is_subclass else
                    sql("SELECT {} FROM {} WHERE {} = %s", quote(table.key), quote(table.name), quote("uuid")), (uuid,))
        row = cur.fetchone()
    if row is None:
        raise ResyncError(_("{table} {uuid} does not exist at the site").format(table=table.name, uuid=uuid))
    return row[0]


def patient_rows(conn: Any, model: SchemaModel, uuid: str) -> dict[str, set[Any]]:
    """Keys per synced table of the patient with this person uuid and of every row that hangs off them."""
    person = model.table("person")
    found: dict[str, set[Any]] = {"person": {row_key(conn, person, uuid)}}
    frontier = dict(found)
    while frontier:
        new: dict[str, set[Any]] = {}
        for table in model.synced.values():
            sources: list[tuple[str, str]] = []  # (referencing column, referenced table)
            if table.is_subclass and table.identity.table in frontier:
                sources.append((table.key, table.identity.table))
            sources += [(c, r.table) for c, r in table.references.items()
                        if c not in AUDIT_COLUMNS and r.table in frontier and r.table not in LEAF_TABLES]
            for column, target in sources:
                def statement(n: int, column: str = column, table: SyncedTable = table) -> Any:
                    return sql("SELECT {} FROM {} WHERE {} IN ({})", quote(table.key), quote(table.name),
                               quote(column), placeholders(n))
                keys = _keys(conn, statement, sorted(frontier[target], key=str)) - found.get(table.name, set())
                if keys:
                    new.setdefault(table.name, set()).update(keys)
        for name, keys in new.items():
            found.setdefault(name, set()).update(keys)
        if sum(map(len, found.values())) > MAX_ROWS:
            raise ResyncError(_("patient {uuid}: over {most:,} rows hang off it; re-sync tables instead").format(
                uuid=uuid, most=MAX_ROWS))
        frontier = new
    conn.commit()
    return found


def resync(cfg: Config, *, patient: str | None = None, table: str | None = None, uuid: str | None = None,
           request: str | None = None) -> dict[str, int]:
    """Send the rows again; returns the messages the broker confirmed per table."""
    if (patient is None) == (table is None or uuid is None):
        raise ResyncError(_("resync needs --patient UUID, or --table T with --uuid UUID"))
    model = load_model(cfg)
    enricher = Enricher(enrich_settings(cfg), model)
    try:
        if patient is not None:
            rows = patient_rows(enricher.conn, model, patient)
        else:
            assert table is not None and uuid is not None
            synced = model.table(table)
            rows = {synced.name: {row_key(enricher.conn, synced, uuid)}}
        enricher.conn.commit()
        position = current_position(enricher.conn)
        source = {"snapshot": True, "file": position.file, "pos": position.pos, "row": -1,
                  "repair": f"resync-{request or uuidlib.uuid4().hex[:16]}"}
        events = [{"op": wire.READ, "db": model.database, "table": name, "before": None,
                   "after": {model.synced[name].key: key}, "source": source}
                  for name in model.synced if name in rows for key in sorted(rows[name], key=str)]
        publisher = Publisher(publish_settings(cfg, threading.Event()), lambda _position: None,
                              on_dropped=lambda found: record_dropped(cfg.home, found))
        sent: dict[str, int] = {}
        obs: list[dict[str, Any]] = []
        for message in publisher.run(enricher.run(events)):
            sent[message["table"]] = sent.get(message["table"], 0) + 1
            if message["table"] == complex_obs.TABLE and (message.get("data") or {}).get(complex_obs.COLUMN):
                obs.append(message)
        queue_files(cfg, obs, str(source["repair"])[:100])  # their complex obs files go again
    finally:
        enricher.close()
    log.info("resync %s: %d message(s) sent (%s)", patient or f"{table} {uuid}", sum(sent.values()),
             ", ".join(f"{t} {n}" for t, n in sent.items()) or "none")
    return sent


def serve_requests(cfg: Config, stop: threading.Event) -> None:
    """The running sender's part that takes central's re-sync requests, one at a time, each ACKed after its
    messages were confirmed (a sender killed meanwhile gets the request again: sending twice is harmless)."""
    listener = control.FrameQueue()
    conn = open_connection(settings_from_config(cfg), listener=listener, auto_decode=False)
    try:
        conn.subscribe(control.site_request_destination(cfg["broker.destination"], cfg["sender.id"]), id="dbsync-requests",
                       ack="client-individual", headers={"subscription-type": "ANYCAST"})
        while not stop.is_set():
            frame = listener.next(conn, 0.5, "requests")
            if frame is None or frame.cmd != "MESSAGE":
                continue
            _handle(cfg, frame)
            conn.ack(frame.headers["ack"])
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()


def _handle(cfg: Config, frame: Any) -> None:
    try:
        request = control.decode(frame)
        if not isinstance(request, dict) or request.get("kind") != "resync":
            raise ResyncError("not a resync request")
        log.info("resync requested by central at %s", request.get("at"))
        resync(cfg, patient=_text(request, "patient"), table=_text(request, "table"), uuid=_text(request, "uuid"),
               request=str(request.get("id") or "")[:40] or None)
    except (ResyncError, ValueError, SchemaError) as exc:  # it can never apply: counted for `dbsync status`
        log.error("resync request %s refused: %s", frame.headers.get("message-id", "?"), exc)
        store = CheckpointStore(cfg.home)
        try:
            refused = store.load(RESYNC_REFUSED) or {}
            store.save({"count": int(refused.get("count") or 0) + 1, "last": str(exc)[:300],
                        "at": round(time.time())}, name=RESYNC_REFUSED)
        finally:
            store.close()


def _text(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is None:
        return None
    malformed = not isinstance(value, str) or len(value) > 64 or (key != "table" and not wire.UUID_TEXT.match(value))
    if malformed:
        raise ResyncError(f"resync request: {key!r} is malformed")
    return value

