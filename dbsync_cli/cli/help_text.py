"""`--help` in the reader's language: the help texts of every command and option are English in the code (typer's
`help=` and docstrings) and are translated in the click tree just before it parses, through the same catalogues
as every other message. The language must be known before parsing (`--help` is eager), so `--lang` is read from
argv first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from dbsync_cli import i18n
from dbsync_cli.cli import click_words
from dbsync_cli.i18n import _

#: typer's own words around the help texts (panel titles, default and required marks), set per language
_TYPER_WORDS = {"ARGUMENTS_PANEL_TITLE": "Arguments", "OPTIONS_PANEL_TITLE": "Options",
                "COMMANDS_PANEL_TITLE": "Commands", "DEFAULT_STRING": "[default: {}]",
                "REQUIRED_LONG_STRING": "[required]", "ENVVAR_STRING": "[env var: {}]",
                "ERRORS_PANEL_TITLE": "Error", "ABORTED_TEXT": "Aborted.",
                "RICH_HELP": "Try [blue]'{command_path} {help_option}'[/] for help."}


def lang_from_argv(argv: Sequence[str]) -> str | None:
    """`--lang X` or `--lang=X` before the first `--`, if any (a wrong value is the callback's to refuse)."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--lang" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--lang="):
            return arg.split("=", 1)[1]
    return None


def walk(root: Any) -> Iterator[Any]:
    """Every command of a click tree and each of its parameters (the --help option included), depth first."""
    stack = [root]
    while stack:
        cmd = stack.pop()
        yield cmd
        context = cmd.context_class(cmd, **(cmd.context_settings or {}))
        yield from (p for p in [*cmd.params, cmd.get_help_option(context)] if p is not None)
        stack.extend(getattr(cmd, "commands", {}).values())


def texts(root: Any) -> list[str]:
    """The help texts of a tree (commands' help and short help, parameters' help), for the catalogue."""
    found = [text for item in walk(root) for text in (getattr(item, "help", None), getattr(item, "short_help", None))
             if isinstance(text, str) and text.strip()]
    return [*dict.fromkeys([*found, *_TYPER_WORDS.values()])]


def translate(root: Any) -> None:
    """The tree's help texts and typer's words in the current language (English: left as they are)."""
    if i18n.current() == i18n.DEFAULT:
        return
    import typer.rich_utils  # only here: its import (rich's markdown, syntax, traceback) is 60 ms of every start

    for item in walk(root):
        for attribute in ("help", "short_help"):
            text = getattr(item, attribute, None)
            if isinstance(text, str) and text.strip():
                setattr(item, attribute, _(text))
    for name, text in _TYPER_WORDS.items():
        setattr(typer.rich_utils, name, _(text))
    click_words.install([item for item in walk(root) if hasattr(item, "context_class")])
