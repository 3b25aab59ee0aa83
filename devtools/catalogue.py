"""The messages the package marks for translation, found the way gettext tools find them: Babel's Python extractor
over `dbsync_cli/` (`_()` and `ngettext()`, multi-line and concatenated literals included) and `_("…")` in the
console's templates; plus the words translated through a variable (roles, states, modes) and the `--help` texts
of every command and option (typer's `help=` and docstrings, read from the command tree itself)."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract
from babel.messages.pofile import read_po, write_po

PACKAGE = Path(__file__).resolve().parent.parent / "dbsync_cli"
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}
#: words shown through `_(value)`: console roles, health states, chart labels, check states, conflict modes,
#: verify run states, config roles
DYNAMIC = ("readonly", "operator", "OK", "WARNING", "CRITICAL", "UNKNOWN", "DISABLED",
           "last 24 hours", "last 30 days", "5 min", "hour", "rows applied", "backlog",
           "ok", "warning", "error", "skipped", "keep-central", "take-incoming", "merge",
           "running", "finished", "repaired", "failed", "sender", "receiver",
           "site rows", "central rows", "matched", "missing", "different", "extra", "placeholders", "not owned",
           "edited at central", "changing", "added at central",
           # retry entry kinds, conflict kinds (receiver/selection.py) and the bulk resolve's manual mode
           "transient", "permanent", "waiting", "edited", "future", "central", "adopting", "recreated", "manual")
Message = str | tuple[str, ...]


def messages() -> dict[Message, str]:
    """Each message id and one place it is used (`file:line`)."""
    found: dict[Message, str] = {word: "(dynamic)" for word in DYNAMIC}
    for source in sorted(PACKAGE.rglob("*.py")):
        with source.open("rb") as handle:
            for line, message, _comments, _context in extract("python", handle, keywords=KEYWORDS):
                found.setdefault(message, f"{source.relative_to(PACKAGE.parent)}:{line}")
    for template in sorted((PACKAGE / "console" / "templates").glob("*.html")):
        for message in re.findall(r'_\("([^"]+)"\)', template.read_text()):
            found.setdefault(message, str(template.relative_to(PACKAGE.parent)))
    for message in help_texts():
        found.setdefault(message, "(--help)")
    return found


def help_texts() -> list[str]:
    """The English help texts of every command and option, as `dbsync … --help` shows them."""
    import typer.main

    from dbsync_cli.cli.app import app
    from dbsync_cli.cli.help_text import texts

    return texts(typer.main.get_command(app))


def catalogue(lang: str) -> Catalog:
    with (PACKAGE / "locale" / lang / "LC_MESSAGES" / "messages.po").open("rb") as src:
        return read_po(src, locale=lang)


def untranslated(lang: str) -> dict[Message, str]:
    """The messages `lang` has no translation for, with where each is used."""
    translated = {m.id for m in catalogue(lang) if m.id and (all(m.string) if isinstance(m.string, tuple)
                                                              else m.string)}
    return {m: where for m, where in messages().items() if m not in translated}


def add_missing(lang: str) -> int:
    """Add every untranslated message to `lang`'s catalogue with an empty translation, for a translator."""
    catalog = catalogue(lang)
    missing = untranslated(lang)
    for message, where in missing.items():
        if catalog.get(message) is None:
            catalog.add(message, ("", "") if isinstance(message, tuple) else "", auto_comments=[where])
    with (PACKAGE / "locale" / lang / "LC_MESSAGES" / "messages.po").open("wb") as out:
        write_po(out, catalog, width=0, sort_output=True, omit_header=False)
    return len(missing)
