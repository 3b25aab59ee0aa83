"""The console's languages: the shared catalogues of `dbsync_cli.i18n`."""

from __future__ import annotations

from dbsync_cli.i18n import DEFAULT, LOCALE_DIR, LOCALES, choose, gettext_for, reset, translations, use

__all__ = ["DEFAULT", "LOCALES", "LOCALE_DIR", "choose", "gettext_for", "reset", "translations", "use"]
