"""Receiver test helpers: a central DB with its state schema and sites, and site messages from the real sender
stages (capture | enrich) with the checkpoint moved as publish would."""

from __future__ import annotations

import os
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pymysql
from helpers import dbsync, sender_config

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state
from dbsync_cli.sender.checkpoint import CheckpointStore


@dataclass
class Central:
    db: DbParams
    schema: str
    config: Path
    env: dict[str, str]

    def sql(self, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.db.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def apply(self, messages: list[dict[str, Any]] | bytes, *args: str, check: bool = True) -> list[dict[str, Any]]:
        data = messages if isinstance(messages, bytes) else b"".join(orjson.dumps(m) + b"\n" for m in messages)
        run = dbsync("apply", "--config", str(self.config), *args, env=self.env, stdin=data, check=check)
        self.last_stderr = run.stderr.decode()
        return [orjson.loads(line) for line in run.stdout.splitlines() if line.strip()]


def make_central(openmrs_db, tmp_path: Path, broker, *, sites: tuple[str, ...] = ("site1",), timezone: str = "UTC",
                 policy: str = "newer", destination: str | None = None, openmrs_url: str | None = None) -> Central:
    """A central DB and receiver config; its broker destination is its own (status reads that queue: a message
    another test left in a shared one must not show up here)."""
    destination = destination or f"test.unused.{uuidlib.uuid4().hex[:8]}"
    db = openmrs_db("central")
    schema = f"{db.database}_state"[:64]
    path = tmp_path / f"receiver-{uuidlib.uuid4().hex[:6]}.toml"
    path.write_text(
        f'home = "{tmp_path / "receiver-home"}"\n'
        f'[receiver]\nsite_id = "central"\ntimezone = "{timezone}"\nconflict_policy = "{policy}"\n'
        f'retry_interval_seconds = 1\nbatch_messages = 200\n'
        f'[central_db]\nhost = "{db.host}"\nport = {db.port}\ndatabase = "{db.database}"\n'
        f'state_schema = "{schema}"\nuser = "{db.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
        + (f'[openmrs]\nurl = "{openmrs_url}"\nuser = "admin"\n' if openmrs_url else "")
    )
    env = {**os.environ, "DBSYNC_CENTRAL_DB__PASSWORD": db.password, "DBSYNC_BROKER__PASSWORD": broker.password or "",
           "DBSYNC_OPENMRS__PASSWORD": "Admin123"}
    with db.connect(autocommit=False) as conn:
        state.migrate(conn, schema, db.database)
        for site in sites:
            state.add_site(conn, schema, site)
    return Central(db, schema, path, env)


def drop_schema(central: Central) -> None:
    central.sql(f"DROP DATABASE IF EXISTS `{central.schema}`")


@dataclass
class Site:
    admin: DbParams
    config: Path
    env: dict[str, str]
    home: Path
    initial: list[dict[str, Any]] = field(default_factory=list)  # the initial snapshot's messages

    def sql(self, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def messages(self) -> list[dict[str, Any]]:
        """New sync messages since the last call (capture | enrich), then move the checkpoint like publish does."""
        events = dbsync("capture", "--config", str(self.config), "--until-idle", env=self.env).stdout
        out = dbsync("enrich", "--config", str(self.config), env=self.env, stdin=events).stdout
        records = [orjson.loads(line) for line in out.splitlines() if line.strip()]
        if records:
            store = CheckpointStore(self.home)
            store.save(records[-1]["source"])
            store.close()
        return [r for r in records if r.get("op") != "h"]


def make_site(openmrs_db, services, tmp_path: Path, broker, *, name: str = "site1", instance: str = "site1",
              timezone: str = "UTC") -> Site:
    admin = openmrs_db(instance)
    repl = services[instance].repl.with_database(admin.database)
    home = tmp_path / f"home-{name}"
    work = tmp_path / f"work-{name}"
    work.mkdir(exist_ok=True)
    conf, env = sender_config(work, repl, broker, site=name, destination="test.unused", timezone=timezone, home=home)
    site = Site(admin, conf, env, home)
    site.initial = site.messages()  # the initial snapshot of the metadata rows (admin, daemon, …)
    return site


def plain_sql(params: Any, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A checker's own connection (plain pymysql, nothing of dbsync's): all rows of one statement. TLS off: the dev
    servers offer none, and PyMySQL's attempt costs ~30 ms of CPU a connection (dbsync_cli/db.py)."""
    conn = pymysql.connect(host=params.host, port=params.port, user=params.user, password=params.password,
                           database=params.database, autocommit=True, ssl_disabled=getattr(params, "ssl_ca", None) is None)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())
    finally:
        conn.close()
