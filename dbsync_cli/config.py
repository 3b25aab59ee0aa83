"""Configuration: one TOML file per role, `DBSYNC_*` environment overrides, secrets from files.

Keys read like the OpenMRS EIP properties (sender id, server id, broker url/user/password, home directory) so an
operator who ran EIP recognises them. Every key is declared once in `KEYS`; validation errors name the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dbsync_cli.db import DbParams
from dbsync_cli.i18n import _

ENV_PREFIX = "DBSYNC_"
MASK = "********"


class ConfigError(Exception):
    """A configuration problem: the message is one line that names the key."""


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    secret: bool = False
    choices: tuple[Any, ...] | None = None
    roles: tuple[str, ...] = ("sender", "receiver")
    help: str = ""


_BOTH = ("sender", "receiver")
_S = ("sender",)
_R = ("receiver",)

KEYS: dict[str, Key] = {
    "home": Key(str, required=True, help="working directory (state, logs), like eip.home"),
    "log_level": Key(str, "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    "log_file": Key(str, None, help="default <home>/logs/dbsync.log"),
    # broker (both roles)
    "broker.url": Key(str, "stomp+ssl://127.0.0.1:61614", help="stomp+ssl://host:port (TLS) or stomp://host:port"),
    "broker.allow_plaintext": Key(bool, False, help="allow a plain stomp:// URL to a host other than loopback"),
    "broker.user": Key(str, required=True),
    "broker.password": Key(str, required=True, secret=True),
    "broker.tls": Key(bool, False),
    "broker.ca_file": Key(str, None),
    "broker.verify_hostname": Key(bool, True),
    "broker.destination": Key(str, "openmrs.sync"),
    "broker.destination_type": Key(str, "queue", choices=("queue", "topic")),
    "broker.batch_messages": Key(int, 500, roles=_S),
    "broker.batch_bytes": Key(int, 2_000_000, roles=_S),
    "broker.compress_over": Key(int, 512, roles=_S),
    "broker.wire_version": Key(int, 2, roles=_S, choices=(1, 2),
                               help="2: several rows per broker message; 1: one row each (a receiver that predates envelopes)"),
    "broker.rows_per_message": Key(int, 100, roles=_S, help="rows per broker message (wire version 2)"),
    "broker.message_bytes": Key(int, 1_000_000, roles=_S,
                                help="JSON bytes per broker message before deflate (wire version 2)"),
    "broker.max_message_bytes": Key(int, 4_000_000),
    "broker.subscription": Key(str, "dbsync", roles=_R, help="durable subscription name (topic mode)"),
    "broker.consumer_window": Key(int, 1_048_576, roles=_R),
    # sender
    "sender.id": Key(str, required=True, roles=_S, help="this site's identifier, e.g. the site name"),
    "sender.server_id": Key(int, required=True, roles=_S, help="replication server id, unique per server"),
    "sender.timezone": Key(str, "UTC", roles=_S, help="time zone of DATETIME values in the site DB"),
    "sender.snapshot": Key(str, "initial", roles=_S, choices=("initial", "never", "when_needed")),
    "sender.catch_up": Key(str, "verify", roles=_S, choices=("verify", "snapshot"),
                           help="with snapshot = when_needed, a purged or restarted checkpoint is caught up by "
                                "`verify --repair` (only what differs is sent; needs the receiver) or by a new "
                                "snapshot (every row sent again)"),
    "sender.catch_up_timeout_seconds": Key(int, 300, roles=_S, help="how long a catch-up waits for each answer "
                                                                    "from central before it takes a snapshot"),
    "sender.requests": Key(bool, True, roles=_S, help="`dbsync sender` takes central's re-sync requests from "
                                                    "<destination>.request.<id> (`dbsync sites resync`)"),
    "sender.snapshot_method": Key(str, "auto", roles=_S, choices=("auto", "mariadb", "lock", "log_status"),
                                  help="how a snapshot finds its binlog position (see docs/installation.md)"),
    "sender.tables": Key(list, None, roles=_S, help="synced tables; default the OpenMRS EIP set"),
    "sender.extra_tables": Key(list, [], roles=_S, help="module tables synced in addition"),
    "sender.min_binlog_retention_hours": Key(int, 72, roles=_S),
    "sender.capture_process": Key(bool, True, roles=_S, help="`dbsync sender` decodes the binlog in a child "
                                                             "process, beside enrich and publish (two cores)"),
    "sender.purge_binlogs": Key(bool, False, roles=_S, help="purge binlog files wholly before the confirmed "
                                                             "checkpoint (needs BINLOG ADMIN)"),
    "sender.keep_binlog_files": Key(int, 2, roles=_S, help="with purge_binlogs: files before the checkpoint's "
                                                          "that stay"),
    "sender.purge_interval_seconds": Key(int, 300, roles=_S),
    "sender.max_transaction_events": Key(int, 20_000, roles=_S, help="an enrich batch grows to the end of its "
                                                                    "transaction, up to this many events"),
    "site_db.host": Key(str, "127.0.0.1", roles=_S),
    "site_db.port": Key(int, 3306, roles=_S),
    "site_db.database": Key(str, "openmrs", roles=_S),
    "site_db.user": Key(str, required=True, roles=_S),
    "site_db.password": Key(str, required=True, secret=True, roles=_S),
    "site_db.ssl_ca": Key(str, None, roles=_S, help="CA file: TLS to the site DB, certificate verified"),
    "site_db.ssl_verify_identity": Key(bool, True, roles=_S, help="with ssl_ca: check the host name too"),
    # receiver
    "receiver.site_id": Key(str, "central", roles=_R, help="this receiver's own identifier"),
    "receiver.timezone": Key(str, "UTC", roles=_R, help="time zone of DATETIME values at central"),
    "receiver.conflict_policy": Key(str, "newer", roles=_R, choices=("newer", "any")),
    "receiver.cross_site_changes": Key(str, "refuse", roles=_R, choices=("refuse", "allow"),
                                       help="a site's change to a row another site created: refuse (error queue) "
                                            "or allow"),
    "receiver.central_rows": Key(str, "skip", roles=_R, choices=("skip", "park"),
                                 help="a site's change to a row central owns: skip and count, or park as a conflict"),
    "receiver.future_tolerance_seconds": Key(int, 120, roles=_R,
                                             help="a change dated more than this after central's clock never beats "
                                                  "a central edit: it is parked as a conflict (site clock ahead?)"),
    "receiver.row_lock_wait_seconds": Key(int, 10, roles=_R,
                                          help="how long apply waits for a row a central transaction holds before "
                                               "it retries the batch, then parks that one message for retry"),
    "receiver.tables": Key(list, None, roles=_R),
    "receiver.extra_tables": Key(list, [], roles=_R),
    "receiver.batch_messages": Key(int, 500, roles=_R),
    "receiver.retry_interval_seconds": Key(int, 60, roles=_R),
    "receiver.applied_ids_days": Key(int, 30, roles=_R, help="how long handled message ids are kept"),
    "central_db.host": Key(str, "127.0.0.1", roles=_R),
    "central_db.port": Key(int, 3306, roles=_R),
    "central_db.database": Key(str, "openmrs", roles=_R),
    "central_db.state_schema": Key(str, "dbsync", roles=_R),
    "central_db.user": Key(str, required=True, roles=_R),
    "central_db.password": Key(str, required=True, secret=True, roles=_R),
    "central_db.ssl_ca": Key(str, None, roles=_R, help="CA file: TLS to the central DB, certificate verified"),
    "central_db.ssl_verify_identity": Key(bool, True, roles=_R, help="with ssl_ca: check the host name too"),
    "console.host": Key(str, "127.0.0.1", roles=_BOTH, help="address `dbsync console` listens on (never exposed: "
                                                         "keep it on loopback or behind a reverse proxy)"),
    "console.port": Key(int, 8800, roles=_BOTH),
    "console.tls_cert": Key(str, None, roles=_BOTH, help="PEM certificate file: serve HTTPS (with tls_key)"),
    "console.tls_key": Key(str, None, roles=_BOTH, help="PEM private key file of tls_cert"),
    "console.metrics_token": Key(str, None, secret=True, roles=_BOTH,
                                 help="when set, /metrics wants `Authorization: Bearer <token>`"),
    "console.session_hours": Key(int, 8, roles=_BOTH, help="how long a login lasts"),
    "openmrs.url": Key(str, None, roles=_R, help="base URL, e.g. http://localhost:8080/openmrs"),
    "openmrs.user": Key(str, None, roles=_R),
    "openmrs.password": Key(str, None, secret=True, roles=_R),
    # `dbsync status` thresholds (a --option of the same name overrides each; 0 turns a threshold off)
    "status.timeout_seconds": Key(int, 5, help="connect timeout of each status probe (broker, database)"),
    "status.lag_warning_seconds": Key(int, 300, roles=_S, help="seconds behind the binlog"),
    "status.lag_critical_seconds": Key(int, 3600, roles=_S),
    "status.lag_warning_bytes": Key(int, 104_857_600, roles=_S, help="binlog bytes after the checkpoint"),
    "status.lag_critical_bytes": Key(int, 1_073_741_824, roles=_S),
    "status.checkpoint_warning_minutes": Key(int, 15, roles=_S, help="checkpoint not moved: sender down or stuck"),
    "status.checkpoint_critical_minutes": Key(int, 60, roles=_S),
    "status.clock_skew_warning_seconds": Key(int, 120, roles=_S, help="the site server's clock this far ahead of "
                                                                     "or behind the sender host's (also config check)"),
    "status.site_silent_warning_minutes": Key(int, 60, roles=_R, help="no change applied from an enabled site"),
    "status.site_silent_critical_minutes": Key(int, 240, roles=_R),
    "status.retry_warning": Key(int, 1, roles=_R, help="entries in the retry queue"),
    "status.retry_critical": Key(int, 100, roles=_R),
    "status.conflict_warning": Key(int, 1, roles=_R, help="unresolved conflicts"),
    "status.conflict_critical": Key(int, 0, roles=_R),
    "status.inbox_warning": Key(int, 10_000, roles=_R, help="messages received and not applied yet"),
    "status.inbox_critical": Key(int, 100_000, roles=_R),
    "status.unconsumed_warning_seconds": Key(int, 60, roles=_R, help="messages waiting at the broker with no "
                                                                    "consumer (receiver down or stuck)"),
    "status.unconsumed_critical_seconds": Key(int, 600, roles=_R),
    "status.rest_failing_warning": Key(int, 1, roles=_R, help="OpenMRS REST calls that failed at least once"),
    "status.rest_failing_critical": Key(int, 0, roles=_R),
}


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _coerce_env(key: str, spec: Key, raw: str) -> Any:
    """Environment values are strings: give them the key's type."""
    kind = spec.type
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(_("{key}: environment variable {name} is not a valid {type}").format(
            key=key, name=_env_name(key), type=_type_name(kind))) from None
    return raw


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


@dataclass
class Config:
    role: str
    values: dict[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value

    @property
    def home(self) -> Path:
        return Path(self.values["home"]).expanduser()

    @property
    def log_file(self) -> Path:
        return Path(self.values.get("log_file") or self.home / "logs" / "dbsync.log")

    def db(self, section: str) -> DbParams:
        return DbParams(
            host=self[f"{section}.host"],
            port=self[f"{section}.port"],
            user=self[f"{section}.user"],
            password=self[f"{section}.password"],
            database=self[f"{section}.database"],
            ssl_ca=self.get(f"{section}.ssl_ca"),
            ssl_verify_identity=bool(self.get(f"{section}.ssl_verify_identity", True)),
        )

    def secrets(self) -> list[str]:
        """Secret values, so log output can mask them wherever they appear."""
        return [str(v) for k, v in self.values.items() if KEYS[k].secret and v]

    def masked(self) -> dict[str, Any]:
        return {k: (MASK if KEYS[k].secret and v else v) for k, v in sorted(self.values.items())}


def load(path: str | os.PathLike[str] | None, role: str, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, resolve secret files, validate. Raises ConfigError on the first problem."""
    problems = validate(path, role, env)
    if isinstance(problems, Config):
        return problems
    raise ConfigError(problems[0])


def validate(path: str | os.PathLike[str] | None, role: str, env: Mapping[str, str] | None = None) -> Config | list[str]:
    """Return the config, or every problem found (one line each)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    tree: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        source = str(path)
        try:
            with Path(path).open("rb") as fh:
                tree = tomllib.load(fh)
        except FileNotFoundError:
            return [_("config file {path}: not found").format(path=path)]
        except tomllib.TOMLDecodeError as exc:
            return [_("config file {path}: invalid TOML: {error}").format(path=path, error=exc)]
    flat = _flatten(tree)
    values: dict[str, Any] = {}
    for key, value in flat.items():
        if key.endswith("_file") and key[: -len("_file")] in KEYS and KEYS[key[: -len("_file")]].secret:
            continue
        if key not in KEYS:
            problems.append(_("{key}: unknown key in {source}").format(key=key, source=source))
        elif role not in KEYS[key].roles:
            problems.append(_("{key}: not a {role} key (it belongs to the {roles} config)").format(
                key=key, role=role, roles="/".join(KEYS[key].roles)))
        else:
            values[key] = value
    for key, spec in KEYS.items():
        if role not in spec.roles:
            continue
        env_value = env.get(_env_name(key))
        if env_value is not None:
            try:
                values[key] = _coerce_env(key, spec, env_value)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
        if spec.secret and values.get(key) is None:
            secret_file = env.get(_env_name(key) + "_FILE") or flat.get(key + "_file")
            if secret_file:
                try:
                    values[key] = Path(secret_file).expanduser().read_text().strip()
                except OSError as exc:
                    problems.append(_("{key}_file: cannot read {path}: {error}").format(
                        key=key, path=secret_file, error=exc.strerror))
                    continue
        value = values.get(key)
        if value is None:
            if spec.required:
                problems.append(_("{key}: missing (set it in {source} or {name})").format(
                    key=key, source=source, name=_env_name(key)))
            values[key] = spec.default
            continue
        if spec.type is int and isinstance(value, bool) or not isinstance(value, spec.type):
            problems.append(_("{key}: expected {type}, got {got} {value}").format(
                key=key, type=_type_name(spec.type), got=type(value).__name__, value=_shown(spec, value)))
        elif spec.choices and value not in spec.choices:
            problems.append(_("{key}: {value} is not one of {choices}").format(
                key=key, value=_shown(spec, value), choices=", ".join(map(str, spec.choices))))
    if not problems:
        problems.extend(_cross_checks(values))
    if problems:
        return problems
    return Config(role=role, values=values, source=source)


def plaintext_host(values: Mapping[str, Any]) -> str | None:
    """The broker host when the URL is plain STOMP (no TLS) to a host other than loopback, else None."""
    url = urlsplit(str(values.get("broker.url") or ""))
    if url.scheme != "stomp" or values.get("broker.tls"):
        return None
    host = url.hostname or ""
    if host == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Rules over several keys: patient data and the broker password never cross a network in clear text unless
    the operator says so."""
    from dbsync_cli.timezones import parse_timezone

    problems = []
    host = plaintext_host(values)
    if host is not None and not values.get("broker.allow_plaintext"):
        problems.append(_("broker.url: plain stomp:// to {host} would send patient data and the broker password "
                          "unencrypted; use stomp+ssl:// (or set broker.allow_plaintext = true)").format(host=host))
    if "sender.id" in values:  # a sender's envelopes; a receiver's limit is its own
        problems += _site_id_checks(str(values["sender.id"]))
        problems += _envelope_checks(values)
    for key in ("sender.timezone", "receiver.timezone"):
        if key in values:
            try:
                parse_timezone(str(values[key]))
            except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
                text = str(exc.args[0]) if exc.args else ""
                why = text if text.startswith("time zone offset") else _("unknown time zone")
                problems.append(_("{key}: {value!r}: {why} (an IANA name such as Africa/Maputo, UTC, or an offset "
                                  "such as +02:00)").format(key=key, value=values[key], why=why))
    return problems


#: central keeps a site's identifier in VARCHAR(100) columns
MAX_SITE_ID = 100


def _site_id_checks(site: str) -> list[str]:
    """The site id travels in every message id (``site:epoch:file:pos:row``) and in the dbsync-site broker header:
    a ``:`` would make ids ambiguous, and a control character cannot travel in a STOMP header (a NUL cuts the
    frame at the receiver)."""
    from dbsync_cli import wire

    if not site.strip() or site != site.strip():
        return [_("sender.id: {value!r} must be a non-empty name without surrounding spaces").format(value=site[:60])]
    if wire.CONTROL_CHARACTERS.search(site) or ":" in site:
        return [_("sender.id: {value!r} holds a control character or ':', which the site's message ids and broker "
                  "headers cannot carry").format(value=site[:60])]
    if len(site) > MAX_SITE_ID:
        return [_("sender.id: {length} characters, over the {most} central stores").format(length=len(site),
                                                                                           most=MAX_SITE_ID)]
    return []


def _envelope_checks(values: Mapping[str, Any]) -> list[str]:
    """A wire-v2 envelope must fit the receiver's message limit and the number of messages it accepts."""
    from dbsync_cli import wire

    def get(key: str) -> Any:
        return values.get(key, KEYS[key].default)

    problems = []
    if not 1 <= get("broker.rows_per_message") <= wire.MAX_ENVELOPE_MESSAGES:
        problems.append(_("broker.rows_per_message: {value} is not from 1 to {most} (what a receiver accepts in one "
                          "message)").format(value=get("broker.rows_per_message"), most=wire.MAX_ENVELOPE_MESSAGES))
    if get("broker.message_bytes") + wire.ENVELOPE_ROOM > get("broker.max_message_bytes"):
        problems.append(_("broker.message_bytes: {value} leaves no room for an envelope under "
                          "broker.max_message_bytes {limit} (keep it at most {most})").format(
            value=get("broker.message_bytes"), limit=get("broker.max_message_bytes"),
            most=get("broker.max_message_bytes") - wire.ENVELOPE_ROOM))
    return problems


def _shown(spec: Key, value: Any) -> str:
    return MASK if spec.secret else repr(value)
