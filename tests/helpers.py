"""Test helpers: sender configs for fresh databases, and draining a queue of the real broker."""

from __future__ import annotations

import os
import queue
import random
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import orjson
import stomp

from dbsync_cli import wire
from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.db import DbParams


def dbsync_cmd(*args: str) -> list[str]:
    """argv that runs this checkout's dbsync with the tests' Python (for Popen, where `dbsync()` will not do)."""
    return [sys.executable, "-m", "dbsync_cli", *args]


def query(db: DbParams, statement: str, args: tuple = ()) -> list[tuple]:
    """All rows of one statement, on a connection of its own."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def sender_config(
    tmp_path: Path, site_db: DbParams, broker: BrokerSettings, *, site: str = "site1", destination: str,
    timezone: str = "UTC", snapshot: str = "initial", batch: int = 500, home: Path | None = None,
    server_id: int | None = None,
) -> tuple[Path, dict[str, str]]:
    """A sender TOML (no secrets in it) plus the environment that carries the passwords."""
    home = home or tmp_path / f"home-{site}"
    path = tmp_path / f"sender-{site}.toml"
    path.write_text(
        f'home = "{home}"\nlog_level = "INFO"\n'
        f'[sender]\nid = "{site}"\nserver_id = {server_id or random.randint(1000, 4_000_000)}\ntimezone = "{timezone}"\n'
        f'snapshot = "{snapshot}"\nmin_binlog_retention_hours = 0\n'
        f'[site_db]\nhost = "{site_db.host}"\nport = {site_db.port}\ndatabase = "{site_db.database}"\n'
        f'user = "{site_db.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
        f'batch_messages = {batch}\n' + (f'ca_file = "{broker.ca_file}"\n' if broker.ca_file else "")
    )
    env = {**os.environ, "DBSYNC_SITE_DB__PASSWORD": site_db.password, "DBSYNC_BROKER__PASSWORD": broker.password or ""}
    return path, env


def dbsync(*args: str, env: dict[str, str], timeout: float = 300, stdin: bytes | None = None,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", *args], env=env, capture_output=True,
                         timeout=timeout, input=stdin)
    if check and run.returncode != 0:
        raise AssertionError(f"dbsync {' '.join(args)} exited {run.returncode}: {run.stderr.decode()[-3000:]}")
    return run


class _Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)


def decode_body(frame: Any) -> dict[str, Any]:
    body = frame.body if isinstance(frame.body, bytes) else frame.body.encode()
    if frame.headers.get("dbsync-encoding") == "deflate":
        body = zlib.decompress(body)
    return orjson.loads(body)


def messages_of(frame: Any) -> list[dict[str, Any]]:
    """The sync messages a delivery carries: one, or the messages of a wire-v2 envelope."""
    body = decode_body(frame)
    return list(body["messages"]) if wire.is_envelope(body) else [body]


def drain(broker: BrokerSettings, destination: str, idle: float = 3.0, *,
          envelopes: bool = False) -> list[dict[str, Any]]:
    """Consume (and acknowledge) every message of an ANYCAST queue until it stays quiet for `idle` seconds and the
    broker holds none of it (a loaded broker may pause longer than `idle`): the sync messages, taken out of their
    wire-v2 envelopes (or the envelopes themselves)."""
    from dbsync_cli.broker_queue import queue_stats

    collector = _Collector()
    conn = open_connection(broker, listener=collector, auto_decode=False)
    conn.subscribe(destination, id="drain", ack="client-individual",
                   headers={"subscription-type": "ANYCAST", "consumer-window-size": "1048576"})
    out: list[dict[str, Any]] = []
    quiet_rounds = 0
    try:
        while True:
            try:
                frame = collector.frames.get(timeout=idle)
            except queue.Empty:
                quiet_rounds += 1
                if quiet_rounds >= 20 or queue_stats(broker, destination).messages == 0:
                    return out
                continue
            if envelopes:
                out.append(decode_body(frame))
            else:
                out.extend(messages_of(frame))
            conn.ack(frame.headers["ack"])
    finally:
        conn.disconnect()


def final_state(messages: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any] | None]:
    """(table, uuid) → last data (None when the last word was a delete): what central should end up with."""
    state: dict[tuple[str, str], dict[str, Any] | None] = {}
    for message in messages:
        state[(message["table"], message["uuid"])] = message["data"]
    return state


_DATETIME = __import__("re").compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def data_mismatches(truth_tables: dict[str, dict[str, dict[str, Any]]], state: dict[tuple[str, str], Any],
                    offset: str, datetime_columns: dict[str, set[str]]) -> list[str]:
    """Differences between the generator's ground truth and the last message of each entity (wire form)."""
    problems: list[str] = []
    for table, rows in truth_tables.items():
        for uuid, row in rows.items():
            data = state.get((table, uuid))
            if data is None:
                problems.append(f"{table} {uuid}: no message with its final state")
                continue
            for column, expected in row.items():
                actual = data.get(column)
                if isinstance(expected, dict) and "$ref" in expected:
                    ok = isinstance(actual, dict) and actual.get("uuid") == expected["uuid"]
                elif isinstance(expected, str) and _DATETIME.match(expected) and column in datetime_columns[table]:
                    ok = actual == expected.replace(" ", "T") + offset
                elif isinstance(expected, float) or isinstance(actual, float):
                    ok = actual is not None and abs(float(actual) - float(expected)) < 1e-9
                else:
                    ok = actual == expected or str(actual) == str(expected)
                if not ok:
                    problems.append(f"{table} {uuid}.{column}: expected {expected!r}, message has {actual!r}")
            if len(problems) > 50:
                return problems
    return problems


# -- receiver helpers -------------------------------------------------------------------------------------------

def receiver_config(
    tmp_path: Path, central_db: DbParams, broker: BrokerSettings, *, destination: str, state_schema: str,
    destination_type: str = "queue", site_id: str = "central", subscription: str = "dbsync",
    openmrs_url: str | None = None, openmrs_user: str = "admin", openmrs_password: str | None = None,
    home: Path | None = None, batch: int = 500, name: str = "receiver",
) -> tuple[Path, dict[str, str]]:
    """A receiver TOML (no secrets in it) plus the environment that carries the passwords."""
    home = home or tmp_path / f"home-{name}"
    path = tmp_path / f"{name}.toml"
    text = (
        f'home = "{home}"\nlog_level = "INFO"\n'
        f'[receiver]\nsite_id = "{site_id}"\nbatch_messages = {batch}\n'
        f'[central_db]\nhost = "{central_db.host}"\nport = {central_db.port}\n'
        f'database = "{central_db.database or "openmrs"}"\nstate_schema = "{state_schema}"\nuser = "{central_db.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
        f'destination_type = "{destination_type}"\nsubscription = "{subscription}"\n'
        + (f'ca_file = "{broker.ca_file}"\n' if broker.ca_file else "")
    )
    if openmrs_url:
        text += f'[openmrs]\nurl = "{openmrs_url}"\nuser = "{openmrs_user}"\n'
    path.write_text(text)
    env = {**os.environ, "DBSYNC_CENTRAL_DB__PASSWORD": central_db.password,
           "DBSYNC_BROKER__PASSWORD": broker.password or ""}
    if openmrs_password is not None:
        env["DBSYNC_OPENMRS__PASSWORD"] = openmrs_password
    return path, env


def drop_schema(admin: DbParams, schema: str) -> None:
    """Drop a (state) schema on the server of `admin`."""
    conn = admin.with_database(None).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
    finally:
        conn.close()


def datetime_columns(db: DbParams) -> dict[str, set[str]]:
    """DATETIME columns per synced table (the ones that carry the site's UTC offset on the wire)."""
    from dbsync_cli.openmrs import SchemaModel

    with db.connect() as conn:
        model = SchemaModel.load(conn, db.database)
    return {t.name: {c for c, col in t.info.columns.items() if col.data_type == "datetime"}
            for t in model.synced.values()}


def merge_truths(truths: list[Any]) -> tuple[dict[str, dict], dict[str, set[str]]]:
    """Rows and deleted uuids of several workload runs at one site."""
    tables: dict[str, dict] = {}
    deleted: dict[str, set[str]] = {}
    for truth in truths:
        for table, rows in truth.tables.items():
            tables.setdefault(table, {}).update(rows)
        for table, uuids in truth.deleted.items():
            deleted.setdefault(table, set()).update(uuids)
    return tables, deleted


def check_final_state(admin: DbParams, truths: list[Any], messages: list[dict[str, Any]]) -> None:
    """The last message of every entity equals the site's ground truth; deleted rows end deleted."""
    tables, deleted = merge_truths(truths)
    state = final_state(messages)
    assert data_mismatches(tables, state, "+00:00", datetime_columns(admin)) == []
    for table, uuids in deleted.items():
        assert all(state.get((table, u)) is None for u in uuids), f"a deleted {table} row survives"
