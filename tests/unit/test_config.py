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
    assert run.stderr.strip().splitlines() == [
        f"dbsync: config: sender.server_id: expected int, got bool True (in {sender_file})"]


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


@pytest.mark.parametrize(("edit", "line"), [
    (("server_id = 11", "server_id = -1"), "sender.server_id: -1: must be at least 1 (in {file})"),
    (("server_id = 11", "server_id = 4294967296"), "sender.server_id: 4294967296: must be at most 4294967295 (in {file})"),
    (('[site_db]\n', '[site_db]\nport = 99999\n'), "site_db.port: 99999: must be at most 65535 (in {file})"),
    (('[broker]\n', '[broker]\nbatch_messages = -5\n'), "broker.batch_messages: -5: must be at least 1 (in {file})"),
    (('[site_db]\n', '[site_db]\nhost = ""\n'), "site_db.host: '': must not be empty (in {file})"),
    (('[broker]\n', '[broker]\nurl = "http://mq:61613"\n'),
     "broker.url: 'http://mq:61613': not stomp+ssl://host:port or stomp://host:port (in {file})"),
    (('[broker]\n', '[broker]\nurl = "stomp+ssl://mq:70000"\n'),
     "broker.url: 'stomp+ssl://mq:70000': the port is not from 1 to 65535 (in {file})"),
    (('[broker]\n', '[broker]\ncompress_over = "512"\n'), "broker.compress_over: expected int, got str '512' (in {file})"),
    (('[sender]\n', '[sender]\nextra_tables = ["ok", 3]\n'), "sender.extra_tables: 3: must be a valid string (in {file})"),
])
def test_values_are_checked_by_type_and_range_when_the_config_loads(sender_file: Path, edit, line: str) -> None:
    """Issue 26 item 13: one line naming the key, the value, the rule and the file; nothing else."""
    sender_file.write_text(sender_file.read_text().replace(*edit))
    problems = config.validate(sender_file, "sender", env={})
    assert problems == [line.format(file=sender_file)]


def test_a_value_from_the_environment_names_the_variable_and_a_secret_is_never_shown(sender_file: Path) -> None:
    problems = config.validate(sender_file, "sender", env={"DBSYNC_SITE_DB__PORT": "0"})
    assert problems == ["site_db.port: 0: must be at least 1 (from DBSYNC_SITE_DB__PORT)"]
    sender_file.write_text(sender_file.read_text().replace('password = "broker-secret"', "password = 12345"))
    problems = config.validate(sender_file, "sender", env={})
    assert problems == [f"broker.password: expected str, got int ******** (in {sender_file})"]


@pytest.mark.parametrize("key", ["broker.ca_file", "site_db.ssl_ca", "console.tls_cert", "console.tls_key"])
def test_a_missing_ca_or_certificate_file_is_named_when_the_config_loads(sender_file: Path, key: str) -> None:
    """Issue 26 item 7: a CA file that did not exist made every command loop on stomp.py's `Could not find file
    None`; now the config does not load: one line naming the key and the path."""
    section, name = key.split(".")
    missing = sender_file.parent / "nowhere" / "ca.pem"
    text = sender_file.read_text()
    text = text.replace(f"[{section}]\n", f'[{section}]\n{name} = "{missing}"\n') if f"[{section}]" in text \
        else text + f'\n[{section}]\n{name} = "{missing}"\n'
    sender_file.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(sender_file, "sender", env={})
    assert str(caught.value) == f"{key}: '{missing}': no such file (in {sender_file})"


def test_a_missing_ca_file_stops_sender_and_config_check_at_once_with_exit_2(sender_file: Path) -> None:
    missing = sender_file.parent / "ca-gone.pem"
    sender_file.write_text(sender_file.read_text().replace("[broker]\n", f'[broker]\nca_file = "{missing}"\n'))
    for command in (["sender"], ["publish"], ["config", "check"], ["status", "--json"]):
        run = subprocess.run([sys.executable, "-m", "dbsync_cli", *command, "--config", str(sender_file)],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if command[0] == "status":  # a monitoring plugin's codes: 3 UNKNOWN, the reason in its report
            assert run.returncode == 3 and f"broker.ca_file: '{missing}': no such file" in run.stdout, run
            continue
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, (command, run.returncode, run.stderr)
        assert lines[0].startswith("dbsync: ") and f"broker.ca_file: '{missing}': no such file" in lines[0], lines


def test_defaults_live_only_in_the_model() -> None:
    """The stages' settings dataclasses take their defaults from the model (issue 26 item 13)."""
    import dataclasses

    from dbsync_cli.config_model import DEFAULTS
    from dbsync_cli.receiver.apply import ApplySettings
    from dbsync_cli.receiver.consume import ConsumeSettings
    from dbsync_cli.sender.enrich import EnrichSettings
    from dbsync_cli.sender.publish import PublishSettings

    def default(cls, name):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    for cls, name, key in ((ApplySettings, "batch_messages", "receiver.batch_messages"),
                           (ApplySettings, "row_lock_wait_seconds", "receiver.row_lock_wait_seconds"),
                           (ApplySettings, "future_tolerance_seconds", "receiver.future_tolerance_seconds"),
                           (ApplySettings, "set_apply", "receiver.set_apply"),
                           (ApplySettings, "state_schema", "central_db.state_schema"),
                           (ConsumeSettings, "consumer_window", "broker.consumer_window"),
                           (EnrichSettings, "max_transaction_events", "sender.max_transaction_events"),
                           (PublishSettings, "rows_per_message", "broker.rows_per_message")):
        assert default(cls, name) == config.KEYS[key].default, (cls.__name__, name)
    assert config.KEYS["receiver.batch_messages"].default == DEFAULTS.receiver.batch_messages
    assert config.KEYS["sender.server_id"].required and config.KEYS["site_db.password"].secret


def test_config_check_names_a_home_without_free_space(sender_file: Path, tmp_path: Path) -> None:
    """Issue 26 items 9 and 13: a home on a file system with 2 MiB: `config check` warns, naming it and its free
    space; filled to under 256 kB, it fails with exit 19 (a real small file system: a tmpfs, where the test may
    mount one)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        home = small / "home"
        sender_file.write_text(sender_file.read_text().replace(f'home = "{tmp_path / "home"}"', f'home = "{home}"'))
        argv = [sys.executable, "-m", "dbsync_cli", "config", "check", "--offline", "--config", str(sender_file)]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        assert f"dbsync: config: warning: home {home} has 2.0 MB free of 2.0 MB" in run.stderr, run.stderr
        (small / "filler").write_bytes(b"x" * (2 * 1024 * 1024 - 128 * 1024))
        run = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert run.returncode == 19, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(f"dbsync: config: home {home} has "), run.stderr
        assert "the state directory is full" in run.stderr
    finally:
        subprocess.run(["umount", str(small)], check=True)


SECRET = "S3cretPW-7f1c"


@pytest.mark.parametrize("key", sorted(k for k, spec in config.KEYS.items() if spec.secret))
@pytest.mark.parametrize("bad", [12345, [SECRET], {"x": SECRET}, f"stomp://u:{SECRET}@h:1"])
def test_no_problem_line_shows_a_secret_value(tmp_path: Path, key: str, bad: object) -> None:
    """Review finding 4: every secret key given a wrong value (of a wrong type, or holding the secret inside) gives
    problem lines that name the key and never hold the value."""
    role = "sender" if "sender" in config.KEYS[key].roles else "receiver"
    section, name = key.split(".")
    literal = (f'"{bad}"' if isinstance(bad, str) else f'["{SECRET}"]' if isinstance(bad, list)
               else f'{{ x = "{SECRET}" }}' if isinstance(bad, dict) else str(bad))
    path = tmp_path / "any.toml"
    path.write_text(f'home = "{tmp_path}"\n[{section}]\n{name} = {literal}\n')
    problems = config.validate(path, role, env={})
    assert isinstance(problems, list)
    for line in problems:
        assert SECRET not in line and "12345" not in line, line
    if not isinstance(bad, str):
        assert any(line.startswith(key) for line in problems), problems


@pytest.mark.parametrize(("key", "url"), [
    ("broker.url", f"stomp+ssl://dbsync:{SECRET}@broker.example:61613"),
    ("broker.url", f"stomp+ssl://{SECRET}@broker.example:61613"),
    ("broker.url", f"stomp+ssl://dbsync:{SECRET}@broker.example:99999"),
    ("broker.url", f"stomp+ssl://dbsync:a/{SECRET}@broker.example:61613"),
    ("broker.url", f"amqp://dbsync:{SECRET}@broker.example:5672"),
    ("openmrs.url", f"ftp://admin:{SECRET}@openmrs.example/openmrs"),
])
def test_a_url_with_a_password_is_refused_without_showing_it(sender_file: Path, key: str, url: str) -> None:
    """Review finding 4: `broker.url: 'stomp+ssl://dbsync:S3cretPW@…': holds a password` leaked the password; a
    URL's userinfo is never shown, from the file or from the environment, whatever the rule it breaks."""
    role = "receiver" if key == "openmrs.url" else "sender"
    path = sender_file
    if role == "receiver":
        path = sender_file.parent / "receiver.toml"
        path.write_text(f'home = "{sender_file.parent}"\n[central_db]\npassword = "x"\n[broker]\npassword = "y"\n')
    section, name = key.split(".")
    text = path.read_text()
    path.write_text(text.replace(f"[{section}]\n", f'[{section}]\n{name} = "{url}"\n') if f"[{section}]" in text
                    else text + f'\n[{section}]\n{name} = "{url}"\n')
    env_name = "DBSYNC_" + key.upper().replace(".", "__")
    for env in ({}, {env_name: url}):
        problems = config.validate(path, role, env=env)
        assert isinstance(problems, list) and problems, problems
        assert any(line.startswith(key) for line in problems), problems
        for line in problems:
            assert SECRET not in line, line
    with pytest.raises(config.ConfigError) as caught:
        config.load(path, role, env={})
    assert SECRET not in str(caught.value)


def test_complex_obs_files_are_refused_in_topic_mode(sender_file: Path) -> None:
    """A topic's receivers would share the file queue, each getting a part of each file."""
    env = {"DBSYNC_SENDER__COMPLEX_OBS_DIR": "/srv/obs", "DBSYNC_BROKER__DESTINATION_TYPE": "topic"}
    with pytest.raises(config.ConfigError, match="sender.complex_obs_dir: .*topic mode"):
        config.load(sender_file, "sender", env=env)
    config.load(sender_file, "sender", env={"DBSYNC_SENDER__COMPLEX_OBS_DIR": "/srv/obs"})


def test_rabbitmq_management_api_is_never_asked_in_clear_text_over_a_network(tmp_path: Path) -> None:
    path = tmp_path / "receiver.toml"
    path.write_text(f'home = "{tmp_path}"\n[receiver]\nsite_id = "central"\n[central_db]\nuser = "u"\n'
                    'password = "p"\ndatabase = "openmrs"\n[broker]\nuser = "dbsync"\npassword = "b"\n')
    with pytest.raises(config.ConfigError, match="broker.management_url: plain http:// to mq.example.org"):
        config.load(path, "receiver", env={"DBSYNC_BROKER__MANAGEMENT_URL": "http://mq.example.org:15672"})
    for url in ("https://mq.example.org:15672", "http://127.0.0.1:15672"):
        config.load(path, "receiver", env={"DBSYNC_BROKER__MANAGEMENT_URL": url})
