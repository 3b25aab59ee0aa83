"""The path past one broker machine: two Artemis brokers in a cluster (examples/artemis/cluster-pair.xml), grouped
messages sent to one of them and consumed from both. Every message arrives once, and each group (a site) goes to one
consumer, in the order sent, whichever broker that consumer is on. Plain STOMP with the header the senders set."""

from __future__ import annotations

import random
import time
import uuid as uuidlib
from collections import defaultdict

import pytest
import stomp

from devtools.services import artemis_cluster

pytestmark = [pytest.mark.slow, pytest.mark.lane2]

GROUPS = 6
MESSAGES = 600


class _Collect(stomp.ConnectionListener):
    def __init__(self, name: str, seen: dict[str, list[tuple[str, int]]], conn: stomp.Connection12) -> None:
        self.name, self.seen, self.conn = name, seen, conn

    def on_message(self, frame) -> None:
        self.seen[frame.headers.get("_AMQ_GROUP_ID", "?")].append((self.name, int(frame.body)))
        self.conn.ack(frame.headers["ack"], frame.headers["subscription"])


def _connect(b) -> stomp.Connection12:
    conn = stomp.Connection12([(b.host, b.stomp_port)])
    conn.connect(b.user, b.password, wait=True)
    return conn


@pytest.fixture(scope="module")
def pair(services):
    first, second = artemis_cluster.start_pair()
    try:
        yield first, second
    finally:
        artemis_cluster.stop_pair()


def test_two_clustered_brokers_keep_each_group_on_one_consumer_and_lose_nothing(pair) -> None:
    first, second = pair
    queue = f"test.cluster.{uuidlib.uuid4().hex[:8]}"
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    consumers = []
    for name, b in (("on-first", first), ("on-second", second)):
        conn = _connect(b)
        conn.set_listener("c", _Collect(name, seen, conn))
        conn.subscribe(queue, id=name, ack="client-individual",
                       headers={"subscription-type": "ANYCAST", "consumer-window-size": "1024"})
        consumers.append(conn)
    time.sleep(3)  # the cluster connection tells each broker of the other's consumer
    producer = _connect(second)  # the REMOTE handler's broker asks the LOCAL one where each group goes
    try:
        order = random.Random(29)  # no pattern the brokers' round robin could follow by chance
        for n in range(MESSAGES):
            producer.send(queue, str(n), headers={"persistent": "true", "destination-type": "ANYCAST",
                                                  "JMSXGroupID": f"site{order.randrange(GROUPS)}"})
        deadline = time.monotonic() + 60
        while sum(len(v) for v in seen.values()) < MESSAGES and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # nothing more (no duplicate) arrives
        got = sorted(n for values in seen.values() for _name, n in values)
        assert got == list(range(MESSAGES))  # each once
        owners = {group: {name for name, _n in values} for group, values in seen.items()}
        assert len(owners) == GROUPS and all(len(names) == 1 for names in owners.values()), owners
        for group, values in seen.items():
            assert [n for _name, n in values] == sorted(n for _name, n in values), group
        # the consumer on the first broker got groups sent to the second: the cluster routed them
        assert {name for names in owners.values() for name in names} == {"on-first", "on-second"}, owners

        # the second broker's consumer goes (its worker stopped): its groups stay bound to that broker (Artemis does
        # not redistribute grouped messages); they wait there, and a worker that connects to it again gets them
        consumers[1].disconnect()
        time.sleep(2)
        for n in range(MESSAGES, 2 * MESSAGES):
            producer.send(queue, str(n), headers={"persistent": "true", "destination-type": "ANYCAST",
                                                  "JMSXGroupID": f"site{order.randrange(GROUPS)}"})
        time.sleep(5)
        waiting = 2 * MESSAGES - sum(len(v) for v in seen.values())
        assert 0 < waiting < MESSAGES  # the first broker's groups went on, the second's wait
        again = _connect(second)
        again.set_listener("c", _Collect("on-second", seen, again))
        again.subscribe(queue, id="again", ack="client-individual",
                        headers={"subscription-type": "ANYCAST", "consumer-window-size": "1024"})
        consumers.append(again)
        deadline = time.monotonic() + 60
        while sum(len(v) for v in seen.values()) < 2 * MESSAGES and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert sorted(n for values in seen.values() for _name, n in values) == list(range(2 * MESSAGES))
        owners = {group: {name for name, _n in values} for group, values in seen.items()}
        assert all(len(names) == 1 for names in owners.values()), owners  # each site on one broker throughout
        for group, values in seen.items():
            assert [n for _name, n in values] == sorted(n for _name, n in values), group
    finally:
        for conn in [*consumers, producer]:
            if conn.is_connected():
                conn.disconnect()
