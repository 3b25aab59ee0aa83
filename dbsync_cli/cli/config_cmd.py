"""`dbsync config check`: validate a config, test that its servers answer, print it with secrets masked."""

from __future__ import annotations

import socket
import sys
from typing import Annotated
from urllib.parse import urlsplit

import orjson
import pymysql
import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import config as config_mod
from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.timezones import server_dst_warning

app = typer.Typer(help="Inspect and validate configuration.", no_args_is_help=True)


def _reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


def _endpoints(cfg: config_mod.Config) -> list[tuple[str, str, int]]:
    url = urlsplit(cfg["broker.url"])
    ends = [("broker.url", url.hostname or "127.0.0.1", url.port or 61613)]
    for section in ("site_db", "central_db"):
        if f"{section}.host" in cfg.values:
            ends.append((f"{section}.host", cfg[f"{section}.host"], cfg[f"{section}.port"]))
    return ends


def _zone_warnings(cfg: config_mod.Config) -> list[str]:
    """The configured DATETIME zone against the database server's (site DB for a sender, central for a receiver)."""
    section, key = ("site_db", "sender.timezone") if cfg.role == "sender" else ("central_db", "receiver.timezone")
    try:
        with cfg.db(section).connect(connect_timeout=5) as conn:
            found = server_dst_warning(conn, cfg[key], key)
    except pymysql.MySQLError:
        return []  # a login problem is reported elsewhere; this check only adds a warning
    return [found] if found else []


@app.command("check")
def check(
    config: common.ConfigOption = None,
    role: Annotated[str | None, typer.Option(help="sender or receiver (default: from the file's sections).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not test that servers answer.")] = False,
    json_out: common.JsonOption = False,
) -> None:
    """Validate the config (one line per problem) and print the effective values with secrets masked."""
    path = common.config_path(config)
    role = role or common.detect_role(path)
    result = config_mod.validate(path, role)
    if not isinstance(result, config_mod.Config):
        for problem in result:
            print(f"dbsync: config: {problem}", file=sys.stderr)
        raise typer.Exit(exitcodes.CONFIG)
    problems = []
    warnings: list[str] = []
    plaintext = config_mod.plaintext_host(result.values)
    if plaintext is not None:  # allowed explicitly, or validation would have refused it
        warnings.append(f"broker.url: plain stomp:// to {plaintext} (broker.allow_plaintext = true): patient data "
                        "and the broker password cross the network unencrypted")
    if not offline:
        for key, host, port in _endpoints(result):
            reason = _reachable(host, port)
            if reason:
                problems.append(f"{key}: {host}:{port} unreachable: {reason}")
        if not problems:
            warnings += _zone_warnings(result)
    if json_out:
        sys.stdout.write(orjson.dumps({"role": role, "source": result.source, "config": result.masked(),
                                       "problems": problems, "warnings": warnings}).decode() + "\n")
    else:
        table = Table(title=f"{role} config from {result.source}")
        table.add_column("key")
        table.add_column("value")
        for key, value in result.masked().items():
            table.add_row(key, "" if value is None else str(value))
        Console(stderr=False).print(table)
    for warning in warnings:
        print(f"dbsync: config: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"dbsync: config: {problem}", file=sys.stderr)
    if problems:
        raise typer.Exit(exitcodes.UNREACHABLE)
