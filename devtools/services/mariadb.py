"""Throwaway MariaDB servers (central + sites) with the binlog settings dbsync's capture relies on.

Each instance lives in ``<home>/mariadb/<name>/`` (datadir, socket, pid file, logs) and is reached over
TCP on 127.0.0.1 with two accounts: ``dbsync_admin`` (everything) and ``dbsync_repl`` (the least a
capture needs: SELECT, REPLICATION SLAVE, BINLOG MONITOR — MariaDB's name for REPLICATION CLIENT).
Tests can start more instances with other settings through :func:`start_mariadb` (``extra_args`` are
appended last, so ``--binlog-row-metadata=MINIMAL`` overrides the default; ``env`` adds environment
variables for mariadbd alone, e.g. libfaketime's, for a server whose clock runs off: devtools/field/clock.py).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pymysql

from dbsync_cli.db import DbParams
from devtools.services.common import (
    HOST,
    ServiceError,
    locked,
    pid_alive,
    port_open,
    read_pid,
    run,
    secret,
    services_home,
    spawn,
    stop_pid,
    wait_until,
)

ADMIN_USER = "dbsync_admin"
REPL_USER = "dbsync_repl"
# What capture needs and nothing more (verified with mysql-replication 1.0.17 streaming the binlog).
REPL_GRANTS = "SELECT, REPLICATION SLAVE, BINLOG MONITOR"

# name -> (port, server_id); the port moves with DBSYNC_SERVICES_PORT_OFFSET.
DEFAULT_INSTANCES: dict[str, tuple[int, int]] = {"central": (33306, 1), "site1": (33307, 11), "site2": (33308, 12)}


@dataclass(frozen=True)
class MariaDbInstance:
    """One server: where its files are and how to reach it."""

    name: str
    port: int
    server_id: int
    home: Path
    extra_args: tuple[str, ...] = ()
    host: str = HOST
    #: added to mariadbd's environment (only its own: the tools that install or query it keep ours)
    env: tuple[tuple[str, str], ...] = ()

    @property
    def dir(self) -> Path:
        return self.home / "mariadb" / self.name

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        return self.dir / "mariadbd.sock"

    @property
    def pid_file(self) -> Path:
        return self.dir / "mariadbd.pid"

    @property
    def tmpdir(self) -> Path:
        return self.dir / "tmp"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def admin(self) -> DbParams:
        return DbParams(host=self.host, port=self.port, user=ADMIN_USER, password=secret(self.home, ADMIN_USER))

    @property
    def repl(self) -> DbParams:
        return DbParams(host=self.host, port=self.port, user=REPL_USER, password=secret(self.home, REPL_USER))

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def running(self) -> bool:
        """Our process is alive (its datadir on the command line) and the port greets like MySQL."""
        return pid_alive(self.pid(), str(self.datadir)) and _greets(self.port, self.host)

    def server_args(self) -> list[str]:
        args = [
            _binary("mariadbd"),
            "--no-defaults",  # must stay first: ignore /etc/mysql so the settings below are all there is
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            "--skip-name-resolve",
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            f"--server-id={self.server_id}",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M",
            # Throwaway servers: durability of the last second is not worth the fsyncs.
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            # Tests create and drop a whole OpenMRS schema (128 tables) each: with a file per table every CREATE
            # and DROP makes or removes (and syncs) a file. In the system tablespace a schema loads in 1.1-1.7 s
            # instead of 3.6-5.3 s and drops in 0.3-0.9 s instead of 0.5-1.8 s (same server, alternating, CI load).
            "--innodb-file-per-table=0",
            "--max-connections=300",
            "--max-allowed-packet=64M",
        ]
        if os.geteuid() == 0:
            args.insert(2, "--user=root")
        return args + list(self.extra_args)

    def server_env(self) -> dict[str, str] | None:
        """The environment mariadbd runs in: ours plus ``env`` (None: just ours)."""
        return {**os.environ, **dict(self.env)} if self.env else None


def _binary(name: str) -> str:
    """Debian puts mariadbd in /usr/sbin, which a non-root PATH often lacks."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin") or name


def _greets(port: int, host: str = HOST) -> bool:
    """The server answered with a MySQL packet: a handshake (protocol 10) or an error packet (0xff, e.g.
    "host not allowed" before the TCP accounts exist). Needs no credentials and logs nothing."""
    head = b""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.settimeout(2)
            while len(head) < 5:
                chunk = sock.recv(5 - len(head))
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return len(head) == 5 and head[4] in (10, 0xFF)


def instance(name: str, port: int | None = None, server_id: int | None = None, *,
             extra_args: tuple[str, ...] | list[str] = (), home: Path | None = None,
             env: Mapping[str, str] | None = None) -> MariaDbInstance:
    """Describe an instance; a default name (central/site1/site2) fills in its port and server id."""
    from devtools.services.common import port_offset

    if port is None or server_id is None:
        if name not in DEFAULT_INSTANCES:
            raise ServiceError(f"mariadb {name}: no default port/server id, give them explicitly")
        dport, dsid = DEFAULT_INSTANCES[name]
        port = port if port is not None else dport + port_offset()
        server_id = server_id if server_id is not None else dsid
    return MariaDbInstance(name=name, port=port, server_id=server_id, home=home or services_home(),
                           extra_args=tuple(extra_args), env=tuple(sorted((env or {}).items())))


def _install(inst: MariaDbInstance) -> None:
    """Create the system tables into a scratch dir, then rename, so a failed install leaves nothing."""
    tmp = inst.dir / "data.installing"
    shutil.rmtree(tmp, ignore_errors=True)
    inst.tmpdir.mkdir(parents=True, exist_ok=True)
    cmd = [_binary("mariadb-install-db"), "--no-defaults", f"--datadir={tmp}", "--auth-root-authentication-method=socket",
           "--skip-test-db", "--skip-name-resolve", f"--tmpdir={inst.tmpdir}"]
    cmd += ["--user=root"] if os.geteuid() == 0 else [f"--auth-root-socket-user={getpass.getuser()}"]
    run(cmd, what=f"mariadb {inst.name}: mariadb-install-db", timeout=120)
    tmp.rename(inst.datadir)


def _bootstrap_users(inst: MariaDbInstance) -> None:
    """Create/refresh the two TCP accounts, logging in over the socket as the OS user (unix_socket auth)."""
    os_user = "root" if os.geteuid() == 0 else getpass.getuser()
    conn = pymysql.connect(unix_socket=str(inst.socket), user=os_user, autocommit=True)
    try:
        with conn.cursor() as cur:
            for user, grants, extra in ((ADMIN_USER, "ALL PRIVILEGES", " WITH GRANT OPTION"),
                                        (REPL_USER, REPL_GRANTS, "")):
                password = secret(inst.home, user)
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, inst.host, password))
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, inst.host, password))
                cur.execute(f"GRANT {grants} ON *.* TO %s@%s{extra}", (user, inst.host))
    finally:
        conn.close()


def _state_file(inst: MariaDbInstance) -> Path:
    return inst.dir / "instance.json"


def start_mariadb(name: str, port: int | None = None, server_id: int | None = None, *,
                  extra_args: tuple[str, ...] | list[str] = (), home: Path | None = None,
                  timeout: float = 60, env: Mapping[str, str] | None = None) -> MariaDbInstance:
    """Start (or keep) the instance ``name``; a running one with other settings is restarted.

    Idempotent: when the instance already runs with the same port, server id, extra args and env this
    returns at once.
    """
    inst = instance(name, port, server_id, extra_args=extra_args, home=home, env=env)
    with locked(inst.home, f"mariadb-{name}"):
        return _start(inst, timeout)


def _start(inst: MariaDbInstance, timeout: float) -> MariaDbInstance:
    name = inst.name
    wanted = {"port": inst.port, "server_id": inst.server_id, "args": inst.server_args()}
    state = _state_file(inst)
    if inst.running():
        recorded = json.loads(state.read_text()) if state.exists() else {}
        if {k: recorded.get(k) for k in wanted} == wanted and recorded.get("env", {}) == dict(inst.env):
            return inst
        stop_pid(inst.pid(), marker=str(inst.datadir), what=f"mariadb {name}", timeout=timeout)  # lock is held
    if port_open(inst.port, inst.host):
        raise ServiceError(f"mariadb {name}: port {inst.host}:{inst.port} is taken by another process")
    inst.tmpdir.mkdir(parents=True, exist_ok=True)
    if not inst.datadir.exists():
        _install(inst)
    inst.pid_file.unlink(missing_ok=True)
    pid = spawn(inst.server_args(), log=inst.dir / "console.log", env=inst.server_env())
    wait_until(lambda: inst.socket.exists() and _greets(inst.port, inst.host), timeout=timeout,
               what=f"mariadb {name} (port {inst.port})", alive=lambda: pid_alive(pid), log=inst.error_log)
    wait_until(lambda: inst.pid() == pid, timeout=5, what=f"mariadb {name} pid file")
    marker = inst.dir / "users.done"
    if not marker.exists():
        _bootstrap_users(inst)
        marker.write_text("dbsync_admin, dbsync_repl created\n")
    state.write_text(json.dumps({**wanted, "env": dict(inst.env), "pid": pid}, indent=2) + "\n")
    return inst


def stop_mariadb(inst: MariaDbInstance | str, *, home: Path | None = None, timeout: float = 60) -> bool:
    """Stop by PID (SIGTERM = clean shutdown, SIGKILL after ``timeout``). True if it was running."""
    if isinstance(inst, str):
        inst = instance(inst, 0, 0, home=home)  # port/server id are irrelevant for stopping
    with locked(inst.home, f"mariadb-{inst.name}"):
        return stop_pid(inst.pid(), marker=str(inst.datadir), what=f"mariadb {inst.name}", timeout=timeout)


def destroy_mariadb(inst: MariaDbInstance) -> None:
    """Stop and delete the instance's files (for tests' extra instances)."""
    stop_mariadb(inst)
    shutil.rmtree(inst.dir, ignore_errors=True)


def start_replica(primary: MariaDbInstance, name: str, port: int, server_id: int, *,
                  timeout: float = 60) -> MariaDbInstance:
    """A fresh replica of `primary` by GTID with log_slave_updates (its binlog holds the primary's transactions
    under their GTIDs, as a replica a site fails over to must), replicating from the start of the primary's binlog.
    The primary's ``dbsync_repl`` (REPLICATION SLAVE) is the replication user."""
    replica = start_mariadb(name, port, server_id, extra_args=("--log-slave-updates",), home=primary.home,
                            timeout=timeout)
    with replica.admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute("STOP SLAVE")
        cur.execute("RESET SLAVE ALL")
        cur.execute("RESET MASTER")  # its own users' creation is not part of the primary's history
        cur.execute("SET GLOBAL gtid_slave_pos = ''")
        cur.execute("CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
                    "MASTER_USE_GTID=slave_pos", (primary.host, primary.port, REPL_USER,
                                                  secret(primary.home, REPL_USER)))
        cur.execute("START SLAVE")
    return replica


def wait_for_replica(primary: MariaDbInstance, replica: MariaDbInstance, timeout: float = 60) -> None:
    """Until the replica has applied everything the primary's binlog holds now."""
    with primary.admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        position = (cur.fetchone() or [""])[0]
    with replica.admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW SLAVE STATUS")
        names = [d[0] for d in cur.description or ()]
        status = dict(zip(names, cur.fetchone() or (), strict=False))
        if status.get("Slave_SQL_Running") != "Yes" or status.get("Slave_IO_Running") != "Yes":
            raise ServiceError(f"mariadb {replica.name}: does not replicate ({status})")
        cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", (position, timeout))
        result = (cur.fetchone() or [None])[0]
        if result != 0:
            raise ServiceError(f"mariadb {replica.name}: not caught up with {primary.name} at {position} "
                               f"after {timeout} s ({status})")
