"""Issue 11 item 3: TLS by default; plain STOMP to another host only when the operator says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbsync_cli import config

BASE = ('home = "{home}"\n[sender]\nid = "site1"\nserver_id = 77\n[site_db]\nuser = "u"\npassword = "p"\n'
        '[broker]\nuser = "site1"\npassword = "p"\nurl = "{url}"\n')


def _write(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "sender.toml"
    path.write_text(BASE.format(home=tmp_path / "home", url=url) + extra)
    return path


@pytest.mark.parametrize("url", ["stomp://10.1.2.3:61613", "stomp://broker.example.org:61613"])
def test_plain_stomp_to_another_host_is_refused(tmp_path: Path, url: str) -> None:
    problems = config.validate(_write(tmp_path, url), "sender", env={})
    assert isinstance(problems, list) and len(problems) == 1
    host = url.removeprefix("stomp://").rsplit(":", 1)[0]
    assert problems[0].startswith(f"broker.url: plain stomp:// to {host} would send patient data and the broker "
                                  "password unencrypted")


@pytest.mark.parametrize("url", ["stomp://127.0.0.1:61613", "stomp://localhost:61613", "stomp://[::1]:61613",
                                 "stomp+ssl://broker.example.org:61614"])
def test_loopback_and_tls_urls_are_accepted(tmp_path: Path, url: str) -> None:
    cfg = config.validate(_write(tmp_path, url), "sender", env={})
    assert isinstance(cfg, config.Config) and config.plaintext_host(cfg.values) is None


def test_the_default_url_is_tls() -> None:
    assert config.KEYS["broker.url"].default.startswith("stomp+ssl://")


def _dbsync(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBSYNC_")}
    return subprocess.run([sys.executable, "-m", "dbsync_cli", *args], capture_output=True, timeout=60, env=env)


def test_the_sender_refuses_to_start_and_allow_plaintext_only_warns(tmp_path: Path) -> None:
    path = _write(tmp_path, "stomp://10.1.2.3:61613")
    run = _dbsync("sender", "--config", str(path))
    assert run.returncode == 2
    assert run.stderr.decode().strip().splitlines()[-1].startswith("dbsync: broker.url: plain stomp:// to "
                                                                   "10.1.2.3")
    path = _write(tmp_path, "stomp://10.1.2.3:61613", "allow_plaintext = true\n")
    run = _dbsync("config", "check", "--offline", "--config", str(path))
    assert run.returncode == 0, run.stderr.decode()
    assert "dbsync: config: warning: broker.url: plain stomp:// to 10.1.2.3 (broker.allow_plaintext = true)" in (
        run.stderr.decode())


@pytest.mark.parametrize("zone", ["Africa/Maputu", "Africa", "../etc/passwd", "+02:75"])
def test_a_time_zone_typo_is_a_config_error_not_a_restart_loop(tmp_path: Path, zone: str) -> None:
    path = _write(tmp_path, "stomp://127.0.0.1:61613")
    path.write_text(path.read_text().replace('server_id = 77\n', f'server_id = 77\ntimezone = "{zone}"\n'))
    problems = config.validate(path, "sender", env={})
    assert isinstance(problems, list) and len(problems) == 1 and problems[0].startswith(f"sender.timezone: {zone!r}: ")
    run = _dbsync("sender", "--config", str(path))
    assert run.returncode == 2 and len(run.stderr.decode().strip().splitlines()) == 1, run.stderr.decode()
