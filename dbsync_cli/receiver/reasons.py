"""Why a message was parked, stored as a code and its arguments (receiver_retry_queue, receiver_conflict_queue:
`reason_code`, `reason_args`) beside the English text, and said in the reader's language when shown.

A `Reason` is a `str` (the English text, what the `reason` column, logs and JSON carry), so every place that passes
a reason along keeps working; `_park` and `_conflict` store its code and arguments when it has them. A row without
a code (parked before state migration 15, or a reason with none) shows its stored text. The codes, their English
templates and the `Reason` class are in dbsync_cli/reason_codes.py (wire.py's checks give reasons too)."""

from __future__ import annotations

import orjson

from dbsync_cli import i18n
from dbsync_cli.i18n import _
from dbsync_cli.reason_codes import DB_ERRORS, N_, TEMPLATES, WORDS, Reason, reason

__all__ = ["N_", "TEMPLATES", "WORDS", "Reason", "columns", "reason", "said", "shown"]


def columns(text: str | None) -> tuple[str | None, str | None]:
    """(reason_code, reason_args as JSON) to store beside the text; (None, None) for a plain text."""
    if isinstance(text, Reason):
        return text.code, orjson.dumps(text.args).decode()
    return None, None


def shown(code: str | None, args: str | bytes | None, text: str) -> str:
    """The reason in the current language: its template translated when the code is known, else the stored text."""
    if not code or code not in TEMPLATES:
        return text
    try:
        values = orjson.loads(args) if args else {}
        for key in ("why", "direction", "incoming", "error"):
            if isinstance(values.get(key), str) and values[key] in WORDS:
                values[key] = _(WORDS[values[key]])
        if code == "apply_failed" and isinstance(values.get("error"), str):
            values["error"] = _database_said(values["error"])
        return _(TEMPLATES[code]).format(**values)
    except (orjson.JSONDecodeError, KeyError, IndexError, ValueError, TypeError, AttributeError):
        return text  # arguments that do not fit the template (a code renamed since): the text as stored


def _database_said(text: str) -> str:
    """A database's refusal in the current language when one of DB_ERRORS fits it, else as the server wrote it."""
    found = i18n.fitting(text, DB_ERRORS)
    return _(found[0]).format(**found[1]) if found is not None else text


def said(text: str | None) -> str:
    """A reason passed along in hand (an outcome's), in the current language: a `Reason` by its code, else as is."""
    if isinstance(text, Reason):
        return shown(text.code, orjson.dumps(text.args), text)
    return text or ""
