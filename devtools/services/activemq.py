"""A throwaway ActiveMQ Classic broker (embedded, from Maven Central's `activemq-all` jar) on 127.0.0.1.

The jar is downloaded once into the user cache and checked against a pinned SHA-512; a small launcher
(activemq/DbsyncActiveMq.java) is compiled against it there, once per version of its source. The instance (KahaDB,
the properties file with the users, the log) lives in ``<home>/activemq``. It has a STOMP and a STOMP+TLS connector,
per-site users (group `senders`) and central's (group `admins`), stamps the authenticated user on every message
(populateJMSXUserID) and runs the statistics plugin `dbsync status` reads.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.request
from pathlib import Path

from devtools.services.artemis import stomp_probe
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
    services_home,
    spawn,
    stop_pid,
    wait_until,
    write_private,
)
from devtools.services.endpoint import CENTRAL_USER, SITE_USERS, BrokerEndpoint, user_password
from devtools.services.tls import ensure_tls

VERSION = "6.1.7"
#: group:artifact:version → SHA-512 of its jar: the broker, the JAAS principals SimpleAuthenticationPlugin uses
#: (not in activemq-all), the log4j its bundled SLF4J binding logs through (not in it either), and the XStream and
#: Jettison its `jms-map-json` STOMP transformation needs (the statistics plugin answers in a MapMessage; ActiveMQ's
#: own distribution ships them in lib/optional)
JARS = {
    f"org.apache.activemq:activemq-all:{VERSION}": "60ab1a0ac1ae9ffa5117ae024b821e4ecf711a1668eaaa2ebc4c8f28995d7e1a"
                                                   "da9bbf952e995f1380ef9f6be02a41d8599bf2fbf880ae2275c7a74946034cbc",
    f"org.apache.activemq:activemq-jaas:{VERSION}": "676e7cb0e5f40c293781032763faee29fe693324e776ce2b85b4a3a74c7a66fc"
                                                    "e52ae4a1698dcc5261187a597f95d07c60fc6253d5db3d9619ab268e91636a6d",
    "org.apache.logging.log4j:log4j-api:2.24.3": "d936ac37b3d7ca2e4370ef122629c5ceb0bef60a6c08a3bd8bb278204dbed84b"
                                                 "b888aaa307c58e80e4e9d645b73792433f52adcccd30378fbac99b1d271042f7",
    "org.apache.logging.log4j:log4j-core:2.24.3": "61332e92ea6ef6656994105a675eb8de85ec859f07cde9da5ef16a22cbf2e0d7"
                                                  "695348e04e066dd1a1ff0146ec03a8884974319d4f71155db9c9ab0d073197ef",
    "com.thoughtworks.xstream:xstream:1.4.21": "dbaf02229503c9c69198c7f90f361a20d68c6f1a5c6238d298c13bf8c5090b1e"
                                               "ba99307c668481a4c7901fe23a7175f6a5218ccf40c45422bc46894f29cc87c5",
    "org.codehaus.jettison:jettison:1.5.4": "afde3c34e3229c1999dc847b5e2bbd243c48feff9659ba043ccc677d34d9d8d6"
                                            "2f4e02c3cfec8d4641b7a3ea7f462b0993fcba2319096a432526c5ca17fab49a",
    "io.github.x-stream:mxparser:1.2.2": "c6578e6d5356b9ff6f80ce2fada028387f78b57099e85eba49b4e80f057fd124"
                                         "c338df2193190072e65b71d4f10d749e3890fae11738e5d7350bf44125fb7d7e",
    "xmlpull:xmlpull:1.1.3.1": "54d1090623497e81270b2af633268656e8855e1edce2217886431039516a391b"
                               "a9f8d8db3c21a0b5e51c7f7cb672d63ebe77be75708b760b06f399486960f261",
}
LAUNCHER = Path(__file__).with_name("activemq") / "DbsyncActiveMq.java"
ADMIN = "dbsync"
#: ports next to Artemis's (61613/61614), moved by DBSYNC_SERVICES_PORT_OFFSET like every other
DEFAULT_PORTS = {"stomp": 61633, "stomp_tls": 61634}
#: kind|destination pattern|read|write|admin groups: central reads everything; a site sends (and creates the
#: destination it sends to) but reads nothing of another site's; advisory topics are every connection's
ACL = ("queue|>|admins|admins,senders|admins,senders",
       "topic|>|admins|admins,senders|admins,senders",
       "topic|ActiveMQ.Advisory.>|admins,senders|admins,senders|admins,senders")


def endpoint(home: Path | None = None) -> BrokerEndpoint:
    home = home or services_home()
    return BrokerEndpoint("activemq", home, HOST, DEFAULT_PORTS["stomp"] + port_offset(),
                          DEFAULT_PORTS["stomp_tls"] + port_offset(), str(ensure_tls(home).ca_file))


def _dir(home: Path) -> Path:
    return home / "activemq"


def _marker(home: Path) -> str:
    return str(_dir(home) / "broker.properties")


def ensure_jars() -> list[Path]:
    """The jars in the user cache, each downloaded (Maven, else HTTPS from Maven Central) and checked once."""
    return [_ensure_jar(coordinates, digest) for coordinates, digest in JARS.items()]


def _ensure_jar(coordinates: str, wanted: str) -> Path:
    group, artifact, version = coordinates.split(":")
    jar = cache_dir() / f"{artifact}-{version}.jar"
    if jar.exists():
        return jar
    jar.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("mvn"):
        run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={coordinates}",
             f"-DoutputDirectory={jar.parent}"], what=f"activemq: mvn dependency:copy {artifact}", timeout=900)
    else:
        url = f"https://repo1.maven.org/maven2/{group.replace('.', '/')}/{artifact}/{version}/{jar.name}"
        part = jar.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:  # noqa: S310
                shutil.copyfileobj(resp, out)
        except OSError as exc:
            raise ServiceError(f"activemq: download {url} failed: {exc}") from exc
        part.rename(jar)
    digest = hashlib.sha512(jar.read_bytes()).hexdigest()
    if digest != wanted:
        jar.unlink()
        raise ServiceError(f"activemq: {jar} has SHA-512 {digest[:16]}…, expected {wanted[:16]}… "
                           "(deleted; run again to download it again)")
    return jar


def ensure_launcher(jars: list[Path]) -> Path:
    """The compiled launcher (a directory of classes), built once per version of its source and of the jars."""
    source = LAUNCHER.read_bytes()
    stamp = hashlib.sha256(source + VERSION.encode()).hexdigest()[:16]
    classes = cache_dir() / f"activemq-launcher-{stamp}"
    if (classes / "DbsyncActiveMq.class").exists():
        return classes
    if not shutil.which("javac"):
        raise ServiceError("activemq: javac not found (install a JDK: openjdk-17-jdk-headless)")
    tmp = classes.with_name(classes.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(["javac", "-nowarn", "-cp", ":".join(map(str, jars)), "-d", str(tmp), str(LAUNCHER)], what="activemq: javac launcher")
    shutil.rmtree(classes, ignore_errors=True)
    tmp.rename(classes)
    return classes


def _properties(b: BrokerEndpoint) -> str:
    tls = ensure_tls(b.home)
    users = {ADMIN: "admins", CENTRAL_USER: "admins", **dict.fromkeys(SITE_USERS, "senders")}
    lines = [f"data={_dir(b.home) / 'data'}", f"host={b.host}", f"stomp_port={b.stomp_port}",
             f"tls_port={b.tls_port}", f"keystore={tls.keystore}", f"keystore.password={tls.keystore_password}",
             "temp.groups=admins,senders"]
    for user, group in users.items():
        lines += [f"user.{user}={user_password(b.home, user)}", f"groups.{user}={group}"]
    lines += [f"acl.{number}={entry}" for number, entry in enumerate(ACL)]
    return "\n".join(lines) + "\n"


def running(b: BrokerEndpoint) -> bool:
    return pid_alive(read_pid(_dir(b.home) / "pid"), _marker(b.home)) and \
        stomp_probe(b.host, b.stomp_port, CENTRAL_USER, user_password(b.home, CENTRAL_USER)) == "CONNECTED"


def start_activemq(home: Path | None = None, *, timeout: float = 90) -> BrokerEndpoint:
    """Start (or keep) the broker; returns once STOMP accepts central's CONNECT."""
    b = endpoint(home)
    with locked(b.home, "activemq"):
        if running(b):
            return b
        pid_file = _dir(b.home) / "pid"
        stop_pid(read_pid(pid_file), marker=_marker(b.home), what="activemq (unresponsive)", timeout=20)
        for port in (b.stomp_port, b.tls_port):
            if port_open(port, b.host):
                raise ServiceError(f"activemq: port {b.host}:{port} is taken by another process")
        jars = ensure_jars()
        classes = ensure_launcher(jars)
        _dir(b.home).mkdir(parents=True, exist_ok=True)
        write_private(Path(_marker(b.home)), _properties(b))
        log = _dir(b.home) / "activemq.log"
        pid = spawn(["java", "-Xmx512m", "-cp", ":".join(map(str, [*jars, classes])), "DbsyncActiveMq", _marker(b.home)], log=log,
                    cwd=_dir(b.home))
        pid_file.write_text(f"{pid}\n")
        wait_until(lambda: running(b) and port_open(b.tls_port, b.host), timeout=timeout,
                   what=f"activemq (STOMP port {b.stomp_port})", alive=lambda: pid_alive(pid), log=log)
    return b


def kill_activemq(home: Path | None = None) -> None:
    """kill -9 of the broker (tests: nothing it confirmed may be lost)."""
    b = endpoint(home)
    pid = read_pid(_dir(b.home) / "pid")
    if pid_alive(pid, _marker(b.home)):
        import os
        import signal

        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid) and not port_open(b.stomp_port, b.host) and not port_open(b.tls_port, b.host),
                   timeout=30, what="activemq to die")


def stop_activemq(home: Path | None = None, *, timeout: float = 30) -> bool:
    home = home or services_home()
    with locked(home, "activemq"):
        return stop_pid(read_pid(_dir(home) / "pid"), marker=_marker(home), what="activemq", timeout=timeout)
