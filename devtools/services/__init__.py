"""Real throwaway services for tests and the demo: three MariaDB servers and one Artemis broker.

``ensure_up()`` starts whatever is not running (idempotent, fast when all run) and returns their
endpoints; ``load()`` reads them without starting anything; ``down()`` stops everything by PID.
All state is under ``services_home()``; ``<home>/services.json`` lists the endpoints (no passwords).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbsync_cli.db import DbParams
from devtools.services.activemq import start_activemq, stop_activemq
from devtools.services.artemis import ArtemisBroker, broker, start_artemis, stop_artemis
from devtools.services.common import ServiceError, pid_alive, read_pid, secret, services_home
from devtools.services.endpoint import BrokerEndpoint
from devtools.services.mariadb import (
    ADMIN_USER,
    DEFAULT_INSTANCES,
    REPL_USER,
    MariaDbInstance,
    destroy_mariadb,
    instance,
    start_mariadb,
    stop_mariadb,
)
from devtools.services.rabbitmq import start_rabbitmq, stop_rabbitmq
from devtools.services.tls import ensure_tls

if TYPE_CHECKING:
    from dbsync_cli.broker import BrokerSettings

__all__ = [
    "ALL_NAMES", "ArtemisService", "MariaDbInstance", "MariaDbService", "ServiceError", "Services", "destroy_mariadb",
    "down", "ensure_up", "load", "other_broker", "services_home", "start_mariadb", "status", "stop_mariadb",
]

ALL_NAMES: tuple[str, ...] = (*DEFAULT_INSTANCES, "artemis")
#: brokers besides Artemis (tests/service/test_brokers.py starts them when it runs; `scripts/services up` only when
#: DBSYNC_SERVICES_BROKERS names them, e.g. "activemq,rabbitmq"); `down` stops them
OTHER_BROKERS = {"activemq": (start_activemq, stop_activemq), "rabbitmq": (start_rabbitmq, stop_rabbitmq)}


def other_broker(kind: str, home: Path | None = None) -> BrokerEndpoint:
    """ActiveMQ Classic or RabbitMQ of this services home, started if it is not running."""
    return OTHER_BROKERS[kind][0](home or services_home())


def _brokers_asked() -> list[str]:
    asked = [k.strip() for k in os.environ.get("DBSYNC_SERVICES_BROKERS", "").split(",") if k.strip()]
    unknown = [k for k in asked if k not in OTHER_BROKERS]
    if unknown:
        raise ServiceError(f"DBSYNC_SERVICES_BROKERS: unknown broker(s) {unknown}; known: {sorted(OTHER_BROKERS)}")
    return asked


@dataclass(frozen=True)
class MariaDbService:
    name: str
    host: str
    port: int
    server_id: int
    socket: str
    admin: DbParams
    repl: DbParams


@dataclass(frozen=True)
class ArtemisService:
    host: str
    port: int
    tls_port: int
    core_port: int
    user: str
    password: str = field(repr=False)
    ca_file: str
    rogue_ca_file: str
    home: Path | None = None

    def settings(self, *, tls: bool = False) -> BrokerSettings:
        """Connection settings for the plain or the TLS STOMP acceptor (TLS trusts our CA)."""
        from dbsync_cli.broker import BrokerSettings

        return BrokerSettings(host=self.host, port=self.tls_port if tls else self.port, user=self.user,
                              password=self.password, tls=tls, ca_file=self.ca_file if tls else None)

    def site_settings(self, site: str, *, tls: bool = False) -> BrokerSettings:
        """As `settings`, logged in as the site's own broker user (it may only send to the sync destinations)."""
        import dataclasses

        from devtools.services.artemis import site_password

        assert self.home is not None, "loaded without a services home"
        return dataclasses.replace(self.settings(tls=tls), user=site, password=site_password(self.home, site))

    def central_settings(self, *, tls: bool = False) -> BrokerSettings:
        """As `settings`, logged in as central's own broker user (role dbsync-receiver of examples/artemis/broker.xml:
        it reads the sync destinations, answers the sites, and may use the broker's management)."""
        from devtools.services.artemis import CENTRAL_USER

        return self.site_settings(CENTRAL_USER, tls=tls)


@dataclass(frozen=True)
class Services:
    home: Path
    mariadb: Mapping[str, MariaDbService]
    artemis: ArtemisService | None

    def __getitem__(self, name: str) -> MariaDbService:
        try:
            return self.mariadb[name]
        except KeyError:
            raise ServiceError(f"no MariaDB instance {name!r} in {self.home} (have: {sorted(self.mariadb)})") from None


def _manifest_path(home: Path) -> Path:
    return home / "services.json"


def _read_manifest(home: Path) -> dict[str, Any]:
    path = _manifest_path(home)
    return json.loads(path.read_text()) if path.exists() else {"mariadb": {}, "artemis": None}


def _record(home: Path, started: Iterable[MariaDbInstance | ArtemisBroker]) -> None:
    """Merge endpoints into services.json (never passwords: those stay in secrets/)."""
    manifest = _read_manifest(home)
    manifest["home"] = str(home)
    for svc in started:
        if isinstance(svc, MariaDbInstance):
            manifest["mariadb"][svc.name] = {
                "host": svc.host, "port": svc.port, "server_id": svc.server_id, "socket": str(svc.socket),
                "admin_user": ADMIN_USER, "repl_user": REPL_USER, "pid_file": str(svc.pid_file),
            }
        else:
            tls = ensure_tls(home)
            manifest["artemis"] = {
                "host": svc.host, "stomp_port": svc.stomp_port, "stomp_tls_port": svc.tls_port,
                "core_port": svc.core_port, "user": svc.user, "ca_file": str(tls.ca_file),
                "rogue_ca_file": str(tls.rogue_ca_file), "pid_file": str(svc.pid_file),
                "stomp_url": f"stomp://{svc.host}:{svc.stomp_port}",
                "stomp_tls_url": f"stomp+ssl://{svc.host}:{svc.tls_port}",
            }
    _manifest_path(home).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load(home: Path | None = None) -> Services:
    """Endpoints and credentials of services started before (does not check they still run)."""
    home = home or services_home()
    if not _manifest_path(home).exists():
        raise ServiceError(f"no services recorded in {home}: run scripts/services up")
    manifest = _read_manifest(home)
    dbs = {}
    for name, m in manifest["mariadb"].items():
        base = DbParams(host=m["host"], port=m["port"])
        dbs[name] = MariaDbService(
            name=name, host=m["host"], port=m["port"], server_id=m["server_id"], socket=m["socket"],
            admin=DbParams(host=base.host, port=base.port, user=m["admin_user"], password=secret(home, m["admin_user"])),
            repl=DbParams(host=base.host, port=base.port, user=m["repl_user"], password=secret(home, m["repl_user"])),
        )
    a = manifest.get("artemis")
    art = None
    if a:
        art = ArtemisService(host=a["host"], port=a["stomp_port"], tls_port=a["stomp_tls_port"],
                             core_port=a["core_port"], user=a["user"], password=secret(home, "artemis"),
                             ca_file=a["ca_file"], rogue_ca_file=a["rogue_ca_file"], home=home)
    return Services(home=home, mariadb=dbs, artemis=art)


def _check_names(names: Iterable[str] | None) -> list[str]:
    wanted = list(names) if names else list(ALL_NAMES)
    unknown = [n for n in wanted if n not in ALL_NAMES]
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; known: {list(ALL_NAMES)}")
    return wanted


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def reserve_ports(ports: Iterable[int]) -> None:
    """Keep the kernel from giving the services' ports to client sockets as ephemeral ports (seen: a server of a
    second lane failed to bind 33806, in use as the local port of some client connection). Best effort: root only."""
    try:
        have = RESERVED_PORTS.read_text().strip()
        wanted = sorted(set(ports))
        known = {int(p) for p in have.split(",") if p.strip().isdigit()}
        missing = [str(p) for p in wanted if p not in known]
        if missing:
            RESERVED_PORTS.write_text(",".join(filter(None, [have, *missing])) + "\n")
    except (OSError, ValueError):
        pass


def ensure_up(names: Iterable[str] | None = None, *, home: Path | None = None,
              report: Callable[[str], None] | None = None) -> Services:
    """Start the named services (default: all) that are not running, in parallel; return all endpoints."""
    home = home or services_home()
    home.mkdir(parents=True, exist_ok=True)
    wanted = _check_names(names)
    say = report or (lambda _msg: None)

    def one(name: str) -> MariaDbInstance | ArtemisBroker:
        if name == "artemis":
            was = broker(home).running()
            artemis = start_artemis(home)
            svc: MariaDbInstance | ArtemisBroker = artemis
            port = f"stomp {artemis.stomp_port}, stomp+tls {artemis.tls_port}, core {artemis.core_port}"
        else:
            was = instance(name, home=home).running()
            svc = start_mariadb(name, home=home)
            port = f"port {svc.port}, server-id {svc.server_id}"
        say(f"{name:8} {'already running' if was else 'started'} ({port}, pid {svc.pid()})")
        return svc

    ensure_tls(home)  # before the threads: artemis and the manifest both need it
    ports = [instance(n, home=home).port for n in wanted if n != "artemis"]
    if "artemis" in wanted:
        b = broker(home)
        ports += [b.core_port, b.stomp_port, b.tls_port]
    reserve_ports(ports)
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        futures = {n: pool.submit(one, n) for n in wanted}
    started, errors = [], []
    for name, fut in futures.items():
        try:
            started.append(fut.result())
        except Exception as exc:  # noqa: BLE001 - report every failing service, not just the first
            errors.append(f"{name}: {exc}")
    _record(home, started)
    for kind in _brokers_asked():
        try:
            endpoint = other_broker(kind, home)
            say(f"{kind:8} up (stomp {endpoint.stomp_port}, stomp+tls {endpoint.tls_port})")
        except ServiceError as exc:
            errors.append(f"{kind}: {exc}")
    if errors:
        raise ServiceError("; ".join(errors))
    return load(home)


def down(names: Iterable[str] | None = None, *, home: Path | None = None,
         report: Callable[[str], None] | None = None) -> None:
    """Stop services by PID; without names, every server under the home (extra test instances too)."""
    home = home or services_home()
    say = report or (lambda _msg: None)
    wanted = _check_names(names)
    db_names = [n for n in wanted if n != "artemis"]
    if not names and (home / "mariadb").is_dir():
        db_names = sorted({*db_names, *(p.name for p in (home / "mariadb").iterdir() if p.is_dir())})
    with ThreadPoolExecutor(max_workers=len(db_names) + 1 + len(OTHER_BROKERS)) as pool:
        stopped = {n: pool.submit(stop_mariadb, n, home=home) for n in db_names}
        if "artemis" in wanted:
            stopped["artemis"] = pool.submit(stop_artemis, home)
        if not names:
            stopped.update({kind: pool.submit(stop, home) for kind, (_start, stop) in OTHER_BROKERS.items()
                            if (home / kind).is_dir()})
    for name, fut in stopped.items():
        say(f"{name:8} {'stopped' if fut.result() else 'was not running'}")


def status(home: Path | None = None) -> list[dict[str, Any]]:
    """One row per known service: name, port(s), pid, up (True only if running and answering)."""
    home = home or services_home()
    manifest = _read_manifest(home)
    rows = []
    for name in DEFAULT_INSTANCES:
        m = manifest["mariadb"].get(name)
        inst = instance(name, m["port"] if m else None, m["server_id"] if m else None, home=home)
        pid = inst.pid()
        rows.append({"name": name, "port": str(inst.port), "pid": pid if pid_alive(pid) else None, "up": inst.running()})
    a = manifest.get("artemis")
    b = broker(home)
    if a:
        b = ArtemisBroker(home=home, core_port=a["core_port"], stomp_port=a["stomp_port"], tls_port=a["stomp_tls_port"])
    pid = read_pid(b.pid_file)
    rows.append({"name": "artemis", "port": f"{b.stomp_port},{b.tls_port},{b.core_port}",
                 "pid": pid if pid_alive(pid) else None, "up": b.running()})
    return rows
