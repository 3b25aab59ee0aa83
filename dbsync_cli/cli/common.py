"""What every command shares: the --config option, logging set-up, one-line fatal errors."""

from __future__ import annotations

import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from dbsync_cli import config as config_mod
from dbsync_cli import exitcodes, logs, space

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $DBSYNC_CONFIG).", show_default=False),
]


def _json_in_english(value: bool) -> bool:
    """JSON is for programs: with --json every text in it (reasons, messages) is English, whatever the language."""
    if value:
        from dbsync_cli import i18n

        i18n.use("en")
    return value


JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.", callback=_json_in_english)]

state: dict[str, int] = {"verbosity": 0}


def fail(message: str, code: int = exitcodes.FAILURE) -> NoReturn:
    """One line on stderr naming what went wrong, then exit with a code that says why."""
    print(f"dbsync: {message}", file=sys.stderr)
    raise typer.Exit(code)


def config_path(path: Path | None) -> Path | None:
    if path is not None:
        return path
    env = os.environ.get("DBSYNC_CONFIG")
    return Path(env) if env else None


def detect_role(path: Path | None) -> str:
    """A config's role is the section it has: [sender] or [receiver]."""
    if path is None:
        return os.environ.get("DBSYNC_ROLE", "sender")
    try:
        with Path(path).open("rb") as fh:
            tree = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return "sender"
    return "receiver" if "receiver" in tree or "central_db" in tree else "sender"


def load_config(path: Path | None, role: str | None = None, *, log: bool = True) -> config_mod.Config:
    path = config_path(path)
    role = role or detect_role(path)
    if role == "receiver":  # central's work parses and applies a stream of short-lived records (gc_tuning.py)
        from dbsync_cli import gc_tuning

        gc_tuning.tune()
    try:
        cfg = config_mod.load(path, role)
    except config_mod.ConfigError as exc:
        fail(str(exc), exitcodes.CONFIG)
    if log:
        from dbsync_cli import checks_home
        from dbsync_cli.findings import ERROR

        # before the first log line: a home that cannot be written (exit 2) or is full (exit 19) is named, never an
        # `unexpected OSError` or a logging traceback (issue 26 items 9 and 13)
        home = checks_home.state_directory(cfg.home)
        if home.state == ERROR:
            fail(home.message, home.exit_code or exitcodes.CONFIG)
        space.watch(cfg.home)
        logs.setup(cfg["log_level"], state["verbosity"], cfg.log_file, cfg.secrets())
        logging.getLogger("dbsync").debug("config %s (%s)", cfg.source, role)
    return cfg
