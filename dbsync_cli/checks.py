"""`dbsync config check`: what a sender or receiver needs from its servers, checked for real, one finding each.

Each finding names what was checked, its state (ok, warning, error) and, for an error, the exit code the process
itself would stop with (2 config, 3 a server refused us, 11 binlog settings, 15 privileges), so that the check
exits like the first run would. Passwords never appear: the texts come from our messages and the servers'.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from dbsync_cli import exitcodes
from dbsync_cli.checks_broker import permissions
from dbsync_cli.checks_home import state_directory
from dbsync_cli.config import Config, plaintext_host
from dbsync_cli.findings import ERROR, OK, SKIPPED, WARNING, Finding, exit_code
from dbsync_cli.i18n import _
from dbsync_cli.timezones import server_dst_warning, server_zone_difference

#: a role's own checks on its database connection (sender.checks.STEPS, receiver.checks.STEPS)
Step = Callable[[Any, Config], list[Finding]]


def privileges(conn: Any, database: str) -> tuple[set[str], set[str]]:
    """(global privileges, privileges on `database`) of the current user, from SHOW GRANTS; a grant on a
    database pattern (`t\\_%`.*) counts where the pattern matches."""
    glob: set[str] = set()
    local: set[str] = set()
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        for (grant,) in cur.fetchall():
            match = re.match(r"GRANT (.+?) ON (\S+) TO ", str(grant))
            if not match or match.group(1).startswith("PROXY"):
                continue
            found = {p.strip().upper() for p in match.group(1).split(",")}
            target = match.group(2)
            if target == "*.*":
                glob |= found
            elif target.endswith(".*") and _like(target[:-2].strip("`"), database):
                local |= found
    return glob, local


def table_grants(conn: Any, database: str) -> bool:
    """Whether the user holds grants on single tables of `database` (`db`.`table`), which `privileges` does not
    count: a role granted table by table cannot be judged per database."""
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        for (grant,) in cur.fetchall():
            match = re.match(r"GRANT .+? ON (`?)(.+?)\1\.`?[^*`]", str(grant))
            if match and _like(match.group(2), database):
                return True
    return False


def _like(pattern: str, name: str) -> bool:
    """MySQL's database-name pattern of a grant: `%` and `_` are wildcards, `\\_` a literal underscore."""
    regex = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if char == "%" else "." if char == "_" else re.escape(char)
        i += 1
    return re.fullmatch(regex, name) is not None


def check(cfg: Config, steps: list[Step], broker_sites: Callable[[Config], list[str]] | None = None) -> list[Finding]:
    """Every check of the role, against the real servers: files, the database login then the role's `steps` on
    that connection, the broker login and the permissions the role needs (also on the queues of `broker_sites`)."""
    findings = offline(cfg)
    section = "site_db" if cfg.role == "sender" else "central_db"
    findings += _database(cfg, section, steps)
    broker = _broker(cfg)
    findings.append(broker)
    if broker.state == OK:
        findings.append(_destination(cfg))
        findings += permissions(cfg, broker_sites(cfg) if broker_sites else [])
    return findings


def offline(cfg: Config) -> list[Finding]:
    """What can be checked without a server: the files the config names, the state directory, plain-text
    warnings."""
    return _files(cfg) + [state_directory(cfg.home)] + _complex_obs_dir(cfg) + _plaintext(cfg)


def _complex_obs_dir(cfg: Config) -> list[Finding]:
    """The complex obs folder: a site's must be readable (its files are sent), central's writable (they are written
    there, under a temporary name first)."""
    key = f"{cfg.role}.complex_obs_dir"
    folder = cfg.get(key)
    if not folder:
        return []
    path = Path(folder).expanduser()
    write = cfg.role == "receiver"
    if not path.is_dir():
        return [Finding(key, ERROR, _("{path} is not a directory").format(path=path), exitcodes.CONFIG)]
    if not os.access(path, (os.R_OK | os.X_OK | os.W_OK) if write else (os.R_OK | os.X_OK)):
        return [Finding(key, ERROR, (_("{path} is not writable by this user") if write
                                     else _("{path} is not readable by this user")).format(path=path),
                        exitcodes.CONFIG)]
    return [Finding(key, OK, (_("{path}, writable") if write else _("{path} readable")).format(path=path))]


#: the PEM files a config names, and the block each must hold
PEM_FILES = {"broker.ca_file": "CERTIFICATE", "site_db.ssl_ca": "CERTIFICATE", "central_db.ssl_ca": "CERTIFICATE",
             "console.tls_cert": "CERTIFICATE", "console.tls_key": "PRIVATE KEY"}


def _files(cfg: Config) -> list[Finding]:
    found = []
    for key, block in PEM_FILES.items():
        path = cfg.get(key)
        if not path:
            continue
        try:
            text = Path(path).expanduser().read_text(errors="replace")
        except OSError as exc:
            found.append(Finding(key, ERROR, _("cannot read {path}: {error}").format(path=path, error=exc.strerror), exitcodes.CONFIG))
            continue
        if f"BEGIN {block}" not in text and not (block == "PRIVATE KEY" and re.search(r"BEGIN \w+ PRIVATE KEY", text)):
            found.append(Finding(key, ERROR, _("{path} holds no PEM {block}").format(
                path=path, block=block.lower()), exitcodes.CONFIG))
        else:
            found.append(Finding(key, OK, _("{path} readable").format(path=path)))
    return found


def _plaintext(cfg: Config) -> list[Finding]:
    host = plaintext_host(cfg.values)
    if host is None:
        return []
    return [Finding("broker.url", WARNING, _("plain stomp:// to {host} (broker.allow_plaintext = true): patient data "
                                             "and the broker password cross the network unencrypted").format(host=host))]


def _database(cfg: Config, section: str, steps: list[Step]) -> list[Finding]:
    params = cfg.db(section)
    try:
        conn = params.connect(connect_timeout=5, read_timeout=30)
    except pymysql.MySQLError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        return [Finding(section, ERROR, _("cannot log in as {who}: {reason}").format(
            who=params.describe(), reason=" ".join(str(reason).split())),
                        exitcodes.UNREACHABLE)]
    try:
        found = [Finding(section, OK, _("logged in as {who}").format(who=params.describe()))]
        for step in steps:
            found += step(conn, cfg)
        key = "sender.timezone" if cfg.role == "sender" else "receiver.timezone"
        found.append(_time_zone(conn, cfg, key))
        return found
    finally:
        conn.close()


def _time_zone(conn: Any, cfg: Config, key: str) -> Finding:
    """The configured zone against the server's: a fixed offset for a zone with daylight saving warns (the old
    rule); any other difference in UTC offsets, now or at a date of either season, is an error (every DATETIME
    would move by it)."""
    warning = server_dst_warning(conn, cfg[key], key)
    if warning:
        return Finding(key, WARNING, warning)
    differs = server_zone_difference(conn, cfg[key])
    if differs is None:
        return Finding(key, OK, _("{zone!r} gives the UTC offsets of the server's time zone").format(zone=cfg[key]))
    server, what = differs
    return Finding(key, ERROR, _("{key} = {zone!r} is not the server's time zone {server}: {what}; every DATETIME "
                                 "would move by the difference (set {key} to the zone the database's DATETIMEs "
                                 "are written in)").format(key=key, zone=cfg[key], server=server, what=what),
                   exitcodes.CONFIG)


def _broker(cfg: Config) -> Finding:
    import dataclasses

    from dbsync_cli.broker import BrokerError, open_connection, settings_from_config

    settings = dataclasses.replace(settings_from_config(cfg), connect_timeout=5, heartbeats=(0, 0))
    try:
        conn = open_connection(settings)
    except BrokerError as exc:
        return Finding("broker", ERROR, " ".join(str(exc).split()), exitcodes.UNREACHABLE)
    with contextlib.suppress(Exception):  # the CONNECTED frame answered the question
        conn.disconnect()
    text = _("logged in to {address} as {user} over TLS, certificate verified") if settings.tls \
        else _("logged in to {address} as {user}")
    return Finding("broker", OK, text.format(address=settings.address, user=settings.user))


def _destination(cfg: Config) -> Finding:
    """The sync address exists (or the broker creates it on first use) and routes the way destination_type says:
    a queue destination on a MULTICAST-only address (or the reverse) would deliver nothing."""
    import stomp.exception

    from dbsync_cli.broker import BrokerError, settings_from_config
    from dbsync_cli.broker_queue import NotAvailable, QueueStatsError, address_info

    address, kind = cfg["broker.destination"], cfg["broker.destination_type"]
    wanted = "ANYCAST" if kind == "queue" else "MULTICAST"
    key = "broker.destination"
    try:
        info = address_info(settings_from_config(cfg), address)
    except NotAvailable as exc:  # ActiveMQ Classic, RabbitMQ: they create the destination on first use
        return Finding(key, SKIPPED, _("{address!r} not checked: {why}").format(address=address, why=exc))
    except (QueueStatsError, BrokerError, stomp.exception.StompException, OSError) as exc:
        # OSError: Artemis closes the connection of a user it refuses management to, mid-request
        return Finding(key, SKIPPED, _("{address!r} not checked: the broker user may not use management ({error}); normal for "
                                       "a site's user: the receiver's config check checks the address").format(
            address=address, error=exc))
    if not info.exists:
        if info.auto_create:
            return Finding(key, WARNING, _("address {address!r} does not exist yet: the broker creates it ({wanted}) on "
                                           "first use; check the name is the one the other side uses").format(
                address=address, wanted=wanted))
        return Finding(key, ERROR, _("address {address!r} does not exist and the broker's address-settings do not "
                                     "create it on first use: add it to broker.xml").format(address=address),
                       exitcodes.CONFIG)
    if wanted not in info.routing_types:
        return Finding(key, ERROR, _("address {address!r} routes {routes}, but broker.destination_type = {kind!r} "
                                     "needs {wanted}").format(address=address, routes="/".join(info.routing_types)
                                                              or _("nothing"), kind=kind, wanted=wanted),
                       exitcodes.CONFIG)
    return Finding(key, OK, _("address {address!r} exists and routes {wanted} ({kind})").format(
        address=address, wanted=wanted, kind=kind))


__all__ = ["ERROR", "OK", "SKIPPED", "WARNING", "Finding", "Step", "check", "exit_code", "offline", "privileges",
           "table_grants"]
