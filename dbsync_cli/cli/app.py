"""The `dbsync` command: composable stages plus the supervised sender and receiver."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
import typer.main

from dbsync_cli import __version__, exitcodes, i18n, logs, space
from dbsync_cli.cli import common, help_text
from dbsync_cli.files import restrict_process
from dbsync_cli.i18n import _
from dbsync_cli.retrying import Stopped

if TYPE_CHECKING:
    import pymysql


def _version(value: bool) -> None:
    if value:
        print(f"dbsync {__version__}")
        raise typer.Exit()


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


#: every command and group: (module in dbsync_cli.cli, its function or typer app). A command's module, and what it
#: imports, is loaded only when that command runs (or for --help and completion, which list them all): a stage such
#: as `dbsync capture` starts without the receiver's modules (issue 29: capture's start-up CPU)
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config_cmd", "app"),
    "schema": ("schema_cmd", "schema"),
    "capture": ("sender_cmds", "capture"),
    "enrich": ("sender_cmds", "enrich"),
    "publish": ("sender_cmds", "publish"),
    "sender": ("sender_cmds", "sender"),
    "apply": ("receiver_cmds", "apply"),
    "receiver": ("receiver_cmds", "receiver"),
    "conflicts": ("receiver_cmds", "conflicts_app"),
    "retry": ("retry_cmd", "app"),
    "archive": ("archive_cmd", "app"),
    "consume": ("receiver_admin", "consume"),
    "sites": ("receiver_admin", "sites_app"),
    "status": ("status_cmd", "status"),
    "verify": ("verify_cmd", "verify"),
    "resync": ("resync_cmd", "resync"),
    "export": ("bundle_cmds", "export"),
    "import": ("bundle_cmds", "import_"),
    "console": ("console_cmd", "app"),
}

#: the main options that take a value (the command's name is the first word after the main options)
_VALUED_OPTIONS = {"--lang"}


def command_named(argv: list[str]) -> str | None:
    """The command `argv` runs, when it names one: the first word that is not a main option."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
        elif arg == "--":
            return None
    return None


def build(names: list[str] | None = None) -> typer.Typer:
    """The `dbsync` app with `names` (every command when None), in the order of COMMANDS (the order --help lists
    them)."""
    root = typer.Typer(
        name="dbsync",
        help="Keep a central OpenMRS database in sync with the databases of many sites (binlog CDC over Artemis "
             "STOMP).",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    root.callback()(main_options)
    for name, (module_name, attribute) in COMMANDS.items():
        if names is not None and name not in names:
            continue
        target = getattr(importlib.import_module(f"dbsync_cli.cli.{module_name}"), attribute)
        if isinstance(target, typer.Typer):
            root.add_typer(target, name=name)
        else:
            root.command(name)(target)
    return root


_whole: list[typer.Typer] = []


def __getattr__(name: str) -> Any:
    """`app`: the whole command tree, built on first use (for tests, man pages and the catalogue)."""
    if name == "app":
        if not _whole:
            _whole.append(build())
        return _whole[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command(root_app: typer.Typer | None = None) -> Any:
    """The click command tree of `root_app` (the whole app when None), with flags and counters shown without a value placeholder (typer shows
    `--until-idle <bool>` and `-v <int>` otherwise, which reads as if they took a value)."""
    root = typer.main.get_command(root_app or __getattr__("app"))
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
        named = command_named(sys.argv[1:])
        root = command(build(None if named is None else [named]))
        help_text.translate(root)
        root(prog_name="dbsync")
    except Stopped:  # SIGTERM/SIGINT while waiting for a server: nothing confirmed is lost (retrying.py)
        raise SystemExit(exitcodes.OK) from None
    except KeyboardInterrupt:  # Ctrl-C in a command that does not watch for it: no traceback either
        print("dbsync: " + _("interrupted"), file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the terminal
        line = _operator_line(exc)
        if line is not None:
            print(f"dbsync: {line[0]}", file=sys.stderr)
            raise SystemExit(line[1]) from None
        if space.out_of_space(exc):  # the home (state.sqlite, logs) is full: name it and its free space
            print("dbsync: " + space.full_line(exc), file=sys.stderr)
            raise SystemExit(exitcodes.HOME_FULL) from None
        logging.getLogger("dbsync").debug("unexpected error", exc_info=True)
        text = " ".join(str(exc).split()) or _("no details")
        print("dbsync: " + _("unexpected {kind}: {text} (the traceback is logged at debug level: -vv)").format(
            kind=type(exc).__name__, text=text), file=sys.stderr)
        raise SystemExit(exitcodes.FAILURE) from None


def _loaded(module: str, name: str) -> type[BaseException] | None:
    """An exception class of `module`, if the command loaded it (one it did not load cannot have been raised)."""
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _operator_line(exc: Exception) -> tuple[str, int] | None:
    """The one line and exit code of a fault an operator must fix, or None."""
    refused = _loaded("dbsync_cli.receiver.state", "MigrationRefused")
    if refused is not None and isinstance(exc, refused):  # the state schema's upgrade waits for the receiver
        return " ".join(str(exc).split()), int(getattr(exc, "code", exitcodes.FAILURE))
    broker = _loaded("dbsync_cli.broker", "BrokerError")
    if broker is not None and isinstance(exc, broker):  # the broker refused us (login, certificate, a permission)
        return " ".join(str(exc).split()), int(getattr(exc, "code", exitcodes.UNREACHABLE))
    database = _loaded("pymysql.err", "OperationalError")
    if database is not None and isinstance(exc, database):  # a database that refuses us: its own one-line reason
        from dbsync_cli.faults import database_exit_code

        logging.getLogger("dbsync").debug("database error", exc_info=True)
        reason = " ".join(str(exc.args[1] if len(exc.args) > 1 else exc).split())
        code = database_exit_code(cast("pymysql.MySQLError", exc))
        text = _("database: {reason} (a grant the role needs is missing: `dbsync config check` lists them)") \
            if code == exitcodes.PRIVILEGES else _("database: {reason}")
        return text.format(reason=reason), code
    return None
