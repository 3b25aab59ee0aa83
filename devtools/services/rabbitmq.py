"""A throwaway RabbitMQ node (Debian's rabbitmq-server package) on 127.0.0.1, under ``<home>/rabbitmq``.

Its own node name, Mnesia directory, config, enabled-plugins file, Erlang cookie (HOME) and ports (STOMP, STOMP+TLS,
management HTTP, Erlang distribution and its own epmd), all moved by DBSYNC_SERVICES_PORT_OFFSET: the package's
system service (left stopped) and other lanes never collide with it. Users, the `dbsync` vhost and permissions come
from a definitions file loaded at boot (password hashes, no password in argv). A site's user may write (and declare
the queue it writes to) but read nothing; central's reads everything and has the `monitoring` tag for the
management API `dbsync status` reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
from pathlib import Path

from devtools.services.artemis import stomp_probe
from devtools.services.common import (
    HOST,
    ServiceError,
    locked,
    pid_alive,
    port_offset,
    port_open,
    read_pid,
    run,
    services_home,
    spawn,
    stop_pid,
    wait_until,
    write_private,
)
from devtools.services.endpoint import CENTRAL_USER, SITE_USERS, BrokerEndpoint, user_password
from devtools.services.tls import ensure_tls

SBIN = Path("/usr/lib/rabbitmq/bin")
VHOST = "dbsync"
ADMIN = "dbsync"
#: not RabbitMQ's own defaults (5672, 15672, 25672, epmd 4369): a system service or epmd may hold those
DEFAULT_PORTS = {"stomp": 61643, "stomp_tls": 61644, "management": 15682, "dist": 25682, "epmd": 4379}


def _ports() -> dict[str, int]:
    return {name: port + port_offset() for name, port in DEFAULT_PORTS.items()}


def endpoint(home: Path | None = None) -> BrokerEndpoint:
    home = home or services_home()
    ports = _ports()
    return BrokerEndpoint("rabbitmq", home, HOST, ports["stomp"], ports["stomp_tls"], str(ensure_tls(home).ca_file),
                          vhost=VHOST, management_url=f"http://{HOST}:{ports['management']}")


def _dir(home: Path) -> Path:
    return home / "rabbitmq"


def _marker(home: Path) -> str:
    """On the node's command line (erl -home): guards against a recycled pid."""
    return f"-home {_dir(home)}"


def _node() -> str:
    return f"dbsync{port_offset()}@localhost"


def _env(home: Path) -> dict[str, str]:
    """What rabbitmq-server and rabbitmqctl need to find this node and only this one."""
    d, ports = _dir(home), _ports()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    return {**keep, "HOME": str(d), "RABBITMQ_NODENAME": _node(), "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"), "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"), "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_DIST_PORT": str(ports["dist"]), "ERL_EPMD_PORT": str(ports["epmd"]),
            "ERL_EPMD_ADDRESS": HOST, "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RUNNING_UNDER_SYSTEMD": "true"}  # exec erl -noinput: the pid we start is the node's


def _hash(password: str) -> str:
    """rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), a 4-byte salt."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _definitions(home: Path) -> dict:
    users = [{"name": ADMIN, "password_hash": _hash(user_password(home, ADMIN)), "tags": ["administrator"]},
             {"name": CENTRAL_USER, "password_hash": _hash(user_password(home, CENTRAL_USER)), "tags": ["monitoring"]}]
    users += [{"name": site, "password_hash": _hash(user_password(home, site)), "tags": []} for site in SITE_USERS]
    for user in users:
        user["hashing_algorithm"] = "rabbit_password_hashing_sha256"
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    permissions = [{"user": name, "vhost": VHOST, **everything} for name in (ADMIN, CENTRAL_USER)]
    permissions += [{"user": site, "vhost": VHOST, "configure": ".*", "write": ".*", "read": "^$"}
                    for site in SITE_USERS]
    return {"users": users, "vhosts": [{"name": VHOST}], "permissions": permissions}


def _configure(home: Path) -> None:
    d, ports, tls = _dir(home), _ports(), ensure_tls(home)
    d.mkdir(parents=True, exist_ok=True)
    write_private(d / "definitions.json", json.dumps(_definitions(home)) + "\n")
    (d / "enabled_plugins").write_text("[rabbitmq_stomp,rabbitmq_management].\n")
    (d / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
    (d / "advanced.config").write_text("[].\n")
    (d / "rabbitmq.conf").write_text("\n".join([
        "listeners.tcp = none",
        f"stomp.listeners.tcp.1 = {HOST}:{ports['stomp']}",
        f"stomp.listeners.ssl.1 = {HOST}:{ports['stomp_tls']}",
        f"ssl_options.cacertfile = {tls.ca_file}",
        f"ssl_options.certfile = {tls.server_cert}",
        f"ssl_options.keyfile = {tls.server_key}",
        "ssl_options.verify = verify_none",
        "ssl_options.fail_if_no_peer_cert = false",
        f"management.tcp.ip = {HOST}",
        f"management.tcp.port = {ports['management']}",
        f"load_definitions = {d / 'definitions.json'}",
        "collect_statistics_interval = 1000",  # the management API's queue figures: 1 s old at most (5 s default)
        "log.console = true", "log.console.formatter = plaintext", "log.file = false",
        # the tests' small disks: the default 50 MB free-disk alarm is fine, the memory one too
        "",
    ]))


def running(b: BrokerEndpoint) -> bool:
    return pid_alive(read_pid(_dir(b.home) / "pid"), _marker(b.home)) and \
        stomp_probe(b.host, b.stomp_port, CENTRAL_USER, user_password(b.home, CENTRAL_USER), vhost=b.vhost) == "CONNECTED"


def start_rabbitmq(home: Path | None = None, *, timeout: float = 120) -> BrokerEndpoint:
    """Start (or keep) the node; returns once STOMP accepts central's CONNECT."""
    b = endpoint(home)
    if not (SBIN / "rabbitmq-server").exists():
        raise ServiceError("rabbitmq: /usr/lib/rabbitmq/bin/rabbitmq-server not found (apt-get install rabbitmq-server)")
    with locked(b.home, "rabbitmq"):
        if running(b):
            return b
        pid_file = _dir(b.home) / "pid"
        stop_pid(read_pid(pid_file), marker=_marker(b.home), what="rabbitmq (unresponsive)", timeout=30)
        ports = _ports()
        for name in ("stomp", "stomp_tls", "management", "dist"):
            if port_open(ports[name], b.host):
                raise ServiceError(f"rabbitmq: port {b.host}:{ports[name]} ({name}) is taken by another process")
        _configure(b.home)
        log = _dir(b.home) / "rabbitmq.log"
        pid = spawn([str(SBIN / "rabbitmq-server")], log=log, cwd=_dir(b.home), env=_env(b.home))
        pid_file.write_text(f"{pid}\n")
        wait_until(lambda: running(b) and port_open(b.tls_port, b.host) and port_open(ports["management"], b.host),
                   timeout=timeout, what=f"rabbitmq (STOMP port {b.stomp_port})", alive=lambda: pid_alive(pid),
                   log=log)
    return b


def kill_rabbitmq(home: Path | None = None) -> None:
    """kill -9 of the node (tests: nothing it confirmed may be lost)."""
    home = home or services_home()
    pid = read_pid(_dir(home) / "pid")
    if pid is not None and pid_alive(pid, _marker(home)):
        os.kill(pid, signal.SIGKILL)
        b = endpoint(home)
        wait_until(lambda: not pid_alive(pid) and not port_open(b.stomp_port, b.host), timeout=30,
                   what="rabbitmq to die")


def stop_rabbitmq(home: Path | None = None, *, timeout: float = 60) -> bool:
    """SIGTERM the node (it shuts down cleanly on it), then its own epmd (asked by port: only ours)."""
    home = home or services_home()
    with locked(home, "rabbitmq"):
        stopped = stop_pid(read_pid(_dir(home) / "pid"), marker=_marker(home), what="rabbitmq", timeout=timeout)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if stopped and Path(epmd).exists():
            try:
                run([epmd, "-port", str(_ports()["epmd"]), "-kill"], what="rabbitmq: epmd -kill", timeout=10)
            except ServiceError:
                pass
    return stopped
