"""The receiver's answering part: requests from sites (`control`), one at a time, each ACKed after its reply.

A request names its site; central believes it only from the broker user Artemis stamped on it (the site's
registered `broker_user`), as it does for data. A request it cannot answer gets a reply saying why, and is
counted per site in `receiver_skipped` (reason ``control-refused``): never silent, never retried for ever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import stomp

from dbsync_cli import complex_obs, control, wire
from dbsync_cli.broker import BrokerSettings, open_connection, server_of
from dbsync_cli.broker_kind import dialect
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.receiver import state
from dbsync_cli.receiver.verify import RequestError, VerifyHandler
from dbsync_cli.sql import sql
from dbsync_cli.timezones import parse_timezone

log = logging.getLogger("dbsync.receiver.control")


@dataclass
class ControlSettings:
    broker: BrokerSettings
    db: DbParams
    state_schema: str
    destination: str  # the sync destination; requests arrive on <destination>.control
    timezone: str = DEFAULTS.receiver.timezone
    complex_obs_dir: str | None = None  # verify compares complex obs files' digests too


def serve(settings: ControlSettings, model: SchemaModel, stop: threading.Event) -> None:
    """Answer requests until `stop`; raises on a lost broker or database (the supervisor reconnects)."""
    frames = control.FrameQueue()
    conn = open_connection(settings.broker, listener=frames, auto_decode=False)
    speak = dialect(server_of(conn))
    db = settings.db.connect()
    try:
        with db.cursor() as cur:
            cur.execute("SET time_zone = '+00:00'")
        handler = VerifyHandler(db, settings.state_schema, model, parse_timezone(settings.timezone),
                                complex_obs.folder(settings.complex_obs_dir))
        conn.subscribe(control.request_destination(settings.destination), id="dbsync-control",
                       ack="client-individual", headers={"subscription-type": "ANYCAST"})
        while not stop.is_set():
            frame = frames.next(conn, 0.5, "control")
            if frame is None or frame.cmd != "MESSAGE":
                continue
            speak.stamp(frame.headers)
            _answer(conn, db, settings, handler, frame)
            conn.ack(frame.headers["ack"])
    finally:
        with contextlib.suppress(Exception):
            conn.disconnect()
        with contextlib.suppress(Exception):
            db.close()


def _answer(conn: stomp.Connection12, db: Any, settings: ControlSettings, handler: VerifyHandler, frame: Any) -> None:
    correlation = frame.headers.get(control.CORRELATION_HEADER, "")
    site, reply = None, None
    try:
        request = control.decode(frame)
        if not isinstance(request, dict):
            raise RequestError("a control request must be a JSON object")
        site = _trusted_site(db, settings.state_schema, request, frame.headers)
        kind = str(request.get("kind") or "")
        log.info("control: %s from %s", kind, site)
        reply = handler.handle(kind, request, site)
    except (RequestError, ValueError) as exc:
        log.warning("control request %s: %s", correlation[:80] or "(no id)", exc)
        reply = {"ok": False, "error": str(exc)}
        _count_refused(db, settings.state_schema, site or str(frame.headers.get(wire.VALIDATED_USER_HEADER) or "?"))
    if site is None:
        return  # no trusted site: no reply queue to answer on
    control.send(conn, control.reply_destination(settings.destination, site), reply,
                 {control.CORRELATION_HEADER: correlation})


def _trusted_site(db: Any, schema: str, request: dict[str, Any], headers: dict[str, str]) -> str:
    claimed = request.get("site")
    sites = state.sites(db, schema)
    db.commit()
    site = sites.get(claimed) if isinstance(claimed, str) else None
    if site is None:
        raise RequestError(f"control request for unknown site {str(claimed)[:100]!r}")
    if site.disabled:
        raise RequestError(f"site {site.identifier} is disabled")
    user = headers.get(wire.VALIDATED_USER_HEADER) or ""
    if site.broker_user is not None and user != site.broker_user:
        raise RequestError(f"control request for site {site.identifier} sent by broker user {user[:100]!r}, not "
                           f"{site.broker_user!r}")
    return site.identifier


def _count_refused(db: Any, schema: str, site: str) -> None:
    with contextlib.suppress(Exception), db.cursor() as cur:
        cur.execute(sql("INSERT INTO {}.receiver_skipped (site, reason, table_name, count, last_date) "
                        "VALUES (%s, 'control-refused', '', 1, UTC_TIMESTAMP(3)) "
                        "ON DUPLICATE KEY UPDATE count = count + 1, last_date = VALUES(last_date)",
                        state.schema_name(schema)), (site[:100],))
        db.commit()
