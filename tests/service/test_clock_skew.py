"""Issue 25, case 5: a site whose server clock runs ahead dated its edits in central's future, so the conflict rule
("central's latest date after the incoming one's") let them overwrite central's later edits: silently, 0 conflicts,
nothing in `status` or `config check`. The site server here runs under libfaketime, 10 minutes ahead."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from helpers import dbsync, sender_config
from receiver_helpers import Site, drop_schema, make_central
from test_apply import new_person, outcomes

from devtools.field.clock import offset_seconds, start_skewed_mariadb
from devtools.services import destroy_mariadb
from devtools.services.common import port_offset

OFFSET = "+10m"


@pytest.fixture(scope="module")
def skewed(services) -> Iterator[object]:
    """A site server (its own MariaDB instance) with its clock 10 minutes ahead of this machine's."""
    inst = start_skewed_mariadb("clock-skew-site", OFFSET, port=23481 + port_offset(), server_id=481)
    try:
        yield inst
    finally:
        destroy_mariadb(inst)


@pytest.fixture
def skewed_site(skewed, tmp_path, broker_settings) -> Iterator[Site]:
    from devtools.workload.openmrs import load_openmrs

    inst = skewed
    name = f"t_clock_{tmp_path.name[-20:]}".replace("-", "_")
    load_openmrs(inst.admin, name, metadata=True)  # type: ignore[attr-defined]
    admin = inst.admin.with_database(name)  # type: ignore[attr-defined]
    repl = inst.repl.with_database(name)  # type: ignore[attr-defined]
    work = tmp_path / "work-site1"
    work.mkdir()
    conf, env = sender_config(work, repl, broker_settings, site="site1", destination="test.unused",
                              home=tmp_path / "home-site1")
    site = Site(admin, conf, env, tmp_path / "home-site1")
    site.initial = site.messages()
    yield site
    with inst.admin.connect() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    c = make_central(openmrs_db, tmp_path, broker_settings)
    yield c
    drop_schema(c)


def _server_ahead(site: Site) -> float:
    import time

    (server,) = site.sql("SELECT UNIX_TIMESTAMP(NOW(6))")[0]
    return float(server) - time.time()


def test_a_site_clock_ahead_never_beats_a_later_central_edit(central, skewed_site) -> None:
    site = skewed_site
    assert abs(_server_ahead(site) - offset_seconds(OFFSET)) < 5  # the bed works: the site server is 10 min ahead
    _person, name = new_person(site)
    assert set(outcomes(central.apply(site.messages()))) == {"applied"}
    # the site edits the name at 12:10 by its clock (really 12:00) ...
    site.sql("UPDATE person_name SET family_name='SiteEdit', date_changed=NOW() WHERE uuid=%s", (name,))
    # ... central corrects it at 12:01 (real time), before the site's change arrives
    central.sql("UPDATE person_name SET family_name='CentralEdit', date_changed=NOW() WHERE uuid=%s", (name,))
    results = central.apply(site.messages())
    assert outcomes(results) == Counter({"conflict": 1}), results
    assert central.sql("SELECT family_name FROM person_name WHERE uuid=%s", (name,)) == [("CentralEdit",)]
    ((reason,),) = central.sql(f"SELECT reason FROM `{central.schema}`.receiver_conflict_queue "
                               "WHERE entity_uuid=%s AND resolved=0", (name,))
    assert "in central's future" in reason and "site clock ahead" in reason, reason
    assert "10 min" in reason or "9 min" in reason, reason

    # the site sees it too: `dbsync status` warns, --json carries the measured skew, config check names it
    run = dbsync("status", "--json", "--config", str(site.config), env=site.env, check=False)
    report = orjson.loads(run.stdout)
    assert abs(report["clock_skew_seconds"] - 600) < 10, report.get("clock_skew_seconds")
    clock = [p for p in report["problems"] if p["check"] == "clock"]
    assert clock and clock[0]["state"] == "WARNING", report["problems"]
    assert "ahead" in clock[0]["message"], clock
    table = dbsync("status", "--config", str(site.config), env={**site.env, "COLUMNS": "200"},
                   check=False).stdout.decode()
    assert "clock" in table and "ahead" in table, table
    run = dbsync("config", "check", "--json", "--config", str(site.config), env=site.env, check=False)
    findings = {f["check"]: f for f in orjson.loads(run.stdout)["findings"]}
    assert findings["site_db.clock"]["state"] == "warning", findings
    assert "ahead" in findings["site_db.clock"]["message"], findings["site_db.clock"]
    # a higher threshold (the config key) turns the warning off
    conf = site.config.read_text() + "[status]\nclock_skew_warning_seconds = 900\n"
    site.config.write_text(conf)
    report = orjson.loads(dbsync("status", "--json", "--config", str(site.config), env=site.env,
                                 check=False).stdout)
    assert not [p for p in report["problems"] if p["check"] == "clock"], report["problems"]


def test_a_future_dated_change_of_a_row_central_never_edited_applies_and_is_counted(central, skewed_site) -> None:
    site = skewed_site
    _person, name = new_person(site)
    assert set(outcomes(central.apply(site.messages()))) == {"applied"}
    site.sql("UPDATE person_name SET family_name='SiteOnly', date_changed=NOW() WHERE uuid=%s", (name,))
    results = central.apply(site.messages())
    assert outcomes(results) == Counter({"applied": 1}), results  # nothing central did to protect
    assert central.sql("SELECT family_name FROM person_name WHERE uuid=%s", (name,)) == [("SiteOnly",)]
    assert "dated" in central.last_stderr and "future" in central.last_stderr, central.last_stderr[-2000:]
    run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
    report = orjson.loads(run.stdout)
    (row,) = [s for s in report["sites"] if s["identifier"] == "site1"]
    assert row["future_dated"] == 1, row
    assert "future_dated" not in row["skipped"], row  # it was applied: not under "not applied"
    assert any(p["check"] == "clock" and "site1" in p["message"] for p in report["problems"]), report["problems"]
