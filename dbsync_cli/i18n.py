"""Languages of what people read: the console's pages and the CLI's tables and headings, English and Portuguese.

gettext catalogues in Babel's .po format (`dbsync_cli/locale/<lang>/LC_MESSAGES/messages.po`), read with Babel
and compiled in memory when first used, so the package ships the .po sources only and a translator edits one
file per language. English is the source language: every message stands for itself. The CLI takes `--lang`,
else `LC_ALL` / `LANG`; the console the user's switch, else the browser's language, else `LANG`.
"""

from __future__ import annotations

import functools
import gettext
import io
import os
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALES = ("en", "pt")
DEFAULT = "en"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_current = {"lang": ""}


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == DEFAULT or not path.exists():
        return gettext.NullTranslations()
    with path.open("rb") as src:
        catalog = read_po(src, locale=lang)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def choose(wanted: str | None = None, accept_language: str | None = None) -> str:
    """The language: an explicit choice, else the browser's, else $LC_ALL / $LANG, else English."""
    for candidate in (wanted, *(part.split(";")[0].strip() for part in (accept_language or "").split(",")),
                      os.environ.get("LC_ALL"), os.environ.get("LANG")):
        code = (candidate or "").split(".")[0].split("_")[0].split("-")[0].lower()
        if code in LOCALES:
            return code
    return DEFAULT


def gettext_for(lang: str) -> gettext.NullTranslations:
    return translations(lang if lang in LOCALES else DEFAULT)


def set_language(lang: str | None) -> str:
    """The CLI's language for this process (`--lang`, else the environment)."""
    _current["lang"] = choose(lang)
    return _current["lang"]


def _(message: str) -> str:
    """`message` in the CLI's language."""
    return gettext_for(_current["lang"] or choose()).gettext(message)
