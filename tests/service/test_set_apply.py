"""The set path of apply (receiver/set_apply.py) against the real central MariaDB: it takes a batch's plain new rows,
writes them as the per-row path would, and leaves bookkeeping the later per-row judgements rely on."""

from __future__ import annotations

from collections import Counter

import pytest
from receiver_helpers import drop_schema, make_central, make_site

from dbsync_cli.openmrs import SchemaModel, synced_table_names
from dbsync_cli.receiver.apply import Applier, ApplySettings
from devtools.workload.generator import generate
from devtools.workload.truth import compare


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    c = make_central(openmrs_db, tmp_path, broker_settings)
    yield c
    drop_schema(c)


@pytest.fixture
def site(openmrs_db, services, tmp_path, broker_settings):
    return make_site(openmrs_db, services, tmp_path, broker_settings)


def apply_in_process(central, messages, **settings):
    with central.db.connect() as conn:
        model = SchemaModel.load(conn, central.db.database or "", synced_table_names(None, None))
    applier = Applier(ApplySettings(central=central.db, state_schema=central.schema, batch_messages=200, **settings),
                      model)
    try:
        results = list(applier.run(messages))
        written = applier.set_path.rows_written if applier.set_path is not None else 0
    finally:
        applier.close()
    return results, written


def test_new_rows_go_set_based_and_later_changes_judge_against_their_hashes(central, site) -> None:
    truth = generate(site.admin, seed=41, patients=8, obs_per_encounter=6, mutations=0.0)
    messages = site.messages()
    results, written = apply_in_process(central, messages)
    assert Counter(r["outcome"] for r in results) == Counter({"applied": len(messages)})
    # all but the rows that need the per-row path (users and providers get a site suffix) went set-based
    assert written >= 0.9 * len(messages), (written, len(messages))
    assert compare(central.db, truth, username_suffix="|site1") == []
    # their bookkeeping, read with plain SQL: one entity_hash entry per row, owned by the site, with the hash of
    # the row as central holds it and the binlog position of its message
    entries = central.sql(f"SELECT COUNT(*), SUM(owner = 'site1'), SUM(src_pos IS NOT NULL), "
                          f"SUM(hash IS NOT NULL) FROM `{central.schema}`.entity_hash")
    assert entries == [(len(messages), len(messages), len(messages), len(messages))]
    names = sorted(r[0] for r in central.sql("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_schema = DATABASE() AND table_name = 'obs'"))
    rehash = "SHA2(CONCAT_WS(',', " + ", ".join(f"QUOTE(o.`{n}`)" for n in names) + "), 256)"
    obs = central.sql(f"SELECT o.obs_id, h.hash, {rehash} FROM obs o JOIN `{central.schema}`.entity_hash h "
                      f"ON h.table_name = 'obs' AND h.entity_uuid = o.uuid")
    assert obs and all(stored == recomputed for _id, stored, recomputed in obs)
    # the site changes rows it created: no conflict (the stored hashes are the rows'), every change applied
    site.sql("UPDATE obs SET value_numeric = 42.5, comments = 'site edit' WHERE value_numeric IS NOT NULL LIMIT 5")
    site.sql("UPDATE person_name SET given_name = 'Changed', date_changed = NOW() "
             "WHERE person_id IN (SELECT patient_id FROM patient) LIMIT 3")
    later, written = apply_in_process(central, site.messages())
    assert later and Counter(r["outcome"] for r in later) == Counter({"applied": len(later)})
    assert written == len(later)  # updates the judgement could only apply: set-based too
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_conflict_queue") == [(0,)]
    assert central.sql("SELECT COUNT(*) FROM obs WHERE comments = 'site edit' AND value_numeric = 42.5") == [(5,)]
    assert central.sql("SELECT COUNT(*) FROM person_name WHERE given_name = 'Changed'") == [(3,)]


def test_a_batch_mixing_set_and_per_row_messages_applies_in_effect_in_order(central, site) -> None:
    """Rows of entities sent twice in a batch, deletes and rows that need a placeholder take the per-row path
    beside the set path's rows; the result is the site's."""
    truth = generate(site.admin, seed=42, patients=10, obs_per_encounter=5, mutations=0.4)
    messages = site.messages()
    results, written = apply_in_process(central, messages)
    assert set(Counter(r["outcome"] for r in results)) == {"applied"}
    assert 0 < written < len(messages)
    assert compare(central.db, truth, username_suffix="|site1") == []
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_conflict_queue") == [(0,)]


def test_the_set_path_off_writes_nothing_set_based(central, site) -> None:
    truth = generate(site.admin, seed=43, patients=3, obs_per_encounter=4, mutations=0.0)
    results, written = apply_in_process(central, site.messages(), set_apply=False)
    assert written == 0 and set(Counter(r["outcome"] for r in results)) == {"applied"}
    assert compare(central.db, truth, username_suffix="|site1") == []
