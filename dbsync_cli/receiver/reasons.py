"""Why a message was parked, stored as a code and its arguments (receiver_retry_queue, receiver_conflict_queue:
`reason_code`, `reason_args`) beside the English text, and said in the reader's language when shown.

A `Reason` is a `str` (the English text, what the `reason` column, logs and JSON carry), so every place that passes
a reason along keeps working; `_park` and `_conflict` store its code and arguments when it has them. A row without
a code (parked before state migration 15, or a reason with none) shows its stored text."""

from __future__ import annotations

from typing import Any

import orjson

from dbsync_cli.i18n import _


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for translation, translate later"
    return message


#: code → the English template (`{name}` for each argument); translated when shown
TEMPLATES: dict[str, str] = {
    "edited_centrally": N_("row edited centrally since its last sync"),
    "edited_after": N_("row edited centrally at {central}, after the incoming change ({incoming})"),
    "recreated": N_("row re-created at central after its synced delete; differs from the incoming one"),
    "central_own": N_("central's own row: central had it before any site changed it"),
    "adopting": N_("adopting site {site}: central's row differs in {columns}"),
    "apply_failed": N_("apply failed: {error}"),
    "site_unknown": N_("site {site!r} {why} (dbsync sites add)"),
    "waiting_behind": N_("waiting behind an earlier message for {entity}"),
    "waiting_behind_entry": N_("waiting behind retry entry {entry} for {entity}"),
    "missing_row": N_("{table} {uuid} does not exist at central"),
}
#: the words a template's {why} may hold
WHY = {"is not registered": N_("is not registered"), "is disabled": N_("is disabled")}


class Reason(str):
    """The English text of a reason that also knows its code and arguments."""

    code: str
    args: dict[str, Any]

    def __new__(cls, code: str, **args: Any) -> Reason:
        made = super().__new__(cls, TEMPLATES[code].format(**args))
        made.code, made.args = code, args
        return made


def reason(code: str, **args: Any) -> Reason:
    """A reason by its code; arguments are stored as JSON, so give strings and numbers."""
    return Reason(code, **{k: v if isinstance(v, int | float) or v is None else str(v) for k, v in args.items()})


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
        if "why" in values:
            values["why"] = _(WHY.get(values["why"], values["why"]))
        return _(TEMPLATES[code]).format(**values)
    except (orjson.JSONDecodeError, KeyError, IndexError, ValueError, TypeError, AttributeError):
        return text  # arguments that do not fit the template (a code renamed since): the text as stored
