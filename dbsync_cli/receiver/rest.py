"""OpenMRS REST calls after changes applied behind OpenMRS' back: evict the DB cache, update the search index.

Apply writes a row into ``<state>.rest_call`` in the same transaction as a change to person, patient,
person_name, patient_identifier or person_attribute (see :func:`enqueue`). :class:`RestWorker` runs in its own
thread with its own connection (it never blocks apply), polls the table in id order and for each entity POSTs
``/ws/rest/v1/cleardbcache`` then ``/ws/rest/v1/searchindexupdate`` with ``{"resource", "subResource", "uuid"}``
(both answer 204 No Content in openmrs-module-webservices.rest 2.x). A success deletes the row (and every other
pending row for the same entity it covers); a failure counts an attempt, keeps a one-line error without the
password, and the row is retried after an exponential backoff.

Without ``openmrs.url`` nothing is enqueued (:func:`rest_enabled`) and the worker does nothing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.cookiejar
import json
import logging
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pymysql

from dbsync_cli.config import Config
from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.openmrs.rules import REST_BASE_PATH, REST_ENDPOINTS, REST_RESOURCES
from dbsync_cli.receiver.state import schema_name
from dbsync_cli.sql import placeholders, sql

log = logging.getLogger("dbsync.rest")

#: what OpenMRS is asked to do, in this order, after a change to one of schema.openmrs.REST_RESOURCES
ENDPOINTS = REST_ENDPOINTS


def rest_enabled(cfg: Config) -> bool:
    """True when ``openmrs.url`` is configured: only then should apply enqueue REST calls."""
    return bool(cfg.get("openmrs.url"))


def enqueue(cur: Any, schema: str, table: str, entity_uuid: str | None,
            now: dt.datetime | None = None) -> bool:
    """In apply's transaction: queue the calls a change to ``table`` needs; False when it needs none."""
    target = REST_RESOURCES.get(table)
    if target is None or not entity_uuid:
        return False
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cur.execute(sql("INSERT INTO {}.rest_call (resource, sub_resource, entity_uuid, date_created) "
                    "VALUES (%s, %s, %s, %s)", schema_name(schema)), (target[0], target[1], entity_uuid, now))
    return True


@dataclass
class RestSettings:
    url: str | None  # OpenMRS base URL, e.g. http://host:8080/openmrs
    user: str | None
    password: str | None = field(default=None, repr=False)
    db: DbParams = field(default_factory=DbParams)
    state_schema: str = DEFAULTS.central_db.state_schema
    timeout: float = 15.0  # per HTTP request
    poll_seconds: float = 1.0  # how often the table is polled when there is nothing to do
    batch_rows: int = 200  # rows read per round
    retry_base: float = 2.0  # seconds before the first retry; doubles per attempt
    retry_max: float = 600.0
    lock: str | None = None  # receiver workers (--worker): only the holder of this server lock makes the calls


class RestError(Exception):
    """One call failed; the message is one line and never contains the password."""

    def __init__(self, message: str, *, unreachable: bool = False):
        super().__init__(message)
        self.unreachable = unreachable


def _holds(cur: Any, lock: str) -> bool:
    """This session holds `lock` (taken now if free; kept until the session ends)."""
    cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID() OR GET_LOCK(%s, 0) = 1", (lock, lock))
    (held,) = cur.fetchone() or (0,)
    return held == 1


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class RestWorker:
    """Polls ``rest_call`` and makes the calls; run it in a thread (``start()``) or call ``run_once()``."""

    def __init__(self, settings: RestSettings, stop: threading.Event,
                 opener: urllib.request.OpenerDirector | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.schema = schema_name(settings.state_schema)
        # cookies keep OpenMRS' JSESSIONID, so Basic auth does not open a new session per request
        self.opener = opener or urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.conn: Any = None
        self.calls = 0  # entities refreshed
        self.failures = 0  # failed calls

    # -- HTTP -----------------------------------------------------------------------------------------------
    def _clean(self, text: object) -> str:
        line = " ".join(str(text).split())
        if self.settings.password:
            line = line.replace(self.settings.password, "***")
        return line[:500]

    def _post(self, endpoint: str, payload: dict[str, str]) -> None:
        url = f"{(self.settings.url or '').rstrip('/')}{REST_BASE_PATH}{endpoint}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings.user:
            token = base64.b64encode(f"{self.settings.user}:{self.settings.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
        try:
            with self.opener.open(request, timeout=self.settings.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            detail = ""
            with contextlib.suppress(Exception):  # the status alone is enough
                detail = exc.read(300).decode("utf-8", "replace")
            raise RestError(self._clean(f"POST {endpoint}: HTTP {exc.code} {exc.reason}"
                                        + (f": {detail}" if detail else ""))) from None
        except urllib.error.URLError as exc:
            raise RestError(self._clean(f"POST {endpoint}: cannot reach {self.settings.url}: {exc.reason}"),
                            unreachable=True) from None
        except (TimeoutError, OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
            raise RestError(self._clean(f"POST {endpoint}: {exc or type(exc).__name__}"), unreachable=True) from None

    def call(self, resource: str, sub_resource: str | None, entity_uuid: str) -> None:
        """Evict the entity from OpenMRS' caches, then update its search index entry."""
        payload = {"resource": resource}
        if sub_resource:
            payload["subResource"] = sub_resource
        payload["uuid"] = entity_uuid
        for endpoint in ENDPOINTS:
            self._post(endpoint, payload)

    # -- the table ------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.conn is None:
            self.conn = self.settings.db.connect(autocommit=True)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def _due(self, cur: Any) -> list[tuple[Any, ...]]:
        s = self.settings
        cur.execute(
            sql("SELECT id, resource, sub_resource, entity_uuid, attempts FROM {}.rest_call "
                "WHERE attempts = 0 OR date_last_attempt + INTERVAL "
                "ROUND(LEAST(%s, %s * POW(2, attempts - 1)) * 1000000) MICROSECOND <= %s "
                "ORDER BY id LIMIT %s", self.schema), (s.retry_max, s.retry_base, _utcnow(), s.batch_rows))
        return list(cur.fetchall())

    def run_once(self) -> int:
        """One round over the due rows; returns how many entities were refreshed."""
        done = 0
        with self._connect().cursor() as cur:
            if self.settings.lock is not None and not _holds(cur, self.settings.lock):
                return 0  # another receiver worker's REST thread makes the calls
            rows = self._due(cur)
            if not rows:
                return 0
            last_id = rows[-1][0]
            groups: dict[tuple[str, str | None, str], list[int]] = {}
            for row_id, resource, sub, entity_uuid, _attempts in rows:
                groups.setdefault((resource, sub, entity_uuid), []).append(row_id)
            for (resource, sub, entity_uuid), ids in groups.items():
                if self.stop.is_set():
                    break
                try:
                    self.call(resource, sub, entity_uuid)
                except RestError as exc:
                    self.failures += 1
                    cur.execute(sql("UPDATE {}.rest_call SET attempts = attempts + 1, last_error = %s, "
                                    "date_last_attempt = %s WHERE id IN ({})", self.schema, placeholders(len(ids))),
                                (str(exc), _utcnow(), *ids))
                    log.warning("OpenMRS REST call for %s%s %s failed: %s", resource, f"/{sub}" if sub else "",
                                entity_uuid, exc)
                    if exc.unreachable:
                        break  # the others would fail the same way: wait for the next round
                    continue
                # every pending row for this entity up to this round is covered by the call just made
                cur.execute(sql("DELETE FROM {}.rest_call WHERE resource = %s AND sub_resource <=> %s "
                                "AND entity_uuid = %s AND id <= %s", self.schema), (resource, sub, entity_uuid, last_id))
                done += 1
                self.calls += 1
        return done

    def run(self) -> None:
        """Until ``stop``: poll, call, back off. Database trouble means reconnect, never a crash."""
        if not self.settings.url:
            log.info("openmrs.url is not set: OpenMRS REST calls (cache eviction, search index) are disabled")
            return
        log.info("OpenMRS REST calls to %s", self.settings.url)
        failures = 0
        try:
            while not self.stop.is_set():
                try:
                    busy = self.run_once() > 0
                    failures = 0
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
                    failures += 1
                    self.close()
                    delay = min(60.0, self.settings.poll_seconds * 2 ** failures)
                    log.warning("REST worker: central database error (%s); retrying in %.0f s", exc.args[-1], delay)
                    self.stop.wait(delay)
                    continue
                if not busy:
                    self.stop.wait(self.settings.poll_seconds)
        finally:
            self.close()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="dbsync-rest", daemon=True)
        thread.start()
        return thread


def rest_status(conn: Any, schema: str) -> dict[str, Any]:
    """For `dbsync status`: pending and failing calls, the oldest pending call's age, the latest error."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT COUNT(*), COALESCE(SUM(attempts > 0), 0), MIN(date_created) FROM {}.rest_call", s))
        pending, failing, oldest = cur.fetchone()
        cur.execute(sql("SELECT last_error, date_last_attempt FROM {}.rest_call WHERE last_error IS NOT NULL "
                        "ORDER BY date_last_attempt DESC LIMIT 1", s))
        row = cur.fetchone()
    age = None if oldest is None else max(0.0, (_utcnow() - oldest).total_seconds())
    return {"pending": int(pending), "failing": int(failing), "oldest_pending_seconds": age,
            "last_error": row[0] if row else None, "last_error_date": row[1] if row else None}
