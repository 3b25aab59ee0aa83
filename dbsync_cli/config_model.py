"""The one typed settings model: every configuration key, its type, default, range and help, declared once.

`config.py` reads TOML, the environment and secret files into this model; pydantic checks each value's type and
range as the config loads, so a process never starts with `server_id = -1` or a CA file that is not there. The
settings dataclasses of the stages (ApplySettings, PublishSettings, …) take their defaults from `DEFAULTS` here,
never from literals of their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# These models use no pydantic plugin: without this, building them scans every installed package's entry points for
# one (20–70 ms of each dbsync command's start; a stage in a pipe starts often). An operator's own value is kept.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

SENDER = ("sender",)
RECEIVER = ("receiver",)
BOTH = ("sender", "receiver")


def key(default: Any = None, *, help: str = "", roles: tuple[str, ...] = BOTH, secret: bool = False,
        required: bool = False, **rules: Any) -> Any:
    """One key: its default, help text, the roles whose config holds it, and its pydantic rules (ge, le, …).
    `required` keys default to None in the model; the loader asks for them per role."""
    return Field(default, description=help, json_schema_extra={"roles": list(roles), "secret": secret,
                                                               "required": required}, **rules)


def _readable_file(value: str | None) -> str | None:
    """A CA, certificate or key file must be there when the config loads: a missing one made stomp.py print
    `Could not find file None` forever instead of failing."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise PydanticCustomError("file_missing", "no such file" if not path.exists() else "not a regular file")
    if not os.access(path, os.R_OK):
        raise PydanticCustomError("file_unreadable", "not readable by this user")
    return str(path)  # `~` expanded: TLS libraries take the path as it is


def _time_zone(value: str) -> str:
    from dbsync_cli.timezones import parse_timezone

    try:
        parse_timezone(value)
    except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
        text = str(exc.args[0]) if exc.args else ""
        why = text if text.startswith("time zone offset") else "unknown time zone"
        raise PydanticCustomError("time_zone", "{why} (an IANA name such as Africa/Maputo, UTC, or an offset such as "
                                  "+02:00)", {"why": why}) from None
    return value


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise PydanticCustomError("http_url", "not an http:// or https:// URL")
    return value


def _stomp_url(value: str) -> str:
    """The broker URL's scheme and port, checked here rather than at the first connect (a supervisor loop)."""
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("stomp", "stomp+ssl") or not parts.hostname:
        raise PydanticCustomError("stomp_url", "not stomp+ssl://host:port or stomp://host:port")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise PydanticCustomError("stomp_url", "the port is not from 1 to 65535")
    if parts.username is not None or parts.password is not None:  # never shown (config._shown masks userinfo)
        raise PydanticCustomError("stomp_url", "holds a user or password: configure broker.user and "
                                  "broker.password instead")
    return value


def _ip_network(value: str) -> str:
    """console.trusted_proxies: each an IP address or network, so the console never fails on its first login."""
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise PydanticCustomError("ip_network", "not an IP address or network") from None
    return value


FilePath = Annotated[str | None, AfterValidator(_readable_file)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]
HttpUrl = Annotated[str | None, AfterValidator(_http_url)]
StompUrl = Annotated[str, AfterValidator(_stomp_url)]
Name = Annotated[str, Field(min_length=1)]
IpNetwork = Annotated[str, AfterValidator(_ip_network)]


class Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=False)


class Broker(Section):
    url: StompUrl = key("stomp+ssl://127.0.0.1:61614", help="stomp+ssl://host:port (TLS) or stomp://host:port")
    allow_plaintext: bool = key(False, help="allow a plain stomp:// URL to a host other than loopback")
    user: str | None = key(required=True, min_length=1)
    password: str | None = key(required=True, secret=True)
    tls: bool = key(False)
    ca_file: FilePath = key(None, help="CA file (PEM) that signed the broker's certificate")
    verify_hostname: bool = key(True)
    vhost: str | None = key(None, min_length=1, help="the virtual host STOMP's CONNECT names (RabbitMQ reads it as "
                                                     "its vhost); default: the broker's host name")
    management_url: HttpUrl = key(None, roles=RECEIVER, help="RabbitMQ's management HTTP API (http(s)://host:15672) "
                                                             "`dbsync status` reads the broker queue from")
    destination: Name = key("openmrs.sync")
    destination_type: Literal["queue", "topic"] = key("queue")
    batch_messages: int = key(500, roles=SENDER, ge=1, help="rows per confirmed batch")
    batch_bytes: int = key(2_000_000, roles=SENDER, ge=1)
    compress_over: int = key(512, roles=SENDER, ge=0)
    wire_version: Literal[1, 2] = key(2, roles=SENDER, help="2: several rows per broker message; 1: one row each "
                                                            "(a receiver that predates envelopes)")
    rows_per_message: int = key(100, roles=SENDER, help="rows per broker message (wire version 2)")
    message_bytes: int = key(1_000_000, roles=SENDER, ge=1,
                             help="JSON bytes per broker message before deflate (wire version 2)")
    max_message_bytes: int = key(4_000_000, ge=1024)
    subscription: Name = key("dbsync", roles=RECEIVER, help="durable subscription name (topic mode)")
    consumer_window: int = key(1_048_576, roles=RECEIVER, ge=1, help="bytes the broker may send ahead of the ACKs")


class Sender(Section):
    id: str | None = key(roles=SENDER, required=True, help="this site's identifier, e.g. the site name")
    server_id: int | None = key(roles=SENDER, required=True, ge=1, le=4_294_967_295,
                                help="replication server id, unique per server")
    timezone: TimeZone = key("UTC", roles=SENDER, help="time zone of DATETIME values in the site DB")
    snapshot: Literal["initial", "never", "when_needed"] = key("initial", roles=SENDER)
    catch_up: Literal["verify", "snapshot"] = key(
        "verify", roles=SENDER, help="with snapshot = when_needed, a purged or restarted checkpoint is caught up by "
                                     "`verify --repair` (only what differs is sent; needs the receiver) or by a new "
                                     "snapshot (every row sent again)")
    catch_up_timeout_seconds: int = key(300, roles=SENDER, ge=1, help="how long a catch-up waits for each answer "
                                                                      "from central before it tries again later")
    central_public_key: str | None = key(None, roles=SENDER, help="central's key (`dbsync sites central-key` prints "
                                                                  "it): verify by file reads only answers it signed")
    requests: bool = key(True, roles=SENDER, help="`dbsync sender` takes central's re-sync requests from "
                                                  "<destination>.request.<id> (`dbsync sites resync`)")
    snapshot_method: Literal["auto", "mariadb", "lock", "log_status"] = key(
        "auto", roles=SENDER, help="how a snapshot finds its binlog position (see docs/installation.md)")
    tables: list[str] | None = key(None, roles=SENDER, help="synced tables; default the OpenMRS EIP set")
    extra_tables: list[str] = key([], roles=SENDER, help="module tables synced in addition")
    min_binlog_retention_hours: int = key(72, roles=SENDER, ge=0)
    capture_process: bool = key(True, roles=SENDER, help="`dbsync sender` decodes the binlog in a child process, "
                                                         "beside enrich and publish (two cores)")
    purge_binlogs: bool = key(False, roles=SENDER, help="purge binlog files wholly before the confirmed checkpoint "
                                                        "(needs BINLOG ADMIN)")
    keep_binlog_files: int = key(2, roles=SENDER, ge=0, help="with purge_binlogs: files before the checkpoint's "
                                                             "that stay")
    purge_interval_seconds: int = key(300, roles=SENDER, ge=1)
    max_transaction_events: int = key(20_000, roles=SENDER, ge=1, help="an enrich batch grows to the end of its "
                                                                       "transaction, up to this many events")
    complex_obs_dir: str | None = key(None, roles=SENDER, help="the site OpenMRS's complex obs folder "
                                      "(<application data dir>/complex_obs): its files travel with their obs; unset: "
                                      "no files are sent")
    complex_obs_chunk_bytes: int = key(32_768, roles=SENDER, ge=1024, le=1_048_576,
                                       help="file bytes per chunk on the file lane (small: a slow link stays shared "
                                            "with rows)")
    complex_obs_window: int = key(4, roles=SENDER, ge=1, le=64, help="chunks sent before the first is confirmed")
    complex_obs_retry_max_seconds: int = key(600, roles=SENDER, ge=1,
                                             help="longest wait before a file not in the folder yet is looked for "
                                                  "again")


class SiteDb(Section):
    host: Name = key("127.0.0.1", roles=SENDER)
    port: int = key(3306, roles=SENDER, ge=1, le=65535)
    database: Name = key("openmrs", roles=SENDER)
    user: str | None = key(roles=SENDER, required=True, min_length=1)
    password: str | None = key(roles=SENDER, required=True, secret=True)
    ssl_ca: FilePath = key(None, roles=SENDER, help="CA file: TLS to the site DB, certificate verified")
    ssl_verify_identity: bool = key(True, roles=SENDER, help="with ssl_ca: check the host name too")


class Receiver(Section):
    site_id: Name = key("central", roles=RECEIVER, help="this receiver's own identifier")
    worker: bool = key(False, roles=RECEIVER, help="one of several receivers on this central (--worker): each "
                                                  "applies the sites whose deliveries it consumes (queue mode)")
    timezone: TimeZone = key("UTC", roles=RECEIVER, help="time zone of DATETIME values at central")
    conflict_policy: Literal["newer", "any"] = key("newer", roles=RECEIVER)
    cross_site_changes: Literal["refuse", "allow"] = key(
        "refuse", roles=RECEIVER, help="a site's change to a row another site created: refuse (error queue) or allow")
    central_rows: Literal["skip", "park"] = key(
        "skip", roles=RECEIVER, help="a site's change to a row central owns: skip and count, or park as a conflict")
    future_tolerance_seconds: int = key(120, roles=RECEIVER, ge=0,
                                        help="a change dated more than this after central's clock never beats a "
                                             "central edit: it is parked as a conflict (site clock ahead?)")
    row_lock_wait_seconds: int = key(10, roles=RECEIVER, ge=1, le=1_073_741_824,
                                     help="how long apply waits for a row a central transaction holds before it "
                                          "retries the batch, then parks that one message for retry")
    set_apply: bool = key(True, roles=RECEIVER, help="write a batch's plain new rows and unjudged updates a statement "
                                                    "per table (false: every message one by one)")
    tables: list[str] | None = key(None, roles=RECEIVER)
    extra_tables: list[str] = key([], roles=RECEIVER)
    batch_messages: int = key(500, roles=RECEIVER, ge=1)
    retry_interval_seconds: int = key(60, roles=RECEIVER, ge=1)
    applied_ids_days: int = key(30, roles=RECEIVER, ge=1, help="how long handled message ids are kept")
    archive_days: int = key(30, roles=RECEIVER, ge=0, help="how long the archive keeps each handled message's wire "
                                                          "form and outcome (dbsync archive); 0: no archive")
    archive_max_mb: float = key(0.0, roles=RECEIVER, ge=0, help="the archive's size cap in MB (its deflated bodies "
                                                                "and rows; the oldest days go first); 0: no cap")
    complex_obs_dir: str | None = key(None, roles=RECEIVER, help="central OpenMRS's complex obs folder: files from "
                                      "the sites are written there and an obs that names one waits for it; unset: "
                                      "obs rows apply without their files")
    complex_obs_max_bytes: int = key(2_147_483_648, roles=RECEIVER, ge=1024,
                                     help="a file announced larger than this is refused")


class CentralDb(Section):
    host: Name = key("127.0.0.1", roles=RECEIVER)
    port: int = key(3306, roles=RECEIVER, ge=1, le=65535)
    database: Name = key("openmrs", roles=RECEIVER)
    state_schema: str = key("dbsync", roles=RECEIVER, min_length=1, max_length=64)
    user: str | None = key(roles=RECEIVER, required=True, min_length=1)
    password: str | None = key(roles=RECEIVER, required=True, secret=True)
    ssl_ca: FilePath = key(None, roles=RECEIVER, help="CA file: TLS to the central DB, certificate verified")
    ssl_verify_identity: bool = key(True, roles=RECEIVER, help="with ssl_ca: check the host name too")


class Console(Section):
    host: Name = key("127.0.0.1", help="address `dbsync console` listens on (never exposed: keep it on loopback or "
                                       "behind a reverse proxy)")
    port: int = key(8800, ge=1, le=65535)
    tls_cert: FilePath = key(None, help="PEM certificate file: serve HTTPS (with tls_key)")
    tls_key: FilePath = key(None, help="PEM private key file of tls_cert")
    metrics_token: str | None = key(None, secret=True, help="/metrics wants `Authorization: Bearer <token>` "
                                                            "(metrics_token_file: from a file); unset, /metrics is "
                                                            "closed unless metrics_open")
    metrics_open: bool = key(False, help="true: /metrics answers without a token")
    trusted_proxies: list[IpNetwork] = key([], help="reverse proxies (addresses or networks) whose X-Forwarded-For "
                                                    "is believed; none by default")
    session_hours: int = key(8, ge=1, help="how long a login lasts")


class Openmrs(Section):
    url: HttpUrl = key(None, roles=RECEIVER, help="base URL, e.g. http://localhost:8080/openmrs")
    user: str | None = key(None, roles=RECEIVER)
    password: str | None = key(None, roles=RECEIVER, secret=True)


class Status(Section):
    """`dbsync status` thresholds (a --option of the same name overrides each; 0 turns a threshold off)."""

    timeout_seconds: int = key(5, ge=1, help="connect timeout of each status probe (broker, database)")
    lag_warning_seconds: int = key(300, roles=SENDER, ge=0, help="seconds behind the binlog")
    lag_critical_seconds: int = key(3600, roles=SENDER, ge=0)
    lag_warning_bytes: int = key(104_857_600, roles=SENDER, ge=0, help="binlog bytes after the checkpoint")
    lag_critical_bytes: int = key(1_073_741_824, roles=SENDER, ge=0)
    checkpoint_warning_minutes: int = key(15, roles=SENDER, ge=0, help="checkpoint not moved: sender down or stuck")
    checkpoint_critical_minutes: int = key(60, roles=SENDER, ge=0)
    clock_skew_warning_seconds: int = key(120, roles=SENDER, ge=0, help="the site server's clock this far ahead of "
                                                                        "or behind the sender host's (also config "
                                                                        "check)")
    site_silent_warning_minutes: int = key(60, roles=RECEIVER, ge=0, help="no change applied from an enabled site")
    site_silent_critical_minutes: int = key(240, roles=RECEIVER, ge=0)
    retry_warning: int = key(1, roles=RECEIVER, ge=0, help="entries in the retry queue")
    retry_critical: int = key(100, roles=RECEIVER, ge=0)
    conflict_warning: int = key(1, roles=RECEIVER, ge=0, help="unresolved conflicts")
    conflict_critical: int = key(0, roles=RECEIVER, ge=0)
    inbox_warning: int = key(10_000, roles=RECEIVER, ge=0, help="messages received and not applied yet")
    inbox_critical: int = key(100_000, roles=RECEIVER, ge=0)
    unconsumed_warning_seconds: int = key(60, roles=RECEIVER, ge=0, help="messages waiting at the broker with no "
                                                                         "consumer (receiver down or stuck)")
    unconsumed_critical_seconds: int = key(600, roles=RECEIVER, ge=0)
    rest_failing_warning: int = key(1, roles=RECEIVER, ge=0, help="OpenMRS REST calls that failed at least once")
    rest_failing_critical: int = key(0, roles=RECEIVER, ge=0)


class Settings(Section):
    """A whole config (either role's: `roles` of each key says which config may hold it)."""

    home: str | None = key(required=True, min_length=1, help="working directory (state, logs), like eip.home")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = key("INFO")
    log_file: str | None = key(None, help="default <home>/logs/dbsync.log")
    broker: Broker = Field(default_factory=Broker)
    sender: Sender = Field(default_factory=Sender)
    site_db: SiteDb = Field(default_factory=SiteDb)
    receiver: Receiver = Field(default_factory=Receiver)
    central_db: CentralDb = Field(default_factory=CentralDb)
    console: Console = Field(default_factory=Console)
    openmrs: Openmrs = Field(default_factory=Openmrs)
    status: Status = Field(default_factory=Status)


#: every default, typed: `DEFAULTS.receiver.batch_messages` (the stages' settings dataclasses take theirs here)
DEFAULTS = Settings()
