"""typer's own words (its vendored click's "Usage:" and usage errors) in the reader's language.

typer writes them as English f-strings, with no gettext to bind, so they are matched against the English
templates below and said again from the catalogue, with the values they carry (an option's name, the inner
message of "Invalid value for …", which is translated too). A message no template fits is shown as typer wrote it.
English: nothing is installed, typer's output stays exactly as it is."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from dbsync_cli import i18n
from dbsync_cli.i18n import _


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for translation, translate later"
    return message


USAGE = N_("Usage:")
#: click's placeholders in a usage line (Command.options_metavar, Group.subcommand_metavar)
OPTIONS_METAVAR = N_("[OPTIONS]")
SUBCOMMAND_METAVAR = N_("COMMAND [ARGS]...")
#: what typer (and pydantic, for a value of the wrong type) says in a usage error; the most specific first
TEMPLATES = [
    N_("No such command {name}. Did you mean {suggestions}?"),
    N_("No such command {name}."),
    N_("{message} (Possible options: {options})"),
    N_("No such option: {name}"),
    N_("Missing argument {name}. {message}"),
    N_("Missing argument {name}."),
    N_("Missing option {name}. {message}"),
    N_("Missing option {name}."),
    N_("Missing parameter {name}."),
    N_("Missing parameter: {name}"),
    N_("Missing command."),
    N_("Got unexpected extra argument(s) ({arguments})"),
    N_("Invalid value for {name}: {message}"),
    N_("Invalid value: {message}"),
    N_("Option {name} does not take a value."),
    N_("Option {name} requires an argument."),
    N_("Option {name} requires {count} arguments."),
    N_("Argument {name} takes {count} values."),
    N_("File {path} does not exist."),
    N_("Directory {path} does not exist."),
    N_("Path {path} does not exist."),
    N_("Input should be a valid integer, unable to parse string as an integer"),
    N_("Input should be a valid number, unable to parse string as a number"),
    N_("Input should be a valid boolean, unable to interpret input"),
    N_("Aborted!"),
]
#: placeholders whose value is itself a message to translate
_NESTED = ("message",)


def said(text: str) -> str:
    """`text`, one of typer's English messages, in the current language (as is when no template fits)."""
    found = i18n.fitting(text, TEMPLATES)
    if found is None:
        return text
    template, values = found
    return _(template).format(**{name: said(value) if name in _NESTED else value for name, value in values.items()})


def _translated(show: Callable[[Any], None]) -> Callable[[Any], None]:
    """typer's error printer, for an exception whose message is said in the current language."""
    @functools.wraps(show)
    def printer(error: Any) -> None:
        english = error.format_message
        error.format_message = lambda: said(english())
        show(error)
    return printer


def _context_class(base: Any) -> Any:
    """A subclass of a command's context class whose help formatter writes the usage line's prefix translated."""
    formatter = base.formatter_class

    def write_usage(self: Any, prog: str, args: str = "", prefix: str | None = None) -> None:
        formatter.write_usage(self, prog, args, _(USAGE) + " " if prefix is None else prefix)

    return type(base.__name__, (base,), {"formatter_class": type(formatter.__name__, (formatter,),
                                                                  {"write_usage": write_usage})})


def install(commands: list[Any]) -> None:
    """For a language other than English: `commands` (every command of the tree) write "Usage:" and click's
    "[OPTIONS]" and "COMMAND [ARGS]..." translated, and
    typer's usage errors are printed translated. Called once, before parsing."""
    if i18n.current() == i18n.DEFAULT:
        return
    classes: dict[Any, Any] = {}
    for command in commands:
        base = command.context_class
        command.context_class = classes.setdefault(base, _context_class(base))
        if command.options_metavar == "[OPTIONS]":
            command.options_metavar = _(OPTIONS_METAVAR)
        if getattr(command, "subcommand_metavar", None) == "COMMAND [ARGS]...":
            command.subcommand_metavar = _(SUBCOMMAND_METAVAR)
    import typer.rich_utils  # not at start-up: English never needs it

    if not getattr(typer.rich_utils.rich_format_error, "__wrapped__", None):
        setattr(typer.rich_utils, "rich_format_error", _translated(typer.rich_utils.rich_format_error))  # noqa: B010
