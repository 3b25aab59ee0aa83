"""One clinic's initial load never holds up another clinic's edits: apply takes live changes from the inbox before
the rows of initial loads, and the order guard keeps an entity right when its live change overtakes its snapshot
row (real central MariaDB; messages from the real sender stages)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from helpers import sender_config
from receiver_helpers import Site, drop_schema, make_central

from dbsync_cli import wire
from dbsync_cli.receiver import inbox, state
from devtools.workload.generator import generate
from devtools.workload.truth import compare


def _site_with_data(openmrs_db, services, tmp_path, broker_settings, seed: int):
    """A site whose rows exist before its sender first runs, so that they come as its initial snapshot."""
    admin = openmrs_db("site1")
    truth = generate(admin, seed=seed, patients=6, mutations=0.0)
    repl = services["site1"].repl.with_database(admin.database)
    (tmp_path / "work-site1").mkdir()
    conf, env = sender_config(tmp_path / "work-site1", repl, broker_settings, site="site1",
                              destination="test.unused", home=tmp_path / "home-site1")
    return Site(admin, conf, env, tmp_path / "home-site1"), truth


def test_live_changes_that_overtake_their_snapshot_rows_leave_central_as_in_order(
        openmrs_db, services, tmp_path, broker_settings) -> None:
    site, truth = _site_with_data(openmrs_db, services, tmp_path, broker_settings, seed=31)
    snapshot = site.messages()
    assert snapshot and all(m["snapshot"] for m in snapshot)
    names = sorted(truth.tables["person_name"])[:3]
    for uuid in names:
        site.sql("UPDATE person_name SET family_name='Live' WHERE uuid=%s", (uuid,))
        truth.update("person_name", uuid, {"family_name": "Live"})
    leaves = site.sql("SELECT uuid FROM obs o WHERE obs_group_id IS NULL AND NOT EXISTS "
                      "(SELECT 1 FROM obs c WHERE c.obs_group_id = o.obs_id) ORDER BY obs_id")
    gone = [r[0] for r in leaves if r[0] in truth.tables["obs"]][:3]
    for uuid in gone:
        site.sql("DELETE FROM obs WHERE uuid=%s", (uuid,))
        truth.delete("obs", uuid)
    live = site.messages()
    assert {m["op"] for m in live} == {"u", "d"} and len(live) == 6

    central = make_central(openmrs_db, tmp_path, broker_settings)
    try:
        first = central.apply(live)  # the live changes overtake the whole initial load
        assert Counter(r["outcome"] for r in first) == Counter({"applied": 6}), central.last_stderr[-2000:]
        then = central.apply(snapshot)
        counted = Counter(r["outcome"] for r in then)
        # the snapshot rows of the changed entities are older: skipped; central's own shared rows (admin, daemon)
        # are central's as in any order
        assert counted["stale"] == 6 and counted["applied"] + counted["central_owned"] == len(snapshot) - 6, counted
        assert compare(central.db, truth, username_suffix="|site1") == []
        assert central.sql("SELECT COUNT(*) FROM person_name WHERE family_name='Live'") == [(3,)]
        assert central.sql("SELECT COUNT(*) FROM encounter WHERE void_reason='[placeholder]'") == [(0,)]
        skipped = central.sql(f"SELECT reason, SUM(count) FROM `{central.schema}`.receiver_skipped GROUP BY reason")
        assert dict(skipped)["stale"] == 6  # never silent
    finally:
        drop_schema(central)


def test_apply_reads_live_deliveries_before_initial_load_rows_within_its_row_budget(openmrs_db, services) -> None:
    db = openmrs_db("central", metadata=False)
    schema = "t_fair_" + dt.datetime.now().strftime("%H%M%S%f")
    conn = db.connect(autocommit=False)
    try:
        state.migrate(conn, schema, db.database)
        snap = [inbox.Delivery(f"snap-{i}", "site1", b"{}", "site1", rows=100, snapshot=True) for i in range(3)]
        live = [inbox.Delivery(f"live-{i}", "site2", b"{}", "site2") for i in range(2)]
        stored = inbox.store(conn, schema, [*snap, live[0]])
        stored += inbox.store(conn, schema, [live[1]])
        assert [r.rows for r in stored] == [100, 100, 100, 1, 1]

        order = [r["message_id"] for r in inbox.oldest(conn, schema, 150)]
        assert order == ["live-0", "live-1", "snap-0"]  # live first, then what fits in 150 rows
        assert [r["message_id"] for r in inbox.oldest(conn, schema, 10)] == ["live-0", "live-1"]
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM `{schema}`.inbox WHERE message_id LIKE 'live-%'")  # noqa: S608
        conn.commit()
        assert [r["message_id"] for r in inbox.oldest(conn, schema, 10)] == ["snap-0"]  # at least one row
        record = inbox.oldest(conn, schema, 500)[0]
        assert record["site"] == "site1" and wire.unb64(record["body"]) == b"{}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
        conn.close()
