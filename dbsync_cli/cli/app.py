"""The `dbsync` command: composable stages plus the supervised sender and receiver."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import pymysql
import typer
import typer.main

from dbsync_cli import __version__, exitcodes, i18n, logs, space
from dbsync_cli.broker import BrokerError
from dbsync_cli.cli import (
    archive_cmd,
    bundle_cmds,
    common,
    config_cmd,
    console_cmd,
    help_text,
    receiver_admin,
    receiver_cmds,
    resync_cmd,
    retry_cmd,
    schema_cmd,
    sender_cmds,
    status_cmd,
    verify_cmd,
)
from dbsync_cli.faults import database_exit_code
from dbsync_cli.files import restrict_process
from dbsync_cli.i18n import _
from dbsync_cli.receiver.state import MigrationRefused
from dbsync_cli.retrying import Stopped

app = typer.Typer(
    name="dbsync",
    help="Keep a central OpenMRS database in sync with the databases of many sites (binlog CDC over Artemis STOMP).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"dbsync {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output on stderr (-vv: debug).")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Less log output on stderr (-qq: errors only).")] = 0,
    lang: Annotated[str | None, typer.Option("--lang", help="Language of messages, tables and headings: en or pt "
                                                            "(default from LANGUAGE / LC_ALL / LANG).")] = None,
) -> None:
    """Keep a central OpenMRS database in sync with the databases of many sites."""
    common.state["verbosity"] = verbose - quiet
    if lang is not None and lang not in i18n.LOCALES:
        common.fail(_("--lang {lang!r}: expected one of {choices}").format(lang=lang, choices=", ".join(i18n.LOCALES)),
                    exitcodes.CONFIG)
    i18n.set_language(lang)


app.add_typer(config_cmd.app, name="config")
app.command("schema")(schema_cmd.schema)
app.command("capture")(sender_cmds.capture)
app.command("enrich")(sender_cmds.enrich)
app.command("publish")(sender_cmds.publish)
app.command("sender")(sender_cmds.sender)
app.command("apply")(receiver_cmds.apply)
app.command("receiver")(receiver_cmds.receiver)
app.add_typer(receiver_cmds.conflicts_app, name="conflicts")
app.add_typer(retry_cmd.app, name="retry")
app.add_typer(archive_cmd.app, name="archive")
app.command("consume")(receiver_admin.consume)
app.add_typer(receiver_admin.sites_app, name="sites")
app.command("status")(status_cmd.status)
app.command("verify")(verify_cmd.verify)
app.command("resync")(resync_cmd.resync)
app.command("export")(bundle_cmds.export)
app.command("import")(bundle_cmds.import_)
app.add_typer(console_cmd.app, name="console")


def command() -> Any:
    """The click command tree of `app`, with flags and counters shown without a value placeholder (typer shows
    `--until-idle <bool>` and `-v <int>` otherwise, which reads as if they took a value)."""
    root = typer.main.get_command(app)
    stack: list[Any] = [root]  # typer's own (vendored) click objects
    while stack:
        cmd = stack.pop()
        help_option = cmd.get_help_option(cmd.context_class(cmd, **(cmd.context_settings or {})))  # created once per command, then cached
        for param in [*cmd.params, help_option]:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                param.metavar = ""
                if getattr(param, "count", False):
                    param.show_default = False
        stack.extend(getattr(cmd, "commands", {}).values())
    return root


def main() -> None:
    """The console entry point: no traceback reaches a terminal, whatever fails."""
    restrict_process()  # logs, state.sqlite, rejected messages: readable by their owner only
    logs.setup("WARNING")  # until a command sets up its own: no library line on stderr before dbsync's (logs.py)
    wanted = help_text.lang_from_argv(sys.argv[1:])  # before parsing: --help is eager
    i18n.set_language(wanted if wanted in i18n.LOCALES else None)
    try:
        root = command()
        help_text.translate(root)
        root(prog_name="dbsync")
    except Stopped:  # SIGTERM/SIGINT while waiting for a server: nothing confirmed is lost (retrying.py)
        raise SystemExit(exitcodes.OK) from None
    except KeyboardInterrupt:  # Ctrl-C in a command that does not watch for it: no traceback either
        print("dbsync: " + _("interrupted"), file=sys.stderr)
        raise SystemExit(130) from None
    except MigrationRefused as exc:  # the state schema's upgrade waits for the running receiver to stop
        print(f"dbsync: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    except BrokerError as exc:  # the broker refused us (login, certificate, a permission): one line
        print(f"dbsync: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(getattr(exc, "code", exitcodes.UNREACHABLE)) from None
    except pymysql.err.OperationalError as exc:  # a database that refuses us: its own one-line reason
        logging.getLogger("dbsync").debug("database error", exc_info=True)
        reason = " ".join(str(exc.args[1] if len(exc.args) > 1 else exc).split())
        code = database_exit_code(exc)
        text = _("database: {reason} (a grant the role needs is missing: `dbsync config check` lists them)") \
            if code == exitcodes.PRIVILEGES else _("database: {reason}")
        print("dbsync: " + text.format(reason=reason), file=sys.stderr)
        raise SystemExit(code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the terminal
        if space.out_of_space(exc):  # the home (state.sqlite, logs) is full: name it and its free space
            print("dbsync: " + space.full_line(exc), file=sys.stderr)
            raise SystemExit(exitcodes.HOME_FULL) from None
        logging.getLogger("dbsync").debug("unexpected error", exc_info=True)
        text = " ".join(str(exc).split()) or _("no details")
        print("dbsync: " + _("unexpected {kind}: {text} (the traceback is logged at debug level: -vv)").format(
            kind=type(exc).__name__, text=text), file=sys.stderr)
        raise SystemExit(exitcodes.FAILURE) from None
