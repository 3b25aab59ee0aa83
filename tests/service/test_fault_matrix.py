"""Issue 11 item 5: each fault only an operator can fix ends each command with one line and a documented exit code,
never a traceback and never a restart loop; the password never shows (argv, stderr, stdout)."""

from __future__ import annotations

import subprocess
import sys
import uuid as uuidlib

import pytest
from helpers import receiver_config, sender_config

from dbsync_cli import exitcodes

WRONG = "wrong-" + uuidlib.uuid4().hex[:8]  # a password that must never appear in any output


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "dbsync_cli", *args], env=env, capture_output=True, timeout=120,
                          check=False)


@pytest.fixture
def configs(openmrs_db, services, broker_settings, tmp_path):
    site = openmrs_db("site1")
    central = openmrs_db("central")
    sconf, senv = sender_config(tmp_path, services["site1"].repl.with_database(site.database), broker_settings,
                                destination="test.unused")
    rconf, renv = receiver_config(tmp_path, central, broker_settings, destination="test.unused",
                                  state_schema=f"t_fault_{uuidlib.uuid4().hex[:8]}")
    return (sconf, senv), (rconf, renv)


SENDER_COMMANDS = [["sender", "--until-idle"], ["capture", "--until-idle"], ["schema"]]
RECEIVER_COMMANDS = [["receiver"], ["apply"], ["conflicts", "list"], ["sites", "list"], ["retry", "list"]]


@pytest.mark.parametrize("fault", ["site_db password", "broker password", "time zone"])
@pytest.mark.parametrize("command", SENDER_COMMANDS, ids=" ".join)
def test_sender_commands_fail_with_one_line(configs, fault: str, command: list[str]) -> None:
    (conf, env), _ = configs
    env = dict(env)
    expected = exitcodes.UNREACHABLE
    if fault == "site_db password":
        env["DBSYNC_SITE_DB__PASSWORD"] = WRONG
    elif fault == "broker password":
        if command[0] != "sender":
            pytest.skip("only the sender talks to the broker")
        env["DBSYNC_BROKER__PASSWORD"] = WRONG
    else:
        env["DBSYNC_SENDER__TIMEZONE"] = "Africa/Maputu"
        expected = exitcodes.CONFIG
    run = _run([*command, "--config", str(conf)], env)
    _one_line(run, expected)


@pytest.mark.parametrize("fault", ["central_db password", "broker password"])
@pytest.mark.parametrize("command", RECEIVER_COMMANDS, ids=" ".join)
def test_receiver_commands_fail_with_one_line(configs, fault: str, command: list[str]) -> None:
    _, (conf, env) = configs
    env = dict(env)
    if fault == "central_db password":
        env["DBSYNC_CENTRAL_DB__PASSWORD"] = WRONG
    else:
        if command[0] != "receiver":
            pytest.skip("only the receiver talks to the broker")
        env["DBSYNC_BROKER__PASSWORD"] = WRONG
    run = _run([*command, "--config", str(conf)], env)
    _one_line(run, exitcodes.UNREACHABLE)


def _one_line(run: subprocess.CompletedProcess[bytes], expected: int) -> None:
    err = run.stderr.decode()
    lines = [line for line in err.strip().splitlines() if line.startswith("dbsync:")]
    assert "Traceback" not in err, err[-3000:]
    assert run.returncode == expected, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert WRONG not in err and WRONG not in run.stdout.decode()
    assert "restarting in" not in err  # a fault a restart cannot fix is not retried
