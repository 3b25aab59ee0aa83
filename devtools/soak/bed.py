"""The soak's own services under its own home and ports: central and three site MariaDB servers (one with its clock
off when devtools.field.clock is there) and an Artemis broker. Never the test services."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dbsync_cli.db import DbParams
from devtools.services import reserve_ports
from devtools.services.artemis import (
    CENTRAL_USER,
    SITE_USERS,
    ArtemisBroker,
    broker,
    site_password,
    start_artemis,
    stop_artemis,
)
from devtools.services.mariadb import MariaDbInstance, start_mariadb, stop_mariadb
from devtools.soak.faults import Service

DATABASE = "openmrs"
STATE_SCHEMA = "dbsync_soak"
BASE_PORT = 33306
SERVER_IDS = {"central": 1, "site1": 11, "site2": 12, "site3": 13}


@dataclass
class Bed:
    home: Path
    offset: int
    dbs: dict[str, MariaDbInstance]
    artemis: ArtemisBroker
    services: dict[str, Service]
    skewed: str | None  # the site whose server's clock runs off

    def admin(self, name: str) -> DbParams:
        return self.dbs[name].admin.with_database(DATABASE)

    def repl(self, name: str) -> DbParams:
        return self.dbs[name].repl.with_database(DATABASE)

    def broker_login(self, site: str | None) -> tuple[str, str]:
        """(user, password) on the broker, as examples/artemis/broker.xml deploys it: every site its own user,
        central (site None) the `central` user of role dbsync-receiver; the administrator only for what no
        documented user may do."""
        if site is None:
            return CENTRAL_USER, site_password(self.home, CENTRAL_USER)
        if site in SITE_USERS:
            return site, site_password(self.home, site)
        return self.artemis.user, self.artemis.password


def _db_starter(name: str, home: Path, port: int, skew: str | None) -> Callable[[], MariaDbInstance]:
    def start() -> MariaDbInstance:
        if skew:
            from devtools.field.clock import start_skewed_mariadb

            return start_skewed_mariadb(name, skew, port, SERVER_IDS[name], home=home)
        return start_mariadb(name, port, SERVER_IDS[name], home=home)
    return start


def start_bed(home: Path, offset: int, *, skew_site: str | None, skew: str, say: Callable[[str], None]) -> Bed:
    os.environ["DBSYNC_SERVICES_PORT_OFFSET"] = str(offset)  # broker(home) reads its ports from it
    home.mkdir(parents=True, exist_ok=True)
    # a fresh broker journal: messages a previous run left (hostile frames, a backlog) are no part of this one
    stop_artemis(home)
    shutil.rmtree(broker(home).dir / "data", ignore_errors=True)
    ports = {name: BASE_PORT + offset + i for i, name in enumerate(SERVER_IDS)}
    planned = broker(home)
    # never handed to a client socket as its local port (seen in CI: central's port in use by some connection)
    reserve_ports([*ports.values(), planned.core_port, planned.stomp_port, planned.tls_port])
    starters = {name: _db_starter(name, home, ports[name], skew if name == skew_site else None) for name in SERVER_IDS}
    with ThreadPoolExecutor(max_workers=len(starters) + 1) as pool:
        futures = {name: pool.submit(fn) for name, fn in starters.items()}
        art = pool.submit(start_artemis, home)
        dbs = {name: f.result() for name, f in futures.items()}
        artemis = art.result()
    services = {name: Service(name, inst.pid, str(inst.datadir), starters[name]) for name, inst in dbs.items()}
    services["artemis"] = Service("artemis", artemis.pid, f"-Dartemis.instance={artemis.dir}",
                                  lambda: start_artemis(home))
    for name, inst in dbs.items():
        say(f"  mariadb {name}: 127.0.0.1:{inst.port} (server id {inst.server_id})"
            + (f", clock {skew}" if name == skew_site else ""))
    say(f"  artemis: stomp 127.0.0.1:{artemis.stomp_port}")
    return Bed(home=home, offset=offset, dbs=dbs, artemis=broker(home), services=services, skewed=skew_site)


def stop_bed(bed: Bed, *, keep_databases: bool) -> None:
    stop_artemis(bed.home)
    if not keep_databases:
        for inst in bed.dbs.values():
            stop_mariadb(inst)
