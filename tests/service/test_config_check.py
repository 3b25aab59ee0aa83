"""Issue 11 item 4: `config check` really checks, one finding per line, exit code of the first error."""

from __future__ import annotations

import uuid as uuidlib

import orjson
import pytest
from helpers import dbsync, receiver_config, sender_config

from dbsync_cli import exitcodes


def _check(conf, env, *extra: str) -> tuple[int, dict]:
    run = dbsync("config", "check", "--json", "--config", str(conf), *extra, env=env, check=False)
    assert "Traceback" not in run.stderr.decode(), run.stderr.decode()
    return run.returncode, orjson.loads(run.stdout) if run.stdout.strip() else {}


def _states(report: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in report["findings"]:
        found.setdefault(f["check"], []).append(f["state"])
    return found


@pytest.fixture
def sender(openmrs_db, services, broker_settings, tmp_path):
    site = openmrs_db("site1")
    return sender_config(tmp_path, services["site1"].repl.with_database(site.database), broker_settings,
                         destination="test.unused"), site


def test_a_good_sender_config_passes_every_check(sender) -> None:
    (conf, env), _ = sender
    code, report = _check(conf, env)
    assert code == 0, report["findings"]
    states = _states(report)
    for name in ("site_db", "site_db.grants", "binlog", "sender.server_id", "sender.timezone", "broker"):
        assert states.get(name) == ["ok"], (name, report["findings"])


@pytest.mark.parametrize(("fault", "check", "code"), [
    ("db password", "site_db", exitcodes.UNREACHABLE),
    ("server id", "sender.server_id", exitcodes.CONFIG),
    ("ca file", "broker.ca_file", exitcodes.CONFIG),
    ("broker password", "broker", exitcodes.UNREACHABLE),
    ("untrusted broker", "broker", exitcodes.UNREACHABLE),
])
def test_each_sender_fault_is_one_finding_with_its_exit_code(sender, services, fault, check, code) -> None:
    (conf, env), _ = sender
    env = dict(env)
    text = conf.read_text()
    art = services.artemis
    if fault == "db password":
        env["DBSYNC_SITE_DB__PASSWORD"] = "wrong-password"
    elif fault == "server id":
        text = text.replace("[sender]\n", "[sender]\n").replace(
            next(line for line in text.splitlines() if line.startswith("server_id")), "server_id = 11")
    elif fault == "ca file":
        text = text.replace("[broker]\n", '[broker]\nca_file = "/nonexistent/ca.pem"\n')
    elif fault == "broker password":
        env["DBSYNC_BROKER__PASSWORD"] = "wrong-password"
    else:
        url = next(line for line in text.splitlines() if line.startswith("url"))
        text = text.replace(url, f'url = "stomp+ssl://{art.host}:{art.tls_port}"\nca_file = "{art.rogue_ca_file}"')
    conf.write_text(text)
    got, report = _check(conf, env)
    errors = [f for f in report["findings"] if f["state"] == "error"]
    assert got == code and errors and errors[0]["check"] == check, report["findings"]
    assert "wrong-password" not in orjson.dumps(report).decode()


def test_grants_the_sender_lacks_or_must_not_have(sender, services) -> None:
    (conf, env), site = sender
    inst = services["site1"]
    user = f"t_grant_{uuidlib.uuid4().hex[:6]}"
    with inst.admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'{inst.admin.host}' IDENTIFIED BY 'pw-{user}'")
        cur.execute(f"GRANT SELECT ON `{site.database}`.* TO '{user}'@'{inst.admin.host}'")
    try:
        conf.write_text(conf.read_text().replace(f'user = "{inst.repl.user}"', f'user = "{user}"'))
        env = {**env, "DBSYNC_SITE_DB__PASSWORD": f"pw-{user}"}
        code, report = _check(conf, env)
        grants = [f for f in report["findings"] if f["check"] == "site_db.grants"]
        assert code == exitcodes.PRIVILEGES == 15 and "lacks REPLICATION SLAVE" in grants[0]["message"], grants
        with inst.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{user}'@'{inst.admin.host}'")
            cur.execute(f"GRANT INSERT, UPDATE ON `{site.database}`.* TO '{user}'@'{inst.admin.host}'")
        code, report = _check(conf, env)
        grants = [f for f in report["findings"] if f["check"] == "site_db.grants"]
        assert code == exitcodes.PRIVILEGES and grants[0]["message"].startswith(
            "the sender's user can write (INSERT, UPDATE)"), grants
    finally:
        with inst.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'{inst.admin.host}'")


def test_receiver_checks_the_state_schema_and_the_site_registry(openmrs_db, services, broker_settings,
                                                                tmp_path) -> None:
    central = openmrs_db("central")
    schema = f"t_check_{uuidlib.uuid4().hex[:8]}"
    conf, env = receiver_config(tmp_path, central, broker_settings, destination="test.unused", state_schema=schema)
    code, report = _check(conf, env)
    assert code == 0 and _states(report)["central_db.state_schema"] == ["warning"], report["findings"]
    dbsync("sites", "add", "site1", "--config", str(conf), env=env)
    code, report = _check(conf, env)
    assert code == 0 and _states(report)["sites"] == ["ok"] and _states(report)["broker"] == ["ok"]
    with services["central"].admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE `{schema}`")
