"""Issue 11 items 5 and 6: each fault only an operator can fix ends each command with one line and a documented
exit code, never a traceback and never a restart loop; no password shows anywhere (argv, stderr, stdout, the
JSON of `status` and `config check`, the logs, state.sqlite), and what the commands create is readable by their
owner only."""

from __future__ import annotations

import stat
import subprocess
import sys
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from helpers import receiver_config, sender_config

from dbsync_cli import exitcodes
from devtools.bench import delete_queues
from devtools.manpages import EXIT_CODES

WRONG = "wrong-" + uuidlib.uuid4().hex[:8]  # a password that must never appear in any output
GRANT_PASSWORD = "grant-" + uuidlib.uuid4().hex[:8]
#: every password a run saw: the wrong ones and the real ones (collected by the fixtures)
SECRETS: set[str] = {WRONG, GRANT_PASSWORD}
DESTINATION = f"test.fault.{uuidlib.uuid4().hex[:8]}"


@dataclass
class Role:
    conf: Path
    env: dict[str, str]
    home: Path


def _run(args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "dbsync_cli", *args], env=env, capture_output=True, timeout=120,
                          check=False, input=stdin)


@pytest.fixture(scope="module")
def grant_users(services, databases):
    """A sender user without REPLICATION SLAVE and a receiver user without rights on the state schema."""
    site, central = services["site1"].admin, services["central"].admin
    sender_user, receiver_user = f"t_nogrant_{uuidlib.uuid4().hex[:6]}", f"t_nostate_{uuidlib.uuid4().hex[:6]}"
    with site.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{sender_user}'@'{site.host}' IDENTIFIED BY '{GRANT_PASSWORD}'")
        cur.execute(f"GRANT SELECT ON *.* TO '{sender_user}'@'{site.host}'")
    with central.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE USER '{receiver_user}'@'{central.host}' IDENTIFIED BY '{GRANT_PASSWORD}'")
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{databases[1].database}`.* "
                    f"TO '{receiver_user}'@'{central.host}'")
    yield sender_user, receiver_user
    with site.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP USER '{sender_user}'@'{site.host}'")
    with central.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP USER '{receiver_user}'@'{central.host}'")


@pytest.fixture(scope="module")
def databases(services):
    """One site and one central OpenMRS database for the whole matrix (only read: no command gets far enough to
    write), and one state schema name, dropped at the end."""
    from devtools.workload.openmrs import load_openmrs

    tag = uuidlib.uuid4().hex[:8]
    site, central = services["site1"].admin, services["central"].admin
    made = [(site, f"t_fault_site_{tag}"), (central, f"t_fault_central_{tag}")]
    for admin, name in made:
        load_openmrs(admin, name, metadata=False)
    yield site.with_database(made[0][1]), central.with_database(made[1][1]), f"t_fault_state_{tag}"
    delete_queues(services.artemis.settings(), [DESTINATION])  # the snapshot a SELECT-only sender could send
    for admin, name in [*made, (central, f"t_fault_state_{tag}")]:
        with admin.with_database(None).connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def roles(databases, services, broker_settings, tmp_path):
    site, central, state_schema = databases
    repl = services["site1"].repl.with_database(site.database)
    sconf, senv = sender_config(tmp_path, repl, broker_settings, destination=DESTINATION)
    rconf, renv = receiver_config(tmp_path, central, broker_settings, destination=DESTINATION,
                                  state_schema=state_schema)
    SECRETS.update({repl.password, central.password, broker_settings.password or ""} - {""})
    return Role(sconf, senv, tmp_path / "home-site1"), Role(rconf, renv, tmp_path / "home-receiver")


def _with_fault(role: Role, fault: str, db: str, tz_key: str, user: str, art) -> dict[str, str]:
    """The environment of `role` with one fault an operator must fix."""
    env = dict(role.env)
    if fault == "db password":
        env[f"DBSYNC_{db.upper()}__PASSWORD"] = WRONG
    elif fault == "broker password":
        env["DBSYNC_BROKER__PASSWORD"] = WRONG
    elif fault == "untrusted broker":
        env["DBSYNC_BROKER__URL"] = f"stomp+ssl://{art.host}:{art.tls_port}"
        env["DBSYNC_BROKER__CA_FILE"] = str(art.rogue_ca_file)
    elif fault == "time zone":
        env[tz_key] = "Africa/Maputu"
    else:  # missing grant
        env[f"DBSYNC_{db.upper()}__USER"] = user
        env[f"DBSYNC_{db.upper()}__PASSWORD"] = GRANT_PASSWORD
    return env


FAULTS = ["db password", "broker password", "untrusted broker", "time zone", "missing grant"]
EXPECTED = {"db password": exitcodes.UNREACHABLE, "broker password": exitcodes.UNREACHABLE,
            "untrusted broker": exitcodes.UNREACHABLE, "time zone": exitcodes.CONFIG,
            "missing grant": exitcodes.PRIVILEGES}
#: command → the faults it meets (the others it never touches: the server it does not talk to)
SENDER_COMMANDS = {
    "sender --until-idle": FAULTS,
    "capture --until-idle": ["db password", "time zone", "missing grant"],
    "schema": ["db password", "time zone"],
    "enrich": ["db password", "time zone"],
    "publish": ["broker password", "untrusted broker", "time zone"],
    "config check": FAULTS,
    "status": FAULTS,
}
RECEIVER_COMMANDS = {
    "receiver": FAULTS,
    "apply": ["db password", "time zone", "missing grant"],
    "consume --idle-exit 1": ["db password", "broker password", "untrusted broker", "time zone", "missing grant"],
    "conflicts list": ["db password", "time zone", "missing grant"],
    "sites list": ["db password", "time zone", "missing grant"],
    "retry list": ["db password", "time zone", "missing grant"],
    "config check": FAULTS,
    "status": FAULTS,
}
#: what status grades a fault: CRITICAL (2) for a server that refuses us, UNKNOWN (3) when it cannot judge (a
#: config it cannot read, a grant it needs to read the binlog lag)
STATUS_EXPECTED = {"time zone": 3}
SENDER_CASES = [(c, f) for c, faults in SENDER_COMMANDS.items() for f in faults]
RECEIVER_CASES = [(c, f) for c, faults in RECEIVER_COMMANDS.items() for f in faults]
#: one line on stdin for the stages that read it (enrich: a change event; publish: a sync message)
STDIN = {"enrich": b'{"op":"insert","table":"location","pk":{"location_id":1},"source":{"file":"b.000001","pos":4,'
                   b'"row":0,"ts":0,"epoch":"e"}}\n',
         "publish": b'{"id":"site1:e:b.000001:4:0","site":"site1","table":"location","op":"insert",'
                    b'"uuid":"8d6c993e-c2cc-11de-8d13-0010c6dffd0f","row":{},"source":{}}\n'}


@pytest.mark.parametrize(("command", "fault"), SENDER_CASES, ids=[f"{c} / {f}" for c, f in SENDER_CASES])
def test_sender_commands_stop_with_one_line_and_the_documented_code(roles, grant_users, services, command,
                                                                    fault) -> None:
    sender, _ = roles
    env = _with_fault(sender, fault, "site_db", "DBSYNC_SENDER__TIMEZONE", grant_users[0], services.artemis)
    _check(command, fault, sender, env)


@pytest.mark.parametrize(("command", "fault"), RECEIVER_CASES, ids=[f"{c} / {f}" for c, f in RECEIVER_CASES])
def test_receiver_commands_stop_with_one_line_and_the_documented_code(roles, grant_users, services, command,
                                                                      fault) -> None:
    _, receiver = roles
    env = _with_fault(receiver, fault, "central_db", "DBSYNC_RECEIVER__TIMEZONE", grant_users[1], services.artemis)
    _check(command, fault, receiver, env)


def _check(command: str, fault: str, role: Role, env: dict[str, str]) -> None:
    words = command.split()
    json_flag = ["--json"] if words[0] in ("status", "config") else []
    args = [*words, *json_flag, "--config", str(role.conf)]
    assert not SECRETS & set(args)
    run = _run(args, env, STDIN.get(words[0], b""))
    err, out = run.stderr.decode(), run.stdout.decode()
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert "restarting in" not in err, err[-2000:]  # a fault a restart cannot fix is not retried
    _no_secrets(f"{command} / {fault}", run, role.home)
    if words[0] == "status":
        expected = STATUS_EXPECTED.get(fault, 2)  # CRITICAL, the report names the server
        if fault == "missing grant":
            expected = 3  # the lag cannot be read without BINLOG MONITOR, the state without its grant
        assert run.returncode == expected, (run.returncode, err[-2000:], out[-2000:])
        report = orjson.loads(run.stdout)
        assert report["problems"], report
        return
    expected = EXPECTED[fault]
    assert run.returncode == expected, (run.returncode, err[-2000:])
    path = " ".join(w for w in words if not w.startswith("-") and not w.isdigit())
    assert expected in EXIT_CODES[path], f"exit {expected} is not in man dbsync-{path.replace(' ', '-')}"
    errors = [line for line in err.strip().splitlines()
              if line.startswith("dbsync:") and not line.startswith("dbsync: config: warning")]
    assert len(errors) == 1, err[-2000:]


def _no_secrets(what: str, run: subprocess.CompletedProcess[bytes], home: Path) -> None:
    """No password in what the run printed or left behind; the home, its logs and state readable by the owner
    only."""
    found = [(name, s) for s in SECRETS for name, data in (("stdout", run.stdout), ("stderr", run.stderr))
             if s.encode() in data]
    if home.exists():
        assert stat.S_IMODE(home.stat().st_mode) & 0o077 == 0, f"{what}: {home} is {oct(home.stat().st_mode)}"
        for path in home.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{what}: {path} is {oct(path.stat().st_mode)}"
            if path.is_file():
                data = path.read_bytes()
                found += [(str(path), s) for s in SECRETS if s.encode() in data]
    assert not found, f"{what}: a password shows in {sorted({n for n, _ in found})}"
