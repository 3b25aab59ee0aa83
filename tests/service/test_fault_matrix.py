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
    assert _first_line(err).startswith("dbsync:"), err[-2000:]  # no library line before it (issue 26 item 11)


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


# -- issue 26: commands that never hang, faults in one line ------------------------------------------------------

#: how long a long-running command may take to stop after SIGTERM (the done-when line of issue 26)
STOP_SECONDS = 10.0
#: the NDJSON a lone `publish` reads (a sync message it will try to send)
ONE_MESSAGE = (b'{"v":1,"id":"site1:e:b.000001:4:0","site":"site1","table":"location","op":"c",'
               b'"uuid":"8d6c993e-c2cc-11de-8d13-0010c6dffd0f","snapshot":false,"sent":"2026-01-01T00:00:00+00:00",'
               b'"source":{"file":"b.000001","pos":4,"row":0},"data":{}}\n')


def _first_line(err: str) -> str:
    """The first stderr line that is not one of dbsync's own log records: dbsync's one line for the fault, never a
    library's (item 11: stomp.py's `could not connect`, `TLS/SSL connection has been closed (EOF)`)."""
    import re

    own = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) dbsync[.:]")
    return next((line for line in err.strip().splitlines() if not own.match(line)), "")


def _closed_port() -> int:
    """A local port nothing listens on: a broker that is down (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], stdin: bytes | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", *args], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    if stdin is not None:
        proc.stdin.write(stdin)
    proc.stdin.close()  # publish sends at the end of its input (or a heartbeat), then retries the broker
    return proc


def _stopped_in(proc: subprocess.Popen[bytes], signals: list[int]) -> tuple[float, int, str]:
    """Send `signals` (back to back: the second arrives while the first stop unwinds) and measure how long the
    process takes to exit."""
    import signal as signal_mod
    import time

    started = time.monotonic()
    for number in signals:
        proc.send_signal(signal_mod.Signals(number))
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf"), proc.returncode, _stderr(proc)
    return time.monotonic() - started, proc.returncode, _stderr(proc)


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None and proc.stdout is not None
    proc.stdout.close()
    return proc.stderr.read().decode()


def _hit(proc: subprocess.Popen[bytes], home: Path, marker: str, timeout: float = 40) -> None:
    """Wait until the process logged `marker` (it met the fault and is retrying)."""
    import time

    log = home / "logs" / "dbsync.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited {proc.returncode}: {_stderr(proc)[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{marker!r} never logged in {log}")


#: long-running command → (its role, the log text that shows it is retrying a broker that is down, stdin)
BROKER_DOWN = {
    "sender": ("sender", "publish failed", None),
    "publish": ("sender", "publish failed", ONE_MESSAGE),
    "receiver": ("receiver", "reconnecting in", None),
    "consume": ("receiver", "reconnecting in", None),
}


def test_long_running_commands_stop_within_seconds_of_sigterm_while_the_broker_is_down(roles) -> None:
    """Item 8: each waits out its backoff in a stop-aware wait; SIGTERM ends it within seconds, exit 0, no
    traceback (seen before: still running 10 minutes after SIGTERM). All four run at once."""
    import signal as signal_mod

    down = f"stomp://127.0.0.1:{_closed_port()}"
    started = {}
    for command, (side, _marker, stdin) in BROKER_DOWN.items():
        role = roles[0] if side == "sender" else roles[1]
        env = {**role.env, "DBSYNC_BROKER__URL": down}
        home = role.home.parent / f"home-{command}"
        conf = role.conf.parent / f"{command}.toml"
        conf.write_text(role.conf.read_text().replace(str(role.home), str(home)))
        started[command] = (_start([command, "--config", str(conf)], env, stdin), home)
    try:
        for command, (proc, home) in started.items():
            _hit(proc, home, BROKER_DOWN[command][1])
        results = {command: _stopped_in(proc, [signal_mod.SIGTERM]) for command, (proc, _home) in started.items()}
    finally:
        for proc, _home in started.values():
            if proc.poll() is None:
                proc.kill()
    for command, (seconds, code, err) in results.items():
        assert "Traceback" not in err and "Logging error" not in err, f"{command}: {err[-3000:]}"
        assert seconds < STOP_SECONDS, f"{command} took {seconds:.1f} s to stop after SIGTERM: {err[-2000:]}"
        assert code == exitcodes.OK, f"{command} exited {code}: {err[-2000:]}"


def test_a_second_ctrl_c_exits_at_once(roles, broker_settings) -> None:
    """Item 8: the first SIGINT asks for a clean stop (publish still waits GRACE_SECONDS for the receipt of what it
    sent, here over a link with 3 s of latency each way), a second one exits at once (128 + 2)."""
    import signal as signal_mod
    import time

    from devtools.field.link import LinkProxy

    sender, _ = roles
    with LinkProxy(broker_settings.host, broker_settings.port, latency_s=3) as link:
        env = {**sender.env, "DBSYNC_BROKER__URL": f"stomp://127.0.0.1:{link.port}"}
        proc = _start(["publish", "--config", str(sender.conf)], env, ONE_MESSAGE)
        try:
            _hit(proc, sender.home, "connected to")
            proc.send_signal(signal_mod.SIGINT)  # the receipt is ~6 s away: publish waits for it
            time.sleep(1)
            assert proc.poll() is None, _stderr(proc)
            seconds, code, err = _stopped_in(proc, [signal_mod.SIGINT])
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 128 + signal_mod.SIGINT, (code, err[-2000:])
    assert seconds < 1, seconds
    assert "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("dbsync: second SIGINT"), err[-2000:]


@pytest.fixture(scope="module")
def refusing(services):
    """Two destinations the broker refuses: one the site user may not send to (it exists: the broker then hides
    why, AMQ339011), one that does not exist while the broker may not create it (AMQ339001)."""
    import orjson as json_mod
    import stomp as stomp_mod

    from dbsync_cli.broker import open_connection
    from dbsync_cli.broker_queue import _Management
    from devtools.services.artemis import site_password

    admin = services.artemis.settings()
    tag = uuidlib.uuid4().hex[:8]
    no_send, unknown = f"test.fault.nosend.{tag}", f"test.fault.noauto.{tag}"
    conn = open_connection(admin)
    listener = stomp_mod.listener.WaitingListener("made")
    conn.set_listener("made", listener)
    conn.send(no_send, body="{}", headers={"destination-type": "ANYCAST", "persistent": "true", "receipt": "made"})
    listener.wait_on_receipt()
    conn.disconnect()
    management = _Management(admin, 10)
    management.call("broker", "addAddressSettings", unknown,
                    json_mod.dumps({"autoCreateAddresses": False, "autoCreateQueues": False}).decode())
    management.close()
    password = site_password(services.artemis.home, "site1")
    SECRETS.add(password)
    yield {"no_send": no_send, "unknown": unknown, "site_password": password}
    # a connection of its own: one held open across the module's tests was found closed by the broker at the end
    # (CI, a loaded machine: stomp.exception.NotConnectedException in this teardown)
    management = _Management(admin, 10)
    management.call("broker", "removeAddressSettings", unknown)
    management.close()
    delete_queues(admin, [no_send])


REFUSALS = [("publish", "no send permission"), ("sender --until-idle", "no send permission"),
            ("publish", "unknown address"), ("sender --until-idle", "unknown address")]


@pytest.mark.parametrize(("command", "fault"), REFUSALS, ids=[f"{c} / {f}" for c, f in REFUSALS])
def test_a_broker_refusal_is_named_in_one_line(roles, refusing, command, fault) -> None:
    """Item 10: not a 600-character `AMQ339011 … CoreMessage[…]` dump retried forever, but the cause in one line and
    an operator-fault exit code (15: a permission; 2: the destination does not exist)."""
    sender, _ = roles
    env = dict(sender.env)
    if fault == "no send permission":
        env.update({"DBSYNC_BROKER__USER": "site1", "DBSYNC_BROKER__PASSWORD": refusing["site_password"],
                    "DBSYNC_BROKER__DESTINATION": refusing["no_send"]})
        expected, words = exitcodes.PRIVILEGES, "lacks send permission"
    else:
        env["DBSYNC_BROKER__DESTINATION"] = refusing["unknown"]
        expected, words = exitcodes.CONFIG, f"address {refusing['unknown']} does not exist"
    run = _run([*command.split(), "--config", str(sender.conf)], env, ONE_MESSAGE if command == "publish" else b"")
    err = run.stderr.decode()
    assert run.returncode == expected, (run.returncode, err[-2000:])
    lines = err.strip().splitlines()
    assert _first_line(err).startswith("dbsync:") and words in _first_line(err), err[-2000:]
    assert "CoreMessage" not in err and "Traceback" not in err, err[-2000:]
    assert len([line for line in lines if line.startswith("dbsync:")]) == 1, err[-2000:]
    assert expected in EXIT_CODES[command.split()[0]], f"exit {expected} is not in man dbsync-{command.split()[0]}"
    _no_secrets(f"{command} / {fault}", run, sender.home)


@pytest.fixture
def tiny_home(tmp_path):
    """A 2 MB tmpfs to be the home: filled, it is a full state directory for real (needs root to mount)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    with (path / "filler").open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass


FULL_HOME = ["sender", "capture", "publish", "receiver", "consume"]


def test_a_full_home_is_one_line_naming_it_and_status_warns_before(roles, tiny_home) -> None:
    """Item 9: a full state directory is one line naming the home and its free space, exit 19, no `--- Logging
    error ---` traceback and no restart loop; `status` warns while space is short (2 MB: under 200 MB)."""
    sender, receiver = roles
    confs = {}
    for side, role in (("sender", sender), ("receiver", receiver)):
        conf = role.conf.parent / f"tiny-{side}.toml"
        conf.write_text(role.conf.read_text().replace(str(role.home), str(tiny_home)))
        confs[side] = (conf, role.env)
    run = _run(["status", "--json", "--config", str(confs["sender"][0])], confs["sender"][1])
    problems = orjson.loads(run.stdout)["problems"]
    assert any(p["check"] == "home" and str(tiny_home) in p["message"] for p in problems), problems
    check = _run(["config", "check", "--offline", "--json", "--config", str(confs["sender"][0])], confs["sender"][1])
    assert check.returncode == 0 and any(str(tiny_home) in w for w in orjson.loads(check.stdout)["warnings"]), check
    _fill(tiny_home)
    check = _run(["config", "check", "--offline", "--config", str(confs["sender"][0])], confs["sender"][1])
    assert check.returncode == exitcodes.HOME_FULL, (check.returncode, check.stderr.decode()[-2000:])
    assert _first_line(check.stderr.decode()).startswith("dbsync:"), check.stderr.decode()
    for command in FULL_HOME:
        conf, env = confs["receiver" if command in ("receiver", "consume") else "sender"]
        run = _run([command, "--config", str(conf)], env, ONE_MESSAGE if command == "publish" else b"")
        err = run.stderr.decode()
        assert run.returncode == exitcodes.HOME_FULL, (command, run.returncode, err[-2000:])
        assert "Traceback" not in err and "Logging error" not in err, (command, err[-2000:])
        assert _first_line(err).startswith("dbsync:") and str(tiny_home) in _first_line(err), (command, err)
        assert "free" in _first_line(err), err
        assert exitcodes.HOME_FULL in EXIT_CODES[command], f"exit 19 is not in man dbsync-{command}"


# -- issue 26 items 7 and 13: faults in the config itself, × sender, receiver, config check, status, consume, publish

#: each command of the done-when line, with its side (sender-side ones read the sender config); a long-running one
#: that gets past the fault is stopped with SIGTERM after CONFIG_RUN_SECONDS and must stop within STOP_SECONDS
CONFIG_COMMANDS = {"sender --until-idle": "sender", "publish": "sender", "config check": "sender",
                   "status": "sender", "receiver": "receiver", "consume --idle-exit 1": "receiver",
                   "config check ": "receiver", "status ": "receiver"}  # a trailing space: the receiver's
CONFIG_RUN_SECONDS = 30.0


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs: a home there cannot be created or written, even by root (needs root to mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _config_fault(role: Role, fault: str, where: Path, read_only: Path | None) -> tuple[Path, dict[str, str],
                                                                                        list[str]]:
    """`role`'s config (written in `where`) and environment with one fault in the config; the words its one line
    must hold."""
    import re

    env, text = dict(role.env), role.conf.read_text()
    conf = where / f"{fault.replace(' ', '-')}-{role.conf.name}"
    if fault == "missing CA file":
        missing = str(where / "no-such-ca.pem")
        env["DBSYNC_BROKER__CA_FILE"] = missing
        words = ["broker.ca_file", missing, "no such file"]
    elif fault == "value out of range":  # the database port, in the TOML file: the line names the file
        text = re.sub(r"(?m)^port = \d+$", "port = 99999", text)
        section = "site_db" if "[site_db]" in text else "central_db"
        words = [f"{section}.port", "99999", "at most 65535", str(conf)]
    else:  # home not writable: under a read-only mount
        assert read_only is not None
        text = text.replace(str(role.home), str(read_only / "home"))
        words = [str(read_only / "home"), "not writable"]
    conf.write_text(text)
    return conf, env, words


def _run_all(commands: dict[str, tuple[list[str], dict[str, str], bytes]]) -> dict[str, tuple[int, str, str, float]]:
    """Run every command at once; a long-running one still running after CONFIG_RUN_SECONDS gets SIGTERM. Returns
    command → (exit code, stderr, stdout, seconds it took to stop after SIGTERM, 0 if it ended by itself)."""
    import signal as signal_mod
    import time

    procs = {name: subprocess.Popen([sys.executable, "-m", "dbsync_cli", *args], env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, env, _stdin) in commands.items()}
    outputs: dict[str, tuple[bytes, bytes]] = {}
    stop_times: dict[str, float] = {}
    import threading

    def drain(name: str, proc: subprocess.Popen[bytes]) -> None:
        outputs[name] = proc.communicate(commands[name][2])

    threads = [threading.Thread(target=drain, args=item) for item in procs.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + CONFIG_RUN_SECONDS
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            stop_times[name] = 0.0
        except subprocess.TimeoutExpired:
            sent = time.monotonic()
            proc.send_signal(signal_mod.SIGTERM)
            try:
                proc.wait(timeout=60)
                stop_times[name] = time.monotonic() - sent
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                stop_times[name] = float("inf")
    for thread in threads:
        thread.join()
    return {name: (procs[name].returncode, outputs[name][1].decode(), outputs[name][0].decode(), stop_times[name])
            for name in procs}


CONFIG_FAULTS = ["missing CA file", "value out of range", "home not writable"]


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_a_config_fault_is_one_line_naming_it_in_every_command(roles, tmp_path, request, fault) -> None:
    """Items 7 and 13: a CA file that does not exist (seen: every command printed stomp.py's `Could not find file
    None` forever and ignored SIGTERM), a value out of its range (seen: `port = 99999` accepted), a home that is not
    writable: each command ends with one `dbsync:` line naming the key (or the home), the value and where it came
    from, exit 2, no traceback. `status` keeps its Nagios convention: a config it cannot read is UNKNOWN (3) with that
    line as its problem; a home no process can write (a read-only file system) is CRITICAL (2)."""
    read_only = request.getfixturevalue("read_only_dir") if fault == "home not writable" else None
    runs: dict[str, tuple[list[str], dict[str, str], bytes]] = {}
    wanted: dict[str, list[str]] = {}
    for command, side in CONFIG_COMMANDS.items():
        role = roles[0] if side == "sender" else roles[1]
        conf, env, words = _config_fault(role, fault, tmp_path, read_only)
        status = command.startswith("status")
        args = [*command.split(), *(["--json"] if status else []), "--config", str(conf)]
        runs[command] = (args, env, ONE_MESSAGE if command == "publish" else b"")
        wanted[command] = words
    results = _run_all(runs)
    failures = []
    for command, (code, err, out, stopped) in results.items():
        name = f"{command.strip()} ({CONFIG_COMMANDS[command]})"
        if "Traceback" in err or "Logging error" in err:
            failures.append(f"{name}: a traceback: {err[-1500:]}")
            continue
        if stopped:
            failures.append(f"{name}: still running after {CONFIG_RUN_SECONDS:.0f} s (stopped in {stopped:.1f} s "
                            f"after SIGTERM): {err[-800:]}")
            continue
        if command.startswith("status"):
            report = orjson.loads(out) if out.strip() else {}
            message = " ".join(p["message"] for p in report.get("problems", []))
            if code != (2 if fault == "home not writable" else 3) or not all(w in message for w in wanted[command]):
                failures.append(f"{name}: exit {code}, problems {report.get('problems')}")
            continue
        lines = [line for line in err.strip().splitlines()  # config check's warnings may come before its error
                 if line.startswith("dbsync:") and not line.startswith("dbsync: config: warning")]
        if code != exitcodes.CONFIG or len(lines) != 1 or not _first_line(err).startswith("dbsync:") \
                or not all(w in lines[0] for w in wanted[command]):
            failures.append(f"{name}: exit {code}, wanted {exitcodes.CONFIG} and one line with {wanted[command]}: "
                            f"{err[-800:]}")
        path = " ".join(w for w in command.split() if not w.startswith("-") and not w.isdigit())
        if exitcodes.CONFIG not in EXIT_CODES[path]:
            failures.append(f"exit 2 is not in man dbsync-{path.replace(' ', '-')}")
    assert not failures, "\n".join(failures)


#: (command, side, fault) → (exit code, words its one line holds); the other commands do not meet the fault: a
#: wrong but valid time zone is `config check`'s to find (it compares it with the server's); publish and sender
#: without send permission are test_a_broker_refusal_is_named_in_one_line's
PERMISSION_CASES = {
    ("config check", "sender", "no broker permission"): (exitcodes.PRIVILEGES, "may not send to"),
    ("config check", "receiver", "no broker permission"): (exitcodes.PRIVILEGES, "may not consume from"),
    ("receiver", "receiver", "no broker permission"): (exitcodes.PRIVILEGES, "lacks consume permission"),
    ("consume --idle-exit 1", "receiver", "no broker permission"): (exitcodes.PRIVILEGES, "lacks consume permission"),
    ("consume --idle-exit 1", "receiver", "unknown address"): (exitcodes.CONFIG, "does not exist"),
    ("config check", "sender", "wrong time zone"): (exitcodes.CONFIG, "sender.timezone = 'Africa/Maputo' is not"),
    ("config check", "receiver", "wrong time zone"): (exitcodes.CONFIG, "receiver.timezone = 'Africa/Maputo' is not"),
}


def test_a_missing_broker_permission_or_a_wrong_time_zone_is_one_line(roles, refusing) -> None:
    """Items 10 and 13, the receiver's side and `config check`: a broker user without `consume` on its queue (the
    broker says only AMQ339016) or an address the broker does not create stops consume and the receiver with one
    line and the exit code publish gives the same fault (15, 2), not a reconnect loop; `config check` tries the
    permissions of every queue the role needs, and compares a valid time zone with the server's (Africa/Maputo is
    +02:00 all year, the test servers UTC). All at once."""
    made = _run(["sites", "list", "--config", str(roles[1].conf)], roles[1].env)  # the state schema, made once
    assert made.returncode == 0, made.stderr.decode()[-2000:]
    runs: dict[str, tuple[list[str], dict[str, str], bytes]] = {}
    for command, side, fault in PERMISSION_CASES:
        role = roles[0] if side == "sender" else roles[1]
        env = dict(role.env)
        if fault == "no broker permission":
            env.update({"DBSYNC_BROKER__USER": "site1", "DBSYNC_BROKER__PASSWORD": refusing["site_password"],
                        "DBSYNC_BROKER__DESTINATION": refusing["no_send"]})
        elif fault == "unknown address":
            env["DBSYNC_BROKER__DESTINATION"] = refusing["unknown"]
        else:
            env["DBSYNC_SENDER__TIMEZONE" if side == "sender" else "DBSYNC_RECEIVER__TIMEZONE"] = "Africa/Maputo"
        runs[f"{command} / {side} / {fault}"] = ([*command.split(), "--config", str(role.conf)], env, b"")
    results = _run_all(runs)
    failures = []
    for (command, side, fault), (expected, words) in PERMISSION_CASES.items():
        name = f"{command} / {side} / {fault}"
        code, err, _out, stopped = results[name]
        lines = [line for line in err.strip().splitlines()
                 if line.startswith("dbsync:") and not line.startswith("dbsync: config: warning")]
        several = command == "config check"  # one line per refused permission: every queue the role needs
        if stopped or "Traceback" in err or code != expected or not lines or (len(lines) != 1 and not several) \
                or words not in lines[0] \
                or not _first_line(err).startswith("dbsync:") or "CoreMessage" in err:
            failures.append(f"{name}: exit {code} (wanted {expected}, {words!r}), stopped {stopped:.1f}: "
                            f"{err[-800:]}")
        path = " ".join(w for w in command.split() if not w.startswith("-") and not w.isdigit())
        if expected not in EXIT_CODES[path]:
            failures.append(f"exit {expected} is not in man dbsync-{path.replace(' ', '-')}")
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def full_broker(tmp_path_factory):
    """An Artemis of its own, started with max-disk-usage 10 (%) on a disk fuller than that: it refuses and then
    blocks every producer (AMQ229119), as H3 reproduced by restarting a broker so. Its ports are free ones."""
    from devtools.services import artemis as art_mod
    from devtools.services.common import stop_pid
    from devtools.services.tls import ensure_tls

    if shutil_disk_percent() <= 10:
        pytest.skip("the disk is under 10 % full: max-disk-usage 10 would not refuse")
    home = tmp_path_factory.mktemp("full-broker")
    ports = [_closed_port() for _ in range(3)]
    broker = art_mod.ArtemisBroker(home=home, core_port=ports[0], stomp_port=ports[1], tls_port=ports[2])
    art_mod._create(broker, art_mod.ensure_distribution(), ensure_tls(home))
    xml = broker.dir / "etc" / "broker.xml"
    text = xml.read_text()
    assert "<max-disk-usage>" in text, "broker.xml has no max-disk-usage to lower"
    import re

    text = re.sub(r"<max-disk-usage>\d+</max-disk-usage>", "<max-disk-usage>10</max-disk-usage>", text)
    xml.write_text(re.sub(r"<disk-scan-period>\d+</disk-scan-period>", "<disk-scan-period>500</disk-scan-period>",
                          text))
    try:
        art_mod._start(broker, timeout=120)
        _wait_for_log(broker.log, "AMQ222210")  # "… beyond the configured <max-disk-usage>": its first scan
        yield broker
    finally:
        stop_pid(broker.pid(), marker=f"-Dartemis.instance={broker.dir}", what="artemis (full disk)", timeout=30)


def _wait_for_log(log: Path, marker: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{marker} never logged in {log}")


def shutil_disk_percent() -> float:
    import shutil
    import tempfile

    usage = shutil.disk_usage(tempfile.gettempdir())
    return 100.0 * usage.used / usage.total


def test_status_names_a_full_broker_disk_until_a_send_succeeds(roles, full_broker, broker_settings) -> None:
    """Item 10: a broker past max-disk-usage (AMQ229119) refuses the batch and then blocks; publish logs the cause
    and retries (a full disk passes when space is freed), `dbsync status` says CRITICAL with one line naming it
    (the broker still answers CONNECT, so the probe alone says ok), and stops saying so once a batch is confirmed
    again. SIGTERM still stops publish within STOP_SECONDS."""
    import signal as signal_mod

    sender, _ = roles
    env = {**sender.env, "DBSYNC_BROKER__URL": f"stomp://127.0.0.1:{full_broker.stomp_port}",
           "DBSYNC_BROKER__USER": full_broker.user, "DBSYNC_BROKER__PASSWORD": full_broker.password}
    SECRETS.add(full_broker.password)
    proc = _start(["publish", "--config", str(sender.conf)], env, ONE_MESSAGE)
    try:
        _hit(proc, sender.home, "its disk is full", timeout=90)
        status = _run(["status", "--json", "--config", str(sender.conf)], env)
        seconds, code, err = _stopped_in(proc, [signal_mod.SIGTERM])
    finally:
        if proc.poll() is None:
            proc.kill()
    report = orjson.loads(status.stdout)
    named = [p for p in report["problems"] if p["check"] == "broker_refused"]
    assert named and named[0]["state"] == "CRITICAL" and "disk is full" in named[0]["message"], report["problems"]
    assert "AMQ229119" in named[0]["message"] and "\n" not in named[0]["message"], named
    assert status.returncode == 2, (status.returncode, report["problems"])
    assert seconds < STOP_SECONDS and code == exitcodes.OK and "Traceback" not in err, (seconds, code, err[-2000:])
    # the broker takes a batch again (here: the normal one): status stops naming the refusal
    sent = _run(["publish", "--config", str(sender.conf)], sender.env, ONE_MESSAGE)
    assert sent.returncode == 0, sent.stderr.decode()[-2000:]
    after = orjson.loads(_run(["status", "--json", "--config", str(sender.conf)], sender.env).stdout)
    assert not [p for p in after["problems"] if p["check"] == "broker_refused"], after["problems"]
    assert after.get("broker_refused") is None, after
    _no_secrets("full broker disk", status, sender.home)
