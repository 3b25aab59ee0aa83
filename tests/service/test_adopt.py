"""Issue 12 item 4: onboarding a site whose data central already has (central loaded from the site's dump): with
`sites update SITE --adopt` the site's initial snapshot takes over central's equal rows, reports the one that
differs, leaves OpenMRS's own users to central, and the site's later changes apply with no conflict."""

from __future__ import annotations

import os
import subprocess

import orjson
import pytest
from helpers import dbsync
from test_apply import central, conflicts, new_person, outcomes, site  # noqa: F401 - fixtures
from test_schema_history import metadata  # noqa: F401 - the site's binlog row metadata, FULL and MINIMAL

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import adopt, state
from dbsync_cli.sender.checkpoint import CheckpointStore
from devtools.workload.generator import generate

pytestmark = pytest.mark.lane2


def _load_dump(source: DbParams, target: DbParams) -> None:
    """What an implementer does: mariadb-dump of the site's data loaded into central (INSERT IGNORE: the rows
    central has, its metadata and OpenMRS's admin and daemon, stay as they are)."""
    def client(db: DbParams, *args: str, stdin: bytes | None = None) -> bytes:
        env = {**os.environ, "MYSQL_PWD": db.password or ""}
        return subprocess.run([*args, "-h", db.host, "-P", str(db.port), "-u", db.user or "", db.database or ""],
                              env=env, input=stdin, capture_output=True, check=True).stdout

    dump = client(source, "mariadb-dump", "--no-create-info", "--skip-triggers", "--insert-ignore",
                  "--complete-insert", "--skip-add-locks")
    client(target, "mariadb", stdin=dump)


@pytest.mark.parametrize("method", ["mariadb", "lock", "log_status"])
def test_adopting_a_site_central_was_loaded_from_syncs_on_with_no_conflicts(central, site, metadata, services,  # noqa: F811
                                                                           method) -> None:
    site.env = {**site.env, "DBSYNC_SENDER__SNAPSHOT_METHOD": method}  # the snapshot that adopts, each way
    if method == "lock":  # FLUSH TABLES WITH READ LOCK needs RELOAD
        admin = services["site1"].admin
        site.env.update({"DBSYNC_SITE_DB__USER": admin.user, "DBSYNC_SITE_DB__PASSWORD": admin.password})
    generate(site.admin, seed=61, patients=12, mutations=0.2)
    _load_dump(site.admin, central.db)
    # central's own edit before onboarding: the one row that differs and must be reported
    (edited,) = central.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0]
    central.sql("UPDATE person_name SET given_name = 'Central-edit' WHERE uuid = %s", (edited,))

    out = dbsync("sites", "update", "site1", "--adopt", "--config", str(central.config), env=central.env)
    assert b"adopt" in out.stdout, out.stdout
    listed = orjson.loads(dbsync("sites", "list", "--json", "--config", str(central.config), env=central.env).stdout)
    assert listed[0]["adopt"] is True, listed

    store = CheckpointStore(site.home)  # the site's sender starts now: its initial snapshot
    store.clear()
    store.close()
    messages = site.messages()
    assert messages and all(m["source"]["snapshot"] for m in messages), messages[:3]
    results = central.apply(messages)
    counts = outcomes(results)
    assert counts["adopted"] > 100 and set(counts) == {"adopted", "central_owned", "conflict"}, counts
    conflicted = [r for r in results if r["outcome"] == "conflict"]
    assert len(conflicted) == 1, conflicted[:5]
    (conflict,) = conflicted
    assert conflict["uuid"] == edited and "given_name" in conflict["reason"], conflict
    with central.db.connect() as conn, conn.cursor() as cur:
        built_in = adopt.built_in_uuids(cur)
    assert built_in and {r["uuid"] for r in results if r["outcome"] == "central_owned"} <= built_in, results
    with central.db.connect() as conn:
        assert state.skipped(conn, central.schema)["site1"]["adopted"] == counts["adopted"]

    # the site's changes to adopted rows apply like any of its own: no conflict, none skipped as central's
    (changed,) = site.sql("SELECT uuid FROM person_name WHERE uuid <> %s ORDER BY person_name_id LIMIT 1",
                          (edited,))[0]
    site.sql("UPDATE person_name SET given_name = 'Site-change', date_changed = NOW() WHERE uuid = %s", (changed,))
    (voided,) = site.sql("SELECT uuid FROM obs WHERE voided = 0 ORDER BY obs_id LIMIT 1")[0]
    site.sql("UPDATE obs SET voided = 1, voided_by = 1, date_voided = NOW(), void_reason = 'wrong' WHERE uuid = %s",
             (voided,))
    person, _ = new_person(site, given="New")
    results = central.apply(site.messages())
    assert outcomes(results) == {"applied": len(results)}, results
    assert central.sql("SELECT given_name FROM person_name WHERE uuid = %s", (changed,)) == [("Site-change",)]
    assert central.sql("SELECT voided, void_reason FROM obs WHERE uuid = %s", (voided,)) == [(1, "wrong")]
    assert central.sql("SELECT COUNT(*) FROM person WHERE uuid = %s", (person,)) == [(1,)]
    assert [c[2] for c in conflicts(central)] == [edited]
