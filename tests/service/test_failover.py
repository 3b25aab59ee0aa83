"""Issue 12 item 2: the checkpoint keeps the GTID position, so the sender goes on from the right transaction when the
site fails over to a replica (a server with other binlog files and positions), with row metadata FULL and MINIMAL
and each snapshot method."""

from __future__ import annotations

import uuid as uuidlib

import orjson
import pytest
from helpers import dbsync, drain, sender_config
from receiver_helpers import Site, drop_schema, make_central
from test_apply import new_person

from dbsync_cli import exitcodes
from dbsync_cli.db import DbParams
from dbsync_cli.sender.checkpoint import CheckpointStore
from devtools.services.common import port_offset
from devtools.services.mariadb import destroy_mariadb, start_mariadb, start_replica, wait_for_replica
from devtools.workload.openmrs import load_openmrs

pytestmark = pytest.mark.lane2


@pytest.fixture(scope="module")
def pair(services):
    """A primary and its GTID replica with log_slave_updates: what a site fails over to."""
    primary = start_mariadb("failover-primary", port=23395 + port_offset(), server_id=395)
    replica = start_replica(primary, "failover-replica", port=23396 + port_offset(), server_id=396)
    # what it writes itself goes to a replication domain of its own (MariaDB's rule for servers that all write):
    # sequence numbers only grow within a domain, while the primary goes on writing for the next case
    _global(replica.admin, "SET GLOBAL gtid_domain_id = 1")
    yield primary, replica
    destroy_mariadb(replica)
    destroy_mariadb(primary)


def _global(db: DbParams, statement: str) -> None:
    with db.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(statement)


def _people_in_one_transaction(admin: DbParams, count: int) -> list[str]:
    with admin.connect(autocommit=False) as conn, conn.cursor() as cur:
        for _ in range(count):
            cur.execute("INSERT INTO person (gender, creator, date_created, uuid) "
                        "VALUES ('M', 1, '2024-03-01 01:00:00', UUID())")
        cur.execute("SELECT uuid FROM person ORDER BY person_id DESC LIMIT %s", (count,))
        uuids = [row[0] for row in cur.fetchall()]
        conn.commit()
    return uuids


@pytest.mark.parametrize(("metadata", "method", "inside"), [("FULL", "mariadb", True), ("MINIMAL", "lock", False),
                                                            ("MINIMAL", "log_status", True)])
def test_the_sender_follows_the_site_to_its_replica_by_gtid(pair, openmrs_db, broker_settings, tmp_path, metadata,
                                                           method, inside) -> None:
    """`inside`: the sender stopped inside a transaction (its other rows must follow, not the ones sent); else it
    was caught up, and what the new server wrote (in its own replication domain) before the sender came back
    must arrive."""
    primary, replica = pair
    for inst in pair:
        _global(inst.admin, f"SET GLOBAL binlog_row_metadata = '{metadata}'")
    name = f"failover_{uuidlib.uuid4().hex[:6]}"
    load_openmrs(primary.admin, name)
    # lock (FLUSH TABLES WITH READ LOCK) needs RELOAD: the admin user; the others the capture user
    user = primary.admin if method == "lock" else primary.repl
    dest = f"test.failover.{uuidlib.uuid4().hex[:8]}"
    conf, env = sender_config(tmp_path, user.with_database(name), broker_settings, destination=dest)
    conf.write_text(conf.read_text().replace("[site_db]", f'snapshot_method = "{method}"\n[site_db]'))
    site = Site(primary.admin.with_database(name), conf, env, tmp_path / "home-site1")
    central = make_central(openmrs_db, tmp_path, broker_settings)

    def sync(*args: str) -> tuple[list[dict], str]:
        run = dbsync("sender", "--config", str(conf), "--until-idle", *args, env=env)
        return central.apply(drain(broker_settings, dest, idle=1.5)), run.stderr.decode()

    try:
        first, _ = new_person(site)
        results, log = sync()
        assert f"snapshot transaction opened ({method})" in log, log[-2000:]
        assert {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"}.get(first) == "applied"

        # the site fails over to a replica that lacks what the sender sent: never resumed from a wrong place
        _global(replica.admin, "STOP SLAVE")
        behind, _ = new_person(site, given="Behind")
        results, _ = sync()
        assert {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"} == {behind: "applied"}
        to_replica = conf.read_text().replace(f"port = {primary.port}", f"port = {replica.port}")
        to_primary = conf.read_text()
        conf.write_text(to_replica)
        run = dbsync("sender", "--config", str(conf), "--until-idle", env=env, check=False)
        lines = [line for line in run.stderr.decode().splitlines() if line.startswith("dbsync:")]
        assert run.returncode == exitcodes.BINLOG_PURGED and len(lines) == 1, run.stderr.decode()[-2000:]
        assert "lacks transactions the checkpoint covers" in lines[0] and "catch up" in lines[0], lines
        conf.write_text(to_primary)
        _global(replica.admin, "START SLAVE")

        batch = _people_in_one_transaction(site.admin, 6)
        results, _ = sync("--max-events", "3") if inside else sync()  # inside: it stops inside the transaction
        sent = [r["uuid"] for r in results if r.get("table") == "person"]
        assert len(sent) == (3 if inside else 6) and set(sent) <= set(batch), results
        checkpoint = CheckpointStore(site.home).load()
        assert checkpoint and checkpoint["row"] == (2 if inside else -1) and checkpoint.get("gtid_pos"), checkpoint
        old_epoch = checkpoint["epoch"]

        # the failover: the replica has all of it and takes the site's writes from now on
        wait_for_replica(primary, replica)
        conf.write_text(to_replica)
        later, _ = new_person(Site(replica.admin.with_database(name), conf, env, site.home), given="Later")
        results, log = sync()
        assert "the site server changed" in log and "GTID position" in log, log[-3000:]
        persons = {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"}
        assert persons == {**{u: "applied" for u in batch if u not in sent}, later: "applied"}, results
        assert not [r for r in results if r["outcome"] != "applied"], results
        new_epoch = CheckpointStore(site.home).load()["epoch"]
        assert new_epoch != old_epoch and new_epoch.startswith(f"{replica.server_id}."), (old_epoch, new_epoch)
        assert central.sql("SELECT COUNT(*) FROM person WHERE uuid IN %s",
                           (tuple([first, behind, later, *batch]),)) == [(9,)]

        report = orjson.loads(dbsync("status", "--json", "--config", str(conf), env=env, check=False).stdout)
        assert report["checkpoint"]["gtid_pos"] and report["checkpoint"]["epoch"] == new_epoch, report["checkpoint"]
        failover = report["failover"]  # what it passed over is counted where status shows it
        assert failover["to_server_id"] == str(replica.server_id) and isinstance(failover["not_sent"], int), failover
        assert (failover["not_sent"] > 0) == ("not sent" in log), (failover, log[-2000:])
        assert any(note.startswith("followed the site from server id") for note in report["notes"]), report["notes"]

        # the checkpoint is in the replica's history now: the next run streams on without looking for it again
        again, _ = new_person(Site(replica.admin.with_database(name), conf, env, site.home), given="Again")
        results, log = sync()
        assert "GTID position" not in log, log[-2000:]
        assert {r["uuid"]: r["outcome"] for r in results if r.get("table") == "person"} == {again: "applied"}
    finally:
        drop_schema(central)
        for inst in pair:
            _global(inst.admin, "SET GLOBAL binlog_row_metadata = 'FULL'")
        _global(replica.admin, "START SLAVE")  # a no-op when it runs: the next case needs it replicating
        _global(primary.admin, f"DROP DATABASE IF EXISTS `{name}`")
        wait_for_replica(primary, replica)
