"""End to end: two sites, two real `dbsync sender` processes, Artemis, one real `dbsync receiver`, one central DB.

Each site is written independently by the seeded workload generator; afterwards central must hold exactly what each
site holds (compared through uuids), the two sites' rows must not collide at central, every site must have a recent
sync status, and nothing may be left behind (inbox, retry queue, conflicts, broker queue).
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from helpers import dbsync_cmd, drain, drop_schema, query, receiver_config, sender_config

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state
from devtools.workload.generator import generate
from devtools.workload.truth import GroundTruth, compare

SITES = ("site1", "site2")
UUID_TABLES_CHECKED = ("person", "visit", "encounter", "obs", "person_name", "patient_identifier", "orders")
KEYS = {"orders": "order_id"}




def _counts(db: DbParams, tables: list[str]) -> dict[str, int]:
    return {t: query(db, f"SELECT COUNT(*) FROM `{t}`")[0][0] for t in tables}  # noqa: S608


def _stop(proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args} did not stop on SIGTERM: {log.read_text()[-3000:]}") from None
    assert rc == 0, f"{proc.args[3:5]} exited {rc} after SIGTERM: {log.read_text()[-3000:]}"


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    try:
        return subprocess.Popen(dbsync_cmd(*args), env=env, stdout=out, stderr=out)
    finally:
        out.close()


def _wait_synced(central: DbParams, truths: dict[str, GroundTruth], procs: dict[str, subprocess.Popen],
                 logs: dict[str, Path], timeout: float) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}: {logs[name].read_text()[-3000:]}"
        diffs = {s: compare(central, t, username_suffix=f"|{s}", limit=20) for s, t in truths.items()}
        if all(not d for d in diffs.values()) or time.monotonic() > deadline:
            return diffs
        time.sleep(1.5)


@pytest.fixture
def world(openmrs_db, services, broker_settings, tmp_path):
    """site1 (site1 instance), site2 (site2 instance), central with a fresh state schema and both sites."""
    sites = {s: openmrs_db(s) for s in SITES}
    central = openmrs_db("central")
    schema = f"t_state_{uuidlib.uuid4().hex[:10]}"
    with central.connect(autocommit=False) as conn:
        state.migrate(conn, schema, central.database)
        for s in SITES:
            state.add_site(conn, schema, s, name=f"Clinic {s}")
    yield sites, central, schema
    drop_schema(services["central"].admin, schema)


def _run_two_sites(world, services, broker_settings, tmp_path: Path, destination_type: str,
                   wire_versions: tuple[int, int] = (2, 2)) -> None:
    sites, central, schema = world
    dest = f"test.e2e.{uuidlib.uuid4().hex[:8]}"
    subscription = f"sub{uuidlib.uuid4().hex[:8]}"
    site_id = f"central{uuidlib.uuid4().hex[:6]}"  # topic mode: the durable queue is <site_id>.<subscription>
    rconf, renv = receiver_config(tmp_path, central, broker_settings, destination=dest, state_schema=schema,
                                  destination_type=destination_type, subscription=subscription, site_id=site_id,
                                  batch=200)
    renv["DBSYNC_RECEIVER__RETRY_INTERVAL_SECONDS"] = "1"
    logs = {"receiver": tmp_path / "receiver.log"}
    procs = {"receiver": _start(["receiver", "--site-id", site_id, "--config", str(rconf)], renv, logs["receiver"])}
    tables = list(UUID_TABLES_CHECKED)
    before = _counts(central, tables)
    baseline_users = [u for (u,) in query(central, "SELECT uuid FROM users")]
    try:
        if destination_type == "topic":  # the durable subscription must exist before any sender publishes
            deadline = time.monotonic() + 60
            while "consuming topic" not in logs["receiver"].read_text() and time.monotonic() < deadline:
                assert procs["receiver"].poll() is None, logs["receiver"].read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(0.5)  # the SUBSCRIBE frame is on its way when that line is logged
        for number, site in enumerate(SITES, 1):
            repl = services[site].repl.with_database(sites[site].database)
            sconf, senv = sender_config(tmp_path, repl, broker_settings, site=site, destination=dest, batch=200,
                                        server_id=5000 + number)
            if destination_type == "topic":
                sconf.write_text(sconf.read_text() + 'destination_type = "topic"\n')
            sconf.write_text(sconf.read_text() + f"wire_version = {wire_versions[number - 1]}\n")
            logs[site] = tmp_path / f"sender-{site}.log"
            procs[site] = _start(["sender", "--config", str(sconf)], senv, logs[site])
        # both sites write while their senders run; independent seeds and site names
        truths = {site: generate(sites[site], seed=40 + number, site=site, patients=25, obs_per_encounter=6,
                                 mutations=0.3, transaction_rows=150)
                  for number, site in enumerate(SITES, 1)}
        started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        diffs = _wait_synced(central, truths, procs, logs, timeout=180)
        for site in SITES:
            _stop(procs.pop(site), logs[site])
        _stop(procs.pop("receiver"), logs["receiver"])
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()

    assert diffs == {s: [] for s in SITES}, logs["receiver"].read_text()[-3000:]
    # no batch fell back to the slow message-by-message replay (nothing here is malformed or failing)
    assert "replaying it message by message" not in logs["receiver"].read_text()
    # once more after the clean stop: the final state is what stays
    for site, truth in truths.items():
        assert compare(central, truth, username_suffix=f"|{site}") == []

    # no collisions: each site's rows are distinct rows at central and the counts add up
    after = _counts(central, tables)
    for table in tables:
        expected = {s: set(truths[s].tables.get(table, {})) for s in SITES}
        assert not (expected["site1"] & expected["site2"]), f"{table}: the generator reused uuids across sites"
        found: dict[str, dict[str, int]] = {}
        for site in SITES:
            uuids = sorted(expected[site])
            rows = []
            for i in range(0, len(uuids), 1000):
                part = uuids[i:i + 1000]
                rows += query(central, f"SELECT uuid, `{KEYS.get(table, table + '_id')}` FROM `{table}` WHERE uuid IN "  # noqa: S608
                                      f"({','.join(['%s'] * len(part))})", tuple(part))
            found[site] = {u: int(i) for u, i in rows}
            assert set(found[site]) == expected[site], f"{table}: rows of {site} missing at central"
        assert not (set(found["site1"].values()) & set(found["site2"].values())), f"{table}: central ids collide"
        assert after[table] - before[table] == len(expected["site1"]) + len(expected["site2"]), (
            f"{table}: central grew by {after[table] - before[table]}, the sites hold "
            f"{len(expected['site1'])} + {len(expected['site2'])}")
    assert sum(len(truths[s].tables["obs"]) for s in SITES) > 1000

    s = f"`{schema}`"
    status = dict(query(central, f"SELECT i.identifier, r.last_sync_date FROM {s}.site_info i "  # noqa: S608
                                f"JOIN {s}.receiver_sync_status r ON r.site_id = i.id"))
    assert set(status) == set(SITES)
    for site, last in status.items():
        assert started - dt.timedelta(minutes=5) <= last <= dt.datetime.now(dt.UTC).replace(tzinfo=None), (site, last)
    # The OpenMRS fixture puts users (admin, daemon) in every database with the same uuid: central had them before
    # any site changed them, so they are central's own: the sites' copies are skipped and counted, never parked.
    shared = {u for (u,) in query(central, "SELECT uuid FROM users")} & set(baseline_users)
    assert shared
    conflicts = query(central, f"SELECT table_name, entity_uuid, reason FROM {s}.receiver_conflict_queue")  # noqa: S608
    retries = query(central, f"SELECT table_name, entity_key, reason FROM {s}.receiver_retry_queue")  # noqa: S608
    assert conflicts == [] and retries == [], (conflicts, retries)
    owned = dict(query(central, f"SELECT site, SUM(count) FROM {s}.receiver_skipped "  # noqa: S608
                                f"WHERE reason = 'central_owned' AND table_name = 'users' GROUP BY site"))
    assert set(owned) == set(SITES) and all(n >= len(shared) for n in owned.values()), owned
    assert query(central, f"SELECT COUNT(*) FROM {s}.inbox") == [(0,)]  # noqa: S608
    assert query(central, "SELECT COUNT(*) FROM person WHERE void_reason = '[placeholder]'") == [(0,)]
    if destination_type == "queue":
        assert drain(broker_settings, dest, idle=2) == []


def test_two_sites_through_artemis_into_one_central_v1_and_v2_mixed(world, services, broker_settings,
                                                                    tmp_path) -> None:
    """site1 sends one row per message (wire version 1, a sender older than envelopes), site2 envelopes: one queue,
    one receiver."""
    _run_two_sites(world, services, broker_settings, tmp_path, "queue", wire_versions=(1, 2))


def test_two_sites_topic_with_durable_subscription(world, services, broker_settings, tmp_path) -> None:
    _run_two_sites(world, services, broker_settings, tmp_path, "topic")
