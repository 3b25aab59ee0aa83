"""Two Artemis brokers in one cluster (examples/artemis/cluster-pair.xml added to each one's broker.xml), for the
service test of the path past one broker machine: message redistribution between them, message groups kept by a
LOCAL grouping handler on the first and a REMOTE one on the second. Each has a home of its own under the services
home and ports of its own (the usual ones + 100 and + 200, + DBSYNC_SERVICES_PORT_OFFSET).
"""

from __future__ import annotations

import re
from pathlib import Path

from devtools.services import artemis
from devtools.services.common import locked, port_offset, secret, services_home, stop_pid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "artemis" / "cluster-pair.xml"
OFFSETS = (100, 200)


def node(number: int, home: Path | None = None) -> artemis.ArtemisBroker:
    """Cluster node `number` (0 or 1)."""
    base = (home or services_home()) / f"cluster-{number}"
    off = port_offset() + OFFSETS[number]
    ports = artemis.DEFAULT_PORTS
    return artemis.ArtemisBroker(home=base, core_port=ports["core"] + off, stomp_port=ports["stomp"] + off,
                                 tls_port=ports["stomp_tls"] + off)


def core_block(me: artemis.ArtemisBroker, other: artemis.ArtemisBroker, handler: str, password: str) -> str:
    """The children of the example's <cluster-pair>, made this node's as the example's comment tells an operator."""
    text = EXAMPLE.read_text()
    body = re.search(r"<cluster-pair>\n(.*)</cluster-pair>", text, re.S)
    assert body is not None, f"{EXAMPLE}: no <cluster-pair> element"
    return (body.group(1).replace("THIS-BROKER:61616", f"{me.host}:{me.core_port}")
            .replace("OTHER-BROKER:61616", f"{other.host}:{other.core_port}")
            .replace("<type>LOCAL</type>", f"<type>{handler}</type>")
            .replace("CHANGE-ME-CLUSTER", password).rstrip())


def start_pair(home: Path | None = None, timeout: float = 120) -> tuple[artemis.ArtemisBroker, artemis.ArtemisBroker]:
    """Both nodes running (each waits until its STOMP answers); the first holds the LOCAL grouping handler."""
    first, second = node(0, home), node(1, home)
    password = secret(home or services_home(), "artemis-cluster")
    for me, other, handler in ((first, second, "LOCAL"), (second, first, "REMOTE")):
        me.home.mkdir(parents=True, exist_ok=True)
        with locked(me.home, "artemis"):
            artemis._start(me, timeout, core_block(me, other, handler, password))
    return first, second


def stop_pair(home: Path | None = None, timeout: float = 30) -> None:
    for number in (0, 1):
        b = node(number, home)
        with locked(b.home, "artemis"):
            stop_pid(b.pid(), marker=f"-Dartemis.instance={b.dir}", what=f"artemis cluster node {number}",
                     timeout=timeout)
            b.pid_file.unlink(missing_ok=True)
