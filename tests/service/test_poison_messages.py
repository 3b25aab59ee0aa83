"""Issue 10 case 5: whatever a message contains, it is parked with one line naming what is wrong and the rest applies.

A fuzz run through the real broker: valid messages from the real sender stages, interleaved with ≥ 2,000 mutations
of them (lists and objects where strings are expected, references with list uuids or list tables, broken base64,
impossible dates, missing keys, wrong types in `source`) and raw garbage bodies, all published to Artemis and
consumed and applied by one `dbsync receiver` process. Every valid message must be applied, every bad one parked,
and the receiver must never restart a part. (Before, a `$ref` whose uuid was a list crash-looped apply: the batch
prefetch put the list into a set, outside the per-message savepoints.)
"""

from __future__ import annotations

import random
import threading
import time
import uuid as uuidlib
import zlib
from typing import Any

import orjson
import pytest
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import new_person
from test_receiver_e2e import _start, _stop

from dbsync_cli.broker import open_connection
from devtools.field.hostile import GARBAGE, mutate

pytestmark = pytest.mark.lane2

MUTATIONS = 2_100


class _Receipt:
    def __init__(self) -> None:
        self.got = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        self.got.set()


def test_poison_messages_through_the_broker_never_stop_the_valid_ones(openmrs_db, services, tmp_path,
                                                                       broker_settings) -> None:
    destination = f"test.poison.{uuidlib.uuid4().hex[:10]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    names = {f"Valid{i}": new_person(site, given=f"Valid{i}")[1] for i in range(60)}
    valid = site.messages()
    assert len(valid) >= 180
    rng = random.Random(20261201)
    mutants = [mutate(rng.choice(valid), rng, n) for n in range(MUTATIONS)]
    frames: list[tuple[bytes, str]] = [(orjson.dumps(m), f"fuzz-{n}") for n, m in enumerate(mutants)]
    frames += [(body, f"garbage-{n}") for n, body in enumerate(GARBAGE)]
    rng.shuffle(frames)
    step = len(frames) // len(valid)  # valid messages keep their order, spread through the mutants
    for index, message in enumerate(valid):
        frames.insert(index * (step + 1), (orjson.dumps(message), message["id"]))

    sent = _as_sent(frames, rng)
    assert sum(1 for _, _, h in sent if h.get("dbsync-rows")) > 50  # v1 messages and v2 envelopes mixed

    receipt = _Receipt()
    conn = open_connection(broker_settings, listener=receipt)
    try:
        for index, (body, message_id, extra) in enumerate(sent):
            headers = {"persistent": "true", "destination-type": "ANYCAST", "dbsync-id": message_id,
                       "dbsync-site": "site1", **extra}
            if index == len(sent) - 1:
                headers["receipt"] = "poison-last"
            conn.send(destination, body, headers=headers)
        assert receipt.got.wait(30), "no receipt from the broker"
    finally:
        conn.disconnect()

    log = tmp_path / "receiver.log"
    proc = _start(["receiver", "--config", str(central.config)], central.env, log)
    try:
        wanted = {m["id"] for m in valid}
        deadline, last, quiet = time.monotonic() + 300, -1, 0
        while time.monotonic() < deadline and quiet < 3:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
            handled = {r[0] for r in central.sql(f"SELECT message_id FROM `{central.schema}`.applied_message")}
            inbox = central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox")[0][0]
            done = wanted <= handled and inbox == 0 and len(handled) == last
            quiet, last = (quiet + 1 if done else 0), len(handled)
    finally:
        _stop(proc, log)
    text = log.read_text()
    assert "restarting" not in text and "Traceback" not in text, text[-3000:]
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox") == [(0,)]
    # every valid message applied: each person's name arrived as the site has it
    wanted_names = {uuid: given for given, uuid in names.items()}
    got = dict(central.sql("SELECT uuid, given_name FROM person_name WHERE uuid IN (" +
                           ", ".join(["%s"] * len(wanted_names)) + ")", tuple(wanted_names)))
    assert got == wanted_names
    applied = {r[0] for r in central.sql(f"SELECT message_id FROM `{central.schema}`.applied_message")}
    assert {m["id"] for m in valid} <= applied
    # the bad ones are parked with a one-line reason (a mutant may also be harmless and apply: that is fine)
    reasons = [r[0] for r in central.sql(f"SELECT reason FROM `{central.schema}`.receiver_retry_queue")]
    assert len(reasons) > MUTATIONS // 2
    assert all(reason and "\n" not in reason and "Traceback" not in reason for reason in reasons)
    # an envelope's bad members are parked one by one, each with its own reason (the reason they were parked with:
    # entries that share a cause are retried through one representative, so most keep it)
    members = central.sql(f"SELECT reason FROM `{central.schema}`.receiver_retry_queue WHERE message_id LIKE %s",
                          ("env-%#%",))
    assert len(members) >= 4 and all(r[0] for r in members), reasons
    broken = central.sql(f"SELECT reason FROM `{central.schema}`.receiver_retry_queue WHERE message_id = 'env-broken'")
    assert len(broken) == 1 and broken[0][0].startswith("malformed JSON")  # a deflate body that does not inflate
    drop_schema(central)


def _as_sent(frames: list[tuple[bytes, str]], rng: random.Random) -> list[tuple[bytes, str, dict[str, str]]]:
    """Runs of the frames packed into wire-v2 envelopes (some deflated, some with a broken deflate stream), the
    rest sent one message each; garbage bodies always alone. Order is kept throughout."""
    out: list[tuple[bytes, str, dict[str, str]]] = []
    index = 0
    while index < len(frames):
        size = rng.randint(1, 20)
        run = frames[index:index + size]
        index += size
        if rng.random() < 0.5:
            out.extend((body, message_id, {}) for body, message_id in run)
            continue
        members: list[Any] = []
        for body, message_id in run:
            try:
                members.append(orjson.loads(body))
            except orjson.JSONDecodeError:
                out.append((body, message_id, {}))
        if not members:
            continue
        envelope_id = f"env-{len(out)}"
        body = orjson.dumps({"v": 2, "id": envelope_id, "site": "site1", "snapshot": False, "messages": members})
        headers = {"dbsync-rows": str(len(members))}
        if rng.random() < 0.5:
            body = zlib.compress(body)
            headers["dbsync-encoding"] = "deflate"
        out.append((body, envelope_id, headers))
    out.append((b"\x00 not deflate", "env-broken", {"dbsync-rows": "3", "dbsync-encoding": "deflate"}))
    return out
