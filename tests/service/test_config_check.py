"""Issue 11 item 4: `config check` really checks, one finding per line, exit code of the first error."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator

import orjson
import pytest
from helpers import dbsync, receiver_config, sender_config
from test_field_cases import publish_raw

from dbsync_cli import exitcodes


def _check(conf, env, *extra: str) -> tuple[int, dict]:
    run = dbsync("config", "check", "--json", "--config", str(conf), *extra, env=env, check=False)
    assert "Traceback" not in run.stderr.decode(), run.stderr.decode()
    assert run.stdout.strip(), run.stderr.decode()[-2000:]  # config check --json always reports
    return run.returncode, orjson.loads(run.stdout)


def _states(report: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in report["findings"]:
        found.setdefault(f["check"], []).append(f["state"])
    return found


@contextlib.contextmanager
def _site_user(inst, database: str, prefix: str, *global_grants: str) -> Iterator[str]:
    """A throwaway user on `inst` with SELECT on `database` (plus `global_grants` ON *.*), dropped afterwards."""
    user = f"{prefix}_{uuidlib.uuid4().hex[:6]}"
    host = inst.admin.host
    with inst.admin.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw-{user}'")
        cur.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'{host}'")
        if global_grants:
            cur.execute(f"GRANT {', '.join(global_grants)} ON *.* TO '{user}'@'{host}'")
    try:
        yield user
    finally:
        with inst.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'{host}'")


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
        not_pem = conf.parent / "not-a-ca.pem"  # one that is missing does not load at all (test_config.py)
        not_pem.write_text("hello\n")
        text = text.replace("[broker]\n", f'[broker]\nca_file = "{not_pem}"\n')
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
    with _site_user(inst, site.database, "t_grant") as user:
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


def test_the_destination_exists_and_routes_the_way_destination_type_says(openmrs_db, services, broker_settings,
                                                                         tmp_path) -> None:
    central = openmrs_db("central")
    destination = f"test.check.{uuidlib.uuid4().hex[:8]}"
    schema = f"t_check_{uuidlib.uuid4().hex[:8]}"

    def finding(**kwargs) -> tuple[int, dict]:
        conf, env = receiver_config(tmp_path, central, broker_settings, state_schema=schema, **kwargs)
        code, report = _check(conf, env)
        (found,) = [f for f in report["findings"] if f["check"] == "broker.destination"]
        return code, found

    code, found = finding(destination=destination)
    assert code == 0 and found["state"] == "warning" and "does not exist yet" in found["message"], found
    publish_raw(broker_settings, destination, [{"v": 1, "id": "x:1", "site": "x"}])  # a first SEND
    code, found = finding(destination=destination)
    assert code == 0 and found["state"] == "ok" and "routes ANYCAST" in found["message"], found
    code, found = finding(destination=destination, destination_type="topic")
    assert code == exitcodes.CONFIG and found["state"] == "error", found
    assert found["message"] == (f"address '{destination}' routes ANYCAST, but broker.destination_type = 'topic' "
                                "needs MULTICAST"), found


def test_a_sites_broker_user_cannot_read_management_so_the_destination_is_skipped_not_failed(
        openmrs_db, services, tmp_path) -> None:
    site = openmrs_db("site1")
    conf, env = sender_config(tmp_path, services["site1"].repl.with_database(site.database),
                              services.artemis.site_settings("site1"), destination="test.trust.check")
    code, report = _check(conf, env)
    (found,) = [f for f in report["findings"] if f["check"] == "broker.destination"]
    assert code == 0 and found["state"] == "skipped" and "receiver's config check" in found["message"], found


def test_a_server_id_a_replica_of_the_site_server_uses_is_found(sender, services) -> None:
    """A reader registered under the configured id (a real replica would be) makes the check fail; one registered
    by this home's own running sender does not."""
    (conf, env), site = sender
    inst = services["site1"]
    with inst.admin.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    with _site_user(inst, site.database, "t_repl", "REPLICATION SLAVE", "BINLOG MONITOR",
                    "REPLICATION MASTER ADMIN") as user:
        _replica_clash(conf, env, inst, user, file, pos)


def _replica_clash(conf, env, inst, user: str, file: str, pos: int) -> None:
    from pymysqlreplication import BinLogStreamReader

    code, report = _check(conf, env)
    assert code == 0 and _states(report)["sender.server_id.replicas"] == ["skipped"], report["findings"]
    conf.write_text(conf.read_text().replace(f'user = "{inst.repl.user}"', f'user = "{user}"'))
    env = {**env, "DBSYNC_SITE_DB__PASSWORD": f"pw-{user}"}
    ours = int(next(line for line in conf.read_text().splitlines() if line.startswith("server_id")).split("=")[1])
    code, report = _check(conf, env)
    assert code == 0 and _states(report)["sender.server_id"] == ["ok"], report["findings"]
    repl = inst.repl
    stream = BinLogStreamReader(connection_settings={"host": repl.host, "port": repl.port, "user": repl.user,
                                                     "passwd": repl.password},
                                server_id=ours, resume_stream=True, log_file=file, log_pos=pos, blocking=True,
                                report_slave="replica-b")

    def read() -> None:
        with contextlib.suppress(Exception):  # ends when the test kills its connection
            for _ in stream:
                pass

    threading.Thread(target=read, daemon=True).start()
    try:
        def registered() -> bool:
            with inst.admin.connect() as conn, conn.cursor() as cur:
                cur.execute("SHOW SLAVE HOSTS")
                return any(int(row[0]) == ours for row in cur.fetchall())

        deadline = time.monotonic() + 15
        while not registered():
            assert time.monotonic() < deadline, "the reader never registered"
            time.sleep(0.2)
        code, report = _check(conf, env)
        (found,) = [f for f in report["findings"] if f["check"] == "sender.server_id"]
        assert code == exitcodes.CONFIG and found["state"] == "error" and "registered as replica-b" in \
            found["message"], found
    finally:
        with inst.admin.connect() as conn, conn.cursor() as cur:  # close() would block on the reading thread
            if stream._stream_connection is not None:
                cur.execute(f"KILL CONNECTION {int(stream._stream_connection.thread_id())}")


def _server_offsets(db) -> tuple[int, int]:
    """The central server's UTC offsets in minutes in January and July, asked of the server itself."""
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT TIMESTAMPDIFF(MINUTE, '2024-01-15 12:00:00', CONVERT_TZ('2024-01-15 12:00:00', '+00:00', "
                    "@@global.time_zone)), TIMESTAMPDIFF(MINUTE, '2024-07-15 12:00:00', CONVERT_TZ('2024-07-15 "
                    "12:00:00', '+00:00', @@global.time_zone))")
        winter, summer = cur.fetchone()
    return int(winter), int(summer)


def _zone_offsets(name: str) -> tuple[int, int]:
    import datetime as dt
    from zoneinfo import ZoneInfo

    return tuple(int(dt.datetime(2024, month, 15, 12, tzinfo=dt.UTC).astimezone(ZoneInfo(name)).utcoffset()
                     .total_seconds() // 60) for month in (1, 7))


def test_a_valid_but_wrong_time_zone_fails_and_the_servers_own_passes(openmrs_db, services, broker_settings,
                                                                     tmp_path) -> None:
    """Issue 26 item 13: `receiver.timezone` is compared with central's time zone (a SYSTEM zone included) by
    UTC offsets; a zone that differs is an error naming both offsets, exit 2; a named zone with the server's
    offsets passes."""
    central = openmrs_db("central")
    server = _server_offsets(central)
    candidates = ("Etc/UTC", "Africa/Maputo", "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo")
    same = next((z for z in candidates if _zone_offsets(z) == server), None)
    other = next(z for z in candidates if _zone_offsets(z)[0] != server[0] and _zone_offsets(z)[1] != server[1])
    schema = f"t_check_{uuidlib.uuid4().hex[:8]}"
    conf, env = receiver_config(tmp_path, central, broker_settings, destination="test.unused", state_schema=schema)
    code, report = _check(conf, {**env, "DBSYNC_RECEIVER__TIMEZONE": other})
    (found,) = [f for f in report["findings"] if f["check"] == "receiver.timezone"]
    assert code == exitcodes.CONFIG and found["state"] == "error", report["findings"]
    assert found["message"].startswith(f"receiver.timezone = {other!r} is not the server's time zone ") and \
        "UTC" in found["message"], found
    if same is None:
        pytest.skip(f"no candidate zone has the central server's offsets {server}")
    code, report = _check(conf, {**env, "DBSYNC_RECEIVER__TIMEZONE": same})
    (found,) = [f for f in report["findings"] if f["check"] == "receiver.timezone"]
    assert code == 0 and found["state"] == "ok", report["findings"]


def test_the_broker_permissions_each_role_needs_are_tried(openmrs_db, services, tmp_path) -> None:
    """Issue 26 item 13: send and consume on every address the role uses, tried for real with the role's own broker
    user. A site's user that is not the site's (site2 configured as site1) may not read site1's answers; a site's
    user configured as central may not read the sync destination. Exit 15, one finding each."""
    art = services.artemis
    site = openmrs_db("site1")
    destination = f"test.trust.p{uuidlib.uuid4().hex[:6]}"
    conf, env = sender_config(tmp_path, services["site1"].repl.with_database(site.database), art.site_settings("site1"),
                              destination=destination)
    code, report = _check(conf, env)
    assert code == 0 and _states(report)["broker.permissions"] == ["ok"], report["findings"]
    wrong = art.site_settings("site2")
    conf.write_text(conf.read_text().replace('user = "site1"', 'user = "site2"'))
    code, report = _check(conf, {**env, "DBSYNC_BROKER__PASSWORD": wrong.password})
    refused = [f for f in report["findings"] if f["check"] == "broker.permissions"]
    assert code == exitcodes.PRIVILEGES and [f["state"] for f in refused] == ["error", "error"], refused
    assert refused[0]["message"].startswith(f"site2 may not consume from '{destination}.reply.site1' "
                                            "(central's answers): refused (AMQ339016)"), refused
    assert wrong.password not in orjson.dumps(report).decode()

    central = openmrs_db("central")
    conf, env = receiver_config(tmp_path, central, art.central_settings(), destination=destination,
                                state_schema=f"t_check_{uuidlib.uuid4().hex[:8]}")
    dbsync("sites", "add", "site1", "--config", str(conf), env=env)
    code, report = _check(conf, env)
    (found,) = [f for f in report["findings"] if f["check"] == "broker.permissions"]
    assert code == 0 and found["state"] == "ok" and f"{destination}.reply.site1" in found["message"], found
    site_user = art.site_settings("site1")
    conf.write_text(conf.read_text().replace(f'user = "{art.central_settings().user}"', 'user = "site1"'))
    code, report = _check(conf, {**env, "DBSYNC_BROKER__PASSWORD": site_user.password})
    refused = [f for f in report["findings"] if f["check"] == "broker.permissions"]
    assert code == exitcodes.PRIVILEGES and refused and refused[0]["message"].startswith(
        f"site1 may not consume from '{destination}' (the sites' rows)"), refused


def test_a_home_that_is_not_a_directory_is_an_error(sender) -> None:
    (conf, env), _ = sender
    home = conf.parent / "home-is-a-file"
    home.write_text("")
    conf.write_text("\n".join(f'home = "{home}"' if line.startswith("home =") else line
                              for line in conf.read_text().splitlines()) + "\n")
    code, report = _check(conf, env, "--offline")
    (found,) = [f for f in report["findings"] if f["check"] == "home"]
    assert code == exitcodes.CONFIG and found["state"] == "error" and "is not a directory" in found["message"]
