import subprocess
import sys
from pathlib import Path

import pytest

from dbsync_cli import config

SENDER = """
home = "{home}"
[sender]
id = "site1"
server_id = 11
[site_db]
user = "dbsync_repl"
password_file = "{secret}"
[broker]
user = "dbsync"
password = "broker-secret"
"""


@pytest.fixture
def sender_file(tmp_path: Path) -> Path:
    secret = tmp_path / "db.pass"
    secret.write_text("db-secret\n")
    path = tmp_path / "sender.toml"
    path.write_text(SENDER.format(home=tmp_path / "home", secret=secret))
    return path


def test_valid_sender_config_reads_secret_file_and_defaults(sender_file: Path) -> None:
    cfg = config.load(sender_file, "sender", env={})
    assert cfg["site_db.password"] == "db-secret"
    assert cfg["broker.destination"] == "openmrs.sync"
    assert cfg.log_file == cfg.home / "logs" / "dbsync.log"
    assert "db-secret" not in str(cfg.masked()) and "broker-secret" not in str(cfg.masked())


def test_environment_overrides_with_types(sender_file: Path) -> None:
    env = {"DBSYNC_SITE_DB__PORT": "3307", "DBSYNC_BROKER__TLS": "yes", "DBSYNC_BROKER__PASSWORD": "from-env"}
    cfg = config.load(sender_file, "sender", env=env)
    assert cfg["site_db.port"] == 3307 and cfg["broker.tls"] is True and cfg["broker.password"] == "from-env"


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t.replace('id = "site1"\n', ""), "sender.id: missing"),
        (lambda t: t.replace("server_id = 11", 'server_id = "eleven"'), "sender.server_id: expected int"),
        (lambda t: t + '\n[extra]\nthing = 1\n', "extra.thing: unknown key"),
        (lambda t: t.replace('[broker]', '[broker]\ndestination_type = "fanout"'), "broker.destination_type"),
        (lambda t: t.replace("[site_db]", "[site_db\n"), "invalid TOML"),
    ],
)
def test_broken_config_gives_one_line_naming_the_key(sender_file: Path, edit, key: str) -> None:
    sender_file.write_text(edit(sender_file.read_text()))
    problems = config.validate(sender_file, "sender", env={})
    assert isinstance(problems, list)
    assert any(key in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_bad_env_value_is_named(sender_file: Path) -> None:
    problems = config.validate(sender_file, "sender", env={"DBSYNC_SITE_DB__PORT": "abc"})
    assert problems == ["site_db.port: environment variable DBSYNC_SITE_DB__PORT is not a valid int"]


def test_receiver_key_in_sender_config_is_refused(sender_file: Path) -> None:
    sender_file.write_text(sender_file.read_text() + '\n[central_db]\nhost = "x"\n')
    problems = config.validate(sender_file, "sender", env={})
    assert any("central_db.host: not a sender key" in p for p in problems)


def test_cli_config_check_rejects_broken_config(sender_file: Path) -> None:
    sender_file.write_text(sender_file.read_text().replace("server_id = 11", "server_id = true"))
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "config", "check", "--config", str(sender_file),
                          "--offline"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["dbsync: config: sender.server_id: expected int, got bool True"]


def test_cli_config_check_masks_secrets(sender_file: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "config", "check", "--config", str(sender_file),
                          "--offline", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "db-secret" not in run.stdout and "broker-secret" not in run.stdout
    assert '"site_db.password":"********"' in run.stdout


def test_example_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    env = {"DBSYNC_SITE_DB__PASSWORD": "x", "DBSYNC_BROKER__PASSWORD": "x", "DBSYNC_CENTRAL_DB__PASSWORD": "x",
           "DBSYNC_OPENMRS__PASSWORD": "x"}
    assert isinstance(config.validate(root / "sender.toml", "sender", env=env), config.Config)
    assert isinstance(config.validate(root / "receiver.toml", "receiver", env=env), config.Config)


def test_the_wire_version_reaches_publish_and_only_1_or_2_is_accepted(sender_file: Path) -> None:
    import threading

    from dbsync_cli.sender.run import publish_settings

    settings = publish_settings(config.load(sender_file, "sender", env={}), threading.Event())
    assert (settings.wire_version, settings.rows_per_message, settings.compress_over) == (2, 100, 512)
    older = config.load(sender_file, "sender", env={"DBSYNC_BROKER__WIRE_VERSION": "1"})
    assert publish_settings(older, threading.Event()).wire_version == 1
    sender_file.write_text(sender_file.read_text().replace("[broker]", "[broker]\nwire_version = 3"))
    with pytest.raises(config.ConfigError, match="broker.wire_version"):
        config.load(sender_file, "sender", env={})


def test_an_envelope_must_fit_what_a_receiver_accepts(sender_file: Path) -> None:
    for env, key in (({"DBSYNC_BROKER__ROWS_PER_MESSAGE": "20000"}, "broker.rows_per_message"),
                     ({"DBSYNC_BROKER__ROWS_PER_MESSAGE": "0"}, "broker.rows_per_message"),
                     ({"DBSYNC_BROKER__MESSAGE_BYTES": "3999000"}, "broker.message_bytes")):
        with pytest.raises(config.ConfigError, match=key):
            config.load(sender_file, "sender", env=env)


@pytest.mark.parametrize("site", ["site\x001", "site\n1", "site\r1", "site\x7f", "site\t1", "site:1", " site1", ""])
def test_a_site_id_that_headers_or_message_ids_cannot_carry_is_a_config_error(sender_file: Path, site: str) -> None:
    """Issue 25 case 4: the site id travels in every dbsync-site header and message id; a NUL in it cut frames at
    the receiver. One line naming sender.id, before anything connects."""
    text = sender_file.read_text().replace('id = "site1"\n', f"id = {orjson_string(site)}\n")
    sender_file.write_text(text)
    problems = config.validate(sender_file, "sender", env={})
    assert isinstance(problems, list) and len(problems) == 1, problems
    assert problems[0].startswith("sender.id: ") and "\n" not in problems[0], problems


def orjson_string(value: str) -> str:
    """A TOML basic string for any text (JSON's escapes are TOML's)."""
    import json

    return json.dumps(value)


def test_cli_config_check_refuses_a_site_id_with_a_nul_byte(sender_file: Path) -> None:
    sender_file.write_text(sender_file.read_text().replace('id = "site1"\n', 'id = "site1\\u0000x"\n'))
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "config", "check", "--config", str(sender_file),
                          "--offline"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "dbsync: config: sender.id: 'site1\\x00x' holds a control character or ':', which the site's message ids "
        "and broker headers cannot carry"]
