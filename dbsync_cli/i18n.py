"""Languages of what people read: the console's pages and the CLI's messages, tables and headings, English and
Portuguese.

gettext catalogues in Babel's .po format (`dbsync_cli/locale/<lang>/LC_MESSAGES/messages.po`), read with Babel
and compiled in memory when first used, so the package ships the .po sources only and a translator edits one
file per language. English is the source language: every message stands for itself. The CLI takes `--lang`,
else the environment (`LANGUAGE`, `LC_ALL`, `LC_MESSAGES`, `LANG`); the console the user's switch, else the
browser's language, else the environment. Messages are marked `_("... {name} ...").format(name=...)`, so a
translator moves a value's place in the sentence without touching code.
"""

from __future__ import annotations

import contextvars
import functools
import gettext
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

LOCALES = ("en", "pt")
DEFAULT = "en"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_current = {"lang": ""}
#: a language for the current context only: the console sets its user's for each request
_request_lang: contextvars.ContextVar[str] = contextvars.ContextVar("dbsync_lang", default="")


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not path.exists():
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo  # only for a language other than English
    from babel.messages.pofile import read_po

    with path.open("rb") as src:
        catalog = read_po(src, locale=lang)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def choose(wanted: str | None = None, accept_language: str | None = None) -> str:
    """The language: an explicit choice, else the browser's, else the environment's in gettext's order ($LANGUAGE,
    a list, then $LC_ALL, $LC_MESSAGES, $LANG), else English."""
    environment = [os.environ.get("DBSYNC_LANG"), *os.environ.get("LANGUAGE", "").split(":"),
                   *(os.environ.get(name) for name in ("LC_ALL", "LC_MESSAGES", "LANG"))]
    for candidate in (wanted, *(part.split(";")[0].strip() for part in (accept_language or "").split(",")),
                      *environment):
        code = (candidate or "").split(".")[0].split("_")[0].split("-")[0].lower()
        if code in LOCALES:
            return code
    return DEFAULT


def gettext_for(lang: str) -> gettext.NullTranslations:
    return translations(lang if lang in LOCALES else DEFAULT)


def set_language(lang: str | None) -> str:
    """The CLI's language for this process (`--lang`, else the environment). An explicit choice goes into
    $DBSYNC_LANG too, so the processes it starts (the sender's capture process) speak it."""
    _current["lang"] = choose(lang)
    if lang:
        os.environ["DBSYNC_LANG"] = _current["lang"]
    return _current["lang"]


def use(lang: str) -> contextvars.Token[str]:
    """`lang` for what runs in this context from now on (a console request); `reset` ends it."""
    return _request_lang.set(lang if lang in LOCALES else DEFAULT)


def reset(token: contextvars.Token[str]) -> None:
    _request_lang.reset(token)


def current() -> str:
    """The language of this context: the console user's, else the process's (`--lang`), else the environment's."""
    return _request_lang.get() or _current["lang"] or choose()


def _(message: str) -> str:
    """`message` in the current language (an empty one stays empty: gettext would answer with the header)."""
    return gettext_for(current()).gettext(message) if message else message


def ngettext(singular: str, plural: str, count: int) -> str:
    """`singular` or `plural` for `count`, in the CLI's language."""
    return gettext_for(current()).ngettext(singular, plural, count)


@functools.cache
def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(part) if index % 2 == 0 else f"(?P<{part}>.+?)"
                              for index, part in enumerate(parts)), re.DOTALL)


def fitting(text: str, templates: Iterable[str]) -> tuple[str, dict[str, str]] | None:
    """The first English template `text` was made from, with the values of its placeholders: for a library's
    English message (typer's, a database's) said again from the catalogue. None when no template fits."""
    for template in templates:
        found = _pattern(template).fullmatch(text)
        if found is not None:
            return template, found.groupdict()
    return None
