"""Issue 12 item 4: onboarding a site whose data central already has (central loaded from the site's dump): with
`sites update SITE --adopt` the site's initial snapshot takes over central's equal rows, reports the one that
differs, leaves OpenMRS's own users to central, and the site's later changes apply with no conflict.

Issue 27 items 5 and 6: registered before its data is loaded (register-then-load), the site never adopts the rows
central held before the load nor those another site sent as central's own (a shared user or provider stays
central's: the site's later edit is counted, never a rename), and its own users and providers get central's
`|site` form at adoption (a later edit is an ordinary update)."""

from __future__ import annotations

import os
import subprocess

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import central, conflicts, new_person, outcomes, site  # noqa: F401 - fixtures
from test_schema_history import metadata  # noqa: F401 - the site's binlog row metadata, FULL and MINIMAL

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import adopt, state
from dbsync_cli.sender.checkpoint import CheckpointStore
from devtools.workload.generator import generate

pytestmark = pytest.mark.lane2


def _uuids(db: DbParams) -> set[str]:
    """Every uuid central holds in any table (lower case), read before the site's data is loaded."""
    found: set[str] = set()
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND "
                    "COLUMN_NAME = 'uuid'", (db.database,))
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT LOWER(uuid) FROM `{table}`")
            found |= {row[0] for row in cur.fetchall()}
    return found


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


# rows every OpenMRS database of the network has, with the same uuids (a distribution's user and provider)
SHARED_PERSON = "5f1c0f6e-2b1a-4c3e-9d7a-000000000001"
SHARED_USER = "5f1c0f6e-2b1a-4c3e-9d7a-000000000002"
SHARED_PROVIDER = "5f1c0f6e-2b1a-4c3e-9d7a-000000000003"
# a provider both clinics have and central had not: the first site's dump brings it, the second sends it
CLINICS_PROVIDER = "5f1c0f6e-2b1a-4c3e-9d7a-000000000004"
OWN_PERSON = "5f1c0f6e-2b1a-4c3e-9d7a-000000000011"
OWN_USER = "5f1c0f6e-2b1a-4c3e-9d7a-000000000012"
OWN_PROVIDER = "5f1c0f6e-2b1a-4c3e-9d7a-000000000013"
CREATED = "2020-01-01 08:00:00"


def _run_sql(db: DbParams, statements: list[tuple[str, tuple]]) -> None:
    with db.connect() as conn, conn.cursor() as cur:
        for statement, args in statements:
            cur.execute(statement, args)
        conn.commit()


def _staff(person: str, user: str | None, username: str, provider: str, identifier: str) -> list[tuple[str, tuple]]:
    """A person with a user (when `user`) and a provider, exactly alike wherever it is written."""
    statements = [("INSERT INTO person (gender, creator, date_created, uuid) VALUES ('F', 1, %s, %s)",
                   (CREATED, person))]
    if user is not None:
        statements.append(("INSERT INTO users (system_id, username, person_id, creator, date_created, retired, uuid) "
                           "SELECT %s, %s, person_id, 1, %s, 0, %s FROM person WHERE uuid = %s",
                           (username, username, CREATED, user, person)))
    statements.append(("INSERT INTO provider (person_id, name, identifier, creator, date_created, retired, uuid) "
                       "SELECT person_id, %s, %s, 1, %s, 0, %s FROM person WHERE uuid = %s",
                       (username, identifier, CREATED, provider, person)))
    return statements


def _clinics_provider() -> list[tuple[str, tuple]]:
    return [("INSERT INTO provider (name, identifier, creator, date_created, retired, uuid) "
             "VALUES ('Visiting nurse', 'PRV-0002', 1, %s, 0, %s)", (CREATED, CLINICS_PROVIDER))]


def _snapshot(sender) -> list[dict]:
    """The site's sender starting with no checkpoint: its initial snapshot."""
    store = CheckpointStore(sender.home)
    store.clear()
    store.close()
    messages = sender.messages()
    assert messages and all(m["source"]["snapshot"] for m in messages), messages[:3]
    return messages


def _by_uuid(results: list[dict]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in results:
        found.setdefault(r.get("uuid") or "", set()).add(r["outcome"])
    return found


def _skipped(receiver, sender: str, reason: str, table: str) -> int:
    rows = receiver.sql(f"SELECT count FROM `{receiver.schema}`.receiver_skipped WHERE site = %s AND reason = %s "
                        "AND table_name = %s", (sender, reason, table))
    return int(rows[0][0]) if rows else 0


@pytest.mark.parametrize("method", ["mariadb", "lock", "log_status"])
def test_adopting_a_site_central_was_loaded_from_syncs_on_with_no_conflicts(central, site, metadata, services,  # noqa: F811
                                                                           method) -> None:
    site.env = {**site.env, "DBSYNC_SENDER__SNAPSHOT_METHOD": method}  # the snapshot that adopts, each way
    if method == "lock":  # FLUSH TABLES WITH READ LOCK needs RELOAD
        admin = services["site1"].admin
        site.env.update({"DBSYNC_SITE_DB__USER": admin.user, "DBSYNC_SITE_DB__PASSWORD": admin.password})
    generate(site.admin, seed=61, patients=12, mutations=0.2)
    held_before = _uuids(central.db)
    # register-then-load: what central holds when the site is marked for adoption stays central's
    out = dbsync("sites", "update", "site1", "--adopt", "--config", str(central.config), env=central.env)
    assert b"adopt" in out.stdout and b"recorded" in out.stdout, out.stdout
    _load_dump(site.admin, central.db)
    # central's own edit before onboarding: the one row that differs and must be reported
    (edited,) = central.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0]
    central.sql("UPDATE person_name SET given_name = 'Central-edit' WHERE uuid = %s", (edited,))

    listed = orjson.loads(dbsync("sites", "list", "--json", "--config", str(central.config), env=central.env).stdout)
    assert listed[0]["adopt"] is True and listed[0]["adopt_recorded"], listed

    results = central.apply(_snapshot(site))  # the site's sender starts now: its initial snapshot
    counts = outcomes(results)
    assert counts["adopted"] > 100 and set(counts) == {"adopted", "central_owned", "conflict"}, counts
    conflicted = [r for r in results if r["outcome"] == "conflict"]
    assert len(conflicted) == 1, conflicted[:5]
    (conflict,) = conflicted
    assert conflict["uuid"] == edited and "given_name" in conflict["reason"], conflict
    owned = {r["uuid"] for r in results if r["outcome"] == "central_owned"}
    with central.db.connect() as conn, conn.cursor() as cur:
        built_in = adopt.built_in_uuids(cur)
    assert built_in and built_in <= owned <= held_before, (owned - held_before, built_in - owned)
    with central.db.connect() as conn:
        assert state.skipped(conn, central.schema)["site1"]["adopted"] == counts["adopted"]

    # the site's changes to adopted rows apply like any of its own: no conflict, none skipped as central's
    changed = next(uuid for (uuid,) in site.sql("SELECT uuid FROM person_name ORDER BY person_name_id")
                   if uuid != edited and uuid.lower() not in held_before)  # admin's name stays central's
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



@pytest.fixture
def network(openmrs_db, services, tmp_path, broker_settings):
    """Central with site2 registered and synced its way; site1, whose data central is about to be loaded with."""
    c = make_central(openmrs_db, tmp_path, broker_settings, sites=("site2",))
    one = make_site(openmrs_db, services, tmp_path, broker_settings, name="site1", instance="site1")
    two = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
    yield c, one, two
    drop_schema(c)


def test_adoption_keeps_central_and_shared_rows_and_gives_the_site_its_suffix(network) -> None:
    receiver, site1, site2 = network
    shared = _staff(SHARED_PERSON, SHARED_USER, "mgraca", SHARED_PROVIDER, "PRV-0001")
    _run_sql(receiver.db, shared)  # the network's shared rows: central has them, as every clinic does
    _run_sql(site1.admin, [*shared, *_clinics_provider(),
                           *_staff(OWN_PERSON, OWN_USER, "imuss0", OWN_PROVIDER, "PRV-0101")])
    _run_sql(site2.admin, [*shared, *_clinics_provider()])
    generate(site1.admin, seed=62, patients=4, mutations=0.1)

    # register-then-load: `sites add --adopt` records what central holds, then the site's dump is loaded
    out = dbsync("sites", "add", "site1", "--adopt", "--config", str(receiver.config), env=receiver.env)
    assert b"recorded" in out.stdout, out.stdout
    _load_dump(site1.admin, receiver.db)
    assert receiver.sql("SELECT identifier FROM provider WHERE uuid = %s", (CLINICS_PROVIDER,)) == [("PRV-0002",)]

    # site2's initial snapshot: the shared rows, and the clinics' provider the load brought, are central's own
    results = receiver.apply(_snapshot(site2))
    seen = _by_uuid(results)
    assert all(seen[u] == {"central_owned"} for u in (SHARED_USER, SHARED_PROVIDER, CLINICS_PROVIDER)), seen

    # site1's initial snapshot adopts its own rows only, in central's form
    results = receiver.apply(_snapshot(site1))
    seen = _by_uuid(results)
    counts = outcomes(results)
    assert counts["adopted"] > 50 and "error" not in counts and "retry" not in counts, counts
    for uuid in (SHARED_PERSON, SHARED_USER, SHARED_PROVIDER, CLINICS_PROVIDER):
        assert seen[uuid] == {"central_owned"}, (uuid, seen[uuid])
    for uuid in (OWN_PERSON, OWN_USER, OWN_PROVIDER):
        assert seen[uuid] == {"adopted"}, (uuid, seen[uuid])
    assert receiver.sql("SELECT username, system_id FROM users WHERE uuid = %s", (OWN_USER,)) == [
        ("imuss0|site1", "imuss0|site1")]
    assert receiver.sql("SELECT identifier FROM provider WHERE uuid = %s", (OWN_PROVIDER,)) == [("PRV-0101|site1",)]
    suffixed = receiver.sql("SELECT COUNT(*) FROM users WHERE username LIKE '%%|site1'")[0][0]
    assert suffixed == site1.sql("SELECT COUNT(*) FROM users WHERE system_id NOT IN ('admin', 'daemon') AND "
                                 "uuid <> %s", (SHARED_USER,))[0][0], suffixed

    # the site edits the shared user and providers and its own: only its own change central's rows
    before = {name: _skipped(receiver, "site1", "central_owned", name) for name in ("users", "provider")}
    site1.sql("UPDATE users SET username = 'mgraca2', changed_by = 1, date_changed = NOW() WHERE uuid = %s",
              (SHARED_USER,))
    site1.sql("UPDATE provider SET identifier = CONCAT(identifier, '-x'), changed_by = 1, date_changed = NOW() "
              "WHERE uuid IN (%s, %s)", (SHARED_PROVIDER, CLINICS_PROVIDER))
    site1.sql("UPDATE users SET email = 'imuss0@site1.example', changed_by = 1, date_changed = NOW() "
              "WHERE uuid = %s", (OWN_USER,))
    site1.sql("UPDATE provider SET name = 'Imuss Zero', changed_by = 1, date_changed = NOW() WHERE uuid = %s",
              (OWN_PROVIDER,))
    results = receiver.apply(site1.messages())
    seen = _by_uuid(results)
    assert seen == {SHARED_USER: {"central_owned"}, SHARED_PROVIDER: {"central_owned"},
                    CLINICS_PROVIDER: {"central_owned"}, OWN_USER: {"applied"}, OWN_PROVIDER: {"applied"}}, seen
    assert receiver.sql("SELECT username, system_id FROM users WHERE uuid = %s", (SHARED_USER,)) == [
        ("mgraca", "mgraca")]
    assert receiver.sql("SELECT uuid, identifier FROM provider WHERE uuid IN (%s, %s) ORDER BY uuid",
                       (SHARED_PROVIDER, CLINICS_PROVIDER)) == [(SHARED_PROVIDER, "PRV-0001"),
                                                                 (CLINICS_PROVIDER, "PRV-0002")]
    assert receiver.sql("SELECT username, email FROM users WHERE uuid = %s", (OWN_USER,)) == [
        ("imuss0|site1", "imuss0@site1.example")]
    assert receiver.sql("SELECT identifier, name FROM provider WHERE uuid = %s", (OWN_PROVIDER,)) == [
        ("PRV-0101|site1", "Imuss Zero")]
    assert {name: _skipped(receiver, "site1", "central_owned", name) - count for name, count in before.items()} == {
        "users": 1, "provider": 2}  # counted per site, reason and table: `dbsync status`

    # site2's edits of the same rows are central's too: counted, never a cross-site error
    site2.sql("UPDATE users SET email = 'mgraca@site2.example', changed_by = 1, date_changed = NOW() "
              "WHERE uuid = %s", (SHARED_USER,))
    site2.sql("UPDATE provider SET name = 'Nurse', changed_by = 1, date_changed = NOW() WHERE uuid = %s",
              (CLINICS_PROVIDER,))
    results = receiver.apply(site2.messages())
    assert _by_uuid(results) == {SHARED_USER: {"central_owned"}, CLINICS_PROVIDER: {"central_owned"}}, results
    assert receiver.sql("SELECT email FROM users WHERE uuid = %s", (SHARED_USER,)) == [(None,)]
    assert receiver.sql(f"SELECT COUNT(*) FROM `{receiver.schema}`.receiver_retry_queue") == [(0,)]


def test_sites_update_adopt_records_central_once_and_says_what_it_recorded(central) -> None:  # noqa: F811
    def update(*args: str) -> str:
        return dbsync("sites", "update", "site1", *args, "--config", str(central.config), env=central.env).stdout.decode()

    def record() -> list[tuple]:
        return central.sql(f"SELECT table_name, held_rows, date_recorded FROM `{central.schema}`.adopt_table "
                           "ORDER BY table_name")

    said = update("--adopt")
    (users,) = central.sql("SELECT COUNT(*) FROM users")[0]
    first = record()
    assert "recorded for site 'site1'" in said and "Load the site's data into central now" in said, said
    assert ("users", users, first[0][2]) in first and len(first) > 20, first
    said = update("--adopt")  # again (the data may be loaded by now): the first record stays, and says when
    assert "stay so" in said and "--no-adopt, then --adopt" in said, said
    assert record() == first
    said = update("--no-adopt")
    assert "forgotten" in said and record() == [], said
    listed = orjson.loads(dbsync("sites", "list", "--json", "--config", str(central.config), env=central.env).stdout)
    assert listed[0]["adopt"] is False and listed[0]["adopt_recorded"] is None, listed
