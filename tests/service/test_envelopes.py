"""Wire-v2 envelopes at central (real MariaDB): an envelope parked whole is unpacked by the retry queue, and a
delivery holding more messages than its header said is still applied in transactions of `batch_messages`."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import new_person

from dbsync_cli import wire


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    c = make_central(openmrs_db, tmp_path, broker_settings)
    yield c
    drop_schema(c)


def test_an_envelope_kept_whole_in_the_retry_queue_is_unpacked_and_applied(central, openmrs_db, services, tmp_path,
                                                                            broker_settings) -> None:
    """Over the size limit (or parked by a receiver that predates envelopes), an envelope is one error; once the
    limit allows it, `retry again` makes one entry per message, and the next pass applies them."""
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    people = [new_person(site, given=f"Env{i}")[1] for i in range(3)]
    messages = site.messages()
    packed = wire.envelope(messages)
    size = len(wire.dumps(packed))
    small = {**central.env, "DBSYNC_BROKER__MAX_MESSAGE_BYTES": str(size - 1)}
    run = dbsync("apply", "--config", str(central.config), env=small, stdin=wire.dumps(packed) + b"\n")
    outcomes = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert [(o["outcome"], o["message_id"]) for o in outcomes] == [("error", packed["id"])]
    assert f"message of {size} bytes exceeds the {size - 1}-byte limit" in outcomes[0]["reason"]

    first = [orjson.loads(line) for line in dbsync("retry", "again", "--config", str(central.config),
                                                   env=central.env).stdout.splitlines()]
    assert first[0] == {"message_id": packed["id"], "outcome": "retry",
                        "reason": f"unpacked into {len(messages)} entries"}
    assert Counter(o["outcome"] for o in first[1:]) == Counter({"applied": len(messages)})  # the same pass
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]
    found = central.sql("SELECT given_name FROM person_name WHERE uuid IN (%s, %s, %s) ORDER BY given_name",
                        tuple(people))
    assert found == [("Env0",), ("Env1",), ("Env2",)]


def test_a_delivery_holding_more_than_its_header_says_is_applied_in_bounded_transactions(central, openmrs_db,
                                                                                         services, tmp_path,
                                                                                         broker_settings) -> None:
    """The inbox reads deliveries by the row counts their senders' headers give; apply budgets its transactions
    by what they really hold (a lying header cannot make one transaction of millions)."""
    from dbsync_cli.openmrs import SchemaModel, synced_table_names
    from dbsync_cli.receiver import inbox
    from dbsync_cli.receiver.apply import Applier, ApplySettings

    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    for i in range(40):
        new_person(site, given=f"Many{i}")
    messages = site.messages()
    halves = [messages[: len(messages) // 2], messages[len(messages) // 2:]]
    conn = central.db.connect(autocommit=False)
    inbox.store(conn, central.schema, [inbox.Delivery(f"env-{i}", "site1", wire.dumps(wire.envelope(half)), "",
                                                      rows=1) for i, half in enumerate(halves)])
    conn.close()
    with central.db.connect() as c:
        model = SchemaModel.load(c, central.db.database or "", synced_table_names(None, None))
    applier = Applier(ApplySettings(central=central.db, state_schema=central.schema, batch_messages=10), model)
    commits = []
    real = applier.apply_parsed

    def counted(parsed):
        commits.append(len(parsed))
        return real(parsed)

    applier.apply_parsed = counted  # type: ignore[method-assign]
    try:
        records = inbox.oldest(applier.conn, central.schema, 10)
        assert len(records) == 2  # both fit a budget of 10 by their headers
        outcomes = applier.apply_batch(records)
    finally:
        applier.close()
    assert commits == [len(halves[0]), len(halves[1])]  # one transaction per delivery, not one for both
    assert Counter(o.outcome for o in outcomes)["applied"] == len(messages)
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.inbox") == [(0,)]
