"""A throwaway Apache Artemis broker with a core, a STOMP and a STOMP+TLS acceptor on 127.0.0.1.

The distribution is downloaded once (with Maven, from Maven Central) into the user cache, checked
against a pinned SHA-512 and extracted there; the broker instance (config, journal, logs) lives in
``<home>/artemis``. ``artemis create`` insists on a ``--password`` argument, so it gets a placeholder
and the real password is written afterwards, hashed the way Artemis hashes it, into
``etc/artemis-users.properties``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devtools.services import broker_config
from devtools.services.common import (
    HOST,
    ServiceError,
    cache_dir,
    locked,
    pid_alive,
    port_offset,
    port_open,
    read_pid,
    run,
    secret,
    services_home,
    spawn,
    stop_pid,
    wait_until,
)
from devtools.services.tls import TlsFiles, ensure_tls

VERSION = "2.40.0"
TARBALL = f"apache-artemis-{VERSION}-bin.tar.gz"
TARBALL_SHA512 = ("270a00dc3028fb3b93c6aa09aa3e40fbe76015029e5308e0aac241589299a72d"
                  "ac9bb50a10e7e86ad66185e2d8bc7224626810df12f1ee05694322054ad32700")
MAVEN_ARTIFACT = f"org.apache.activemq:apache-artemis:{VERSION}:tar.gz:bin"
CENTRAL_URL = f"https://repo1.maven.org/maven2/org/apache/activemq/apache-artemis/{VERSION}/{TARBALL}"
USER = "dbsync"
JAVA_MEMORY = "2G"  # heap headroom; paging starts at broker.xml's global-max-size: a backlog goes to disk
DEFAULT_PORTS = {"core": 61616, "stomp": 61613, "stomp_tls": 61614}


@dataclass(frozen=True)
class ArtemisBroker:
    """One broker instance and its endpoints."""

    home: Path
    core_port: int
    stomp_port: int
    tls_port: int
    host: str = HOST
    user: str = USER

    @property
    def dir(self) -> Path:
        return self.home / "artemis"

    @property
    def pid_file(self) -> Path:
        return self.home / "artemis.pid"

    @property
    def log(self) -> Path:
        return self.home / "artemis.log"

    @property
    def password(self) -> str:
        return secret(self.home, "artemis")

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def running(self) -> bool:
        """Our JVM (instance dir on its command line) is alive and STOMP accepts a CONNECT."""
        return pid_alive(self.pid(), f"-Dartemis.instance={self.dir}") and \
            stomp_probe(self.host, self.stomp_port, self.user, self.password) == "CONNECTED"


def broker(home: Path | None = None) -> ArtemisBroker:
    """The broker of a services home, on the default ports (+ DBSYNC_SERVICES_PORT_OFFSET)."""
    off = port_offset()
    return ArtemisBroker(home=home or services_home(), core_port=DEFAULT_PORTS["core"] + off,
                         stomp_port=DEFAULT_PORTS["stomp"] + off, tls_port=DEFAULT_PORTS["stomp_tls"] + off)


def stomp_probe(host: str, port: int, user: str, password: str, *, tls_ca: Path | None = None,
                vhost: str | None = None) -> str | None:
    """Send a raw STOMP CONNECT; return ``CONNECTED``, ``ERROR: <message>``, or None if nothing answered. `vhost`:
    the host header (RabbitMQ's virtual host), the host by default."""
    try:
        sock = socket.create_connection((host, port), timeout=3)
    except OSError:
        return None
    try:
        if tls_ca is not None:
            sock = ssl.create_default_context(cafile=str(tls_ca)).wrap_socket(sock, server_hostname=host)
        sock.sendall(f"CONNECT\naccept-version:1.2\nhost:{vhost or host}\nlogin:{user}\npasscode:{password}\n\n\0".encode())
        data = b""
        while b"\0" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        frame = data.lstrip(b"\r\n")
        if frame.startswith(b"CONNECTED"):
            sock.sendall(b"DISCONNECT\n\n\0")
            return "CONNECTED"
        if frame.startswith(b"ERROR"):
            m = re.search(rb"^message:(.*)$", frame, re.M)
            return "ERROR: " + (m.group(1).decode(errors="replace") if m else "?")
        return None
    except OSError:
        return None
    finally:
        sock.close()


def ensure_distribution() -> Path:
    """ARTEMIS_HOME in the user cache; downloads and verifies the tarball when missing."""
    cache = cache_dir()
    dist = cache / f"apache-artemis-{VERSION}"
    if (dist / "bin" / "artemis").exists():
        return dist
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / TARBALL
    if not tarball.exists():
        _download(tarball)
    digest = hashlib.sha512(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA512:
        tarball.unlink()
        raise ServiceError(f"artemis: {tarball} has SHA-512 {digest[:16]}…, expected {TARBALL_SHA512[:16]}… "
                           "(deleted; run again to re-download)")
    tmp = cache / f".extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="tar")
    (tmp / f"apache-artemis-{VERSION}").rename(dist)
    shutil.rmtree(tmp, ignore_errors=True)
    return dist


def _download(tarball: Path) -> None:
    """Maven (uses its settings/mirrors/proxy); plain HTTPS from Maven Central when mvn is absent."""
    if shutil.which("mvn"):
        run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={MAVEN_ARTIFACT}",
             f"-DoutputDirectory={tarball.parent}"], what="artemis: mvn dependency:copy", timeout=900)
        if not tarball.exists():
            raise ServiceError(f"artemis: mvn finished but {tarball} is missing")
        return
    part = tarball.with_suffix(".part")
    try:
        with urllib.request.urlopen(CENTRAL_URL, timeout=60) as resp, open(part, "wb") as out:  # noqa: S310
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise ServiceError(f"artemis: download {CENTRAL_URL} failed: {exc}") from exc
    part.rename(tarball)


def _artemis_hash(password: str) -> str:
    """Artemis' default codec: ENC(iterations:salt:PBKDF2WithHmacSHA1 512-bit), hex encoded."""
    salt = secrets.token_bytes(32)
    digest = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, 1024, dklen=64)
    return f"ENC(1024:{salt.hex().upper()}:{digest.hex().upper()})"


def _acceptors(b: ArtemisBroker, tls: TlsFiles) -> str:
    tcp = "tcpSendBufferSize=1048576;tcpReceiveBufferSize=1048576;useEpoll=true"
    return (
        "<acceptors>\n"
        f'         <acceptor name="artemis">tcp://{b.host}:{b.core_port}?protocols=CORE;{tcp}</acceptor>\n'
        f'         <acceptor name="stomp">tcp://{b.host}:{b.stomp_port}?protocols=STOMP;{tcp}</acceptor>\n'
        f'         <acceptor name="stomp-tls">tcp://{b.host}:{b.tls_port}?protocols=STOMP;{tcp};sslEnabled=true;'
        f"keyStoreType=PKCS12;keyStorePath={tls.keystore};keyStorePassword={tls.keystore_password}</acceptor>\n"
        "      </acceptors>"
    )


#: per-site broker users (roles dbsync-sender and dbsync-site-<site>), as docs/installation.md onboards a site
SITE_USERS = ("site1", "site2", "site3", "site4")
#: central's own broker user (role dbsync-receiver): what the documented receiver logs in as
CENTRAL_USER = "central"
#: the sync destinations examples/artemis/broker.xml is rendered for: the demo's, and the trust tests' family of
#: one-word destinations `test.trust.<name>` (Artemis allows `*` inside a match, `#` only at its end)
SYNC_DESTINATIONS = ("demo.openmrs.sync", "test.trust.*")


def site_password(home: Path, site: str) -> str:
    return secret(home, f"artemis-{site}")


def _create(b: ArtemisBroker, dist: Path, tls: TlsFiles, core_extra: str = "") -> None:
    """``artemis create``, then etc/broker.xml = examples/artemis/broker.xml rendered for this machine (plus
    `core_extra` in its core section: a cluster's), and the users with their roles; re-run when any of it changes."""
    # the shipped file, made this machine's the way the docs tell an operator (broker_config)
    xml = broker_config.render(broker_config.example_text(), destinations=SYNC_DESTINATIONS, sites=SITE_USERS,
                               acceptors=_acceptors(b, tls), name=b.host)
    if core_extra:
        xml = xml.replace("   </core>", f"{core_extra}\n   </core>", 1)
    wanted = {"version": VERSION, "memory": JAVA_MEMORY, "users": [CENTRAL_USER, *SITE_USERS],
              "broker_xml": hashlib.sha256(xml.encode()).hexdigest()}
    stamp = b.dir / "dbsync-instance.json"
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_ARGS", "ARTEMIS_INSTANCE")}
    run([str(dist / "bin" / "artemis"), "create", str(b.dir), "--user", b.user,
         # Placeholder only: the real password is set below in artemis-users.properties.
         "--password", "placeholder-replaced-after-create",
         "--require-login", "--silent", "--force", "--no-web", "--no-amqp-acceptor", "--no-hornetq-acceptor",
         "--no-mqtt-acceptor", "--host", b.host, "--nio", "--no-autotune", "--java-memory", JAVA_MEMORY],
        what="artemis create", env=env, timeout=120)
    etc = b.dir / "etc"
    (etc / "broker.xml").write_text(xml)
    os.chmod(etc / "broker.xml", 0o600)  # it holds the keystore password
    users = etc / "artemis-users.properties"
    users.write_text(f"{b.user} = {_artemis_hash(b.password)}\n"
                     f"{CENTRAL_USER} = {_artemis_hash(site_password(b.home, CENTRAL_USER))}\n"
                     + "".join(f"{site} = {_artemis_hash(site_password(b.home, site))}\n" for site in SITE_USERS))
    os.chmod(users, 0o600)
    (etc / "artemis-roles.properties").write_text(broker_config.roles(b.user, CENTRAL_USER, SITE_USERS))
    stamp.write_text(json.dumps(wanted) + "\n")


def start_artemis(home: Path | None = None, *, timeout: float = 90) -> ArtemisBroker:
    """Start (or keep) the broker; returns once STOMP accepts a CONNECT with the dbsync user."""
    b = broker(home)
    with locked(b.home, "artemis"):
        return _start(b, timeout)


def _start(b: ArtemisBroker, timeout: float, core_extra: str = "") -> ArtemisBroker:
    if b.running():
        return b
    if pid_alive(b.pid(), f"-Dartemis.instance={b.dir}"):
        # our JVM is alive but does not answer STOMP (e.g. out of memory): replace it
        stop_pid(b.pid(), marker=f"-Dartemis.instance={b.dir}", what="artemis (unresponsive)", timeout=30)
        wait_until(lambda: not any(port_open(p, b.host) for p in (b.core_port, b.stomp_port, b.tls_port)),
                   timeout=15, what="artemis ports to close")
    for port in (b.core_port, b.stomp_port, b.tls_port):
        if port_open(port, b.host):
            raise ServiceError(f"artemis: port {b.host}:{port} is taken by another process")
    dist = ensure_distribution()
    tls = ensure_tls(b.home)
    _create(b, dist, tls, core_extra)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_ARGS", "ARTEMIS_INSTANCE")}
    pid = spawn([str(b.dir / "bin" / "artemis"), "run"], log=b.log, cwd=b.dir, env=env)
    b.pid_file.write_text(f"{pid}\n")

    def ready() -> bool:
        answer = stomp_probe(b.host, b.stomp_port, b.user, b.password)
        if answer and answer.startswith("ERROR"):
            raise ServiceError(f"artemis: STOMP CONNECT refused: {answer}")
        return answer == "CONNECTED" and port_open(b.tls_port, b.host) and pid_alive(pid)

    wait_until(ready, timeout=timeout, what=f"artemis (STOMP port {b.stomp_port})", alive=lambda: pid_alive(pid),
               log=b.log)
    return b


def stop_artemis(home: Path | None = None, *, timeout: float = 30) -> bool:
    """SIGTERM the JVM (Artemis shuts down cleanly on it), SIGKILL after ``timeout``."""
    b = broker(home)
    with locked(b.home, "artemis"):
        stopped = stop_pid(b.pid(), marker=f"-Dartemis.instance={b.dir}", what="artemis", timeout=timeout)
        b.pid_file.unlink(missing_ok=True)
    return stopped
