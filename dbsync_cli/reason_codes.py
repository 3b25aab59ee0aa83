"""Why a message was parked, refused or skipped, as a code and its arguments: the `Reason` every place that parks
builds (the receiver and the message checks of wire.py) and the English templates of every code.

A `Reason` is a `str` (the English text, what the `reason` column, logs and JSON carry), so every place that passes
a reason along keeps working; receiver/reasons.py stores its code and arguments beside the text and says it in the
reader's language when shown. Shared by both sides because wire.py's message checks give reasons too."""

from __future__ import annotations

from typing import Any


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "mark for translation, translate later"
    return message


#: code → the English template (`{name}` for each argument); translated when shown
TEMPLATES: dict[str, str] = {
    "edited_centrally": N_("row edited centrally since its last sync"),
    "edited_after": N_("row edited centrally at {central}, after the incoming change ({incoming})"),
    "edited_resent": N_("row edited centrally since its last sync; verify --repair sent the site's row again, "
                        "which is no newer change"),
    "recreated": N_("row re-created at central after its synced delete; differs from the incoming one"),
    "central_own": N_("central's own row: central had it before any site changed it"),
    "adopting": N_("adopting site {site}: central's row differs in {columns}"),
    "apply_failed": N_("apply failed: {error}"),
    "site_unknown": N_("site {site!r} {why} (dbsync sites add)"),
    "waiting_behind": N_("waiting behind an earlier message for {entity}"),
    "waiting_behind_entry": N_("waiting behind retry entry {entry} for {entity}"),
    "missing_row": N_("{table} {uuid} does not exist at central"),
    # complex obs files (receiver/complex_files.py, receiver/file_lane.py)
    "file_waiting": N_("waiting for complex obs file {name} of site {site}"),
    "file_name_refused": N_("complex obs file name {name} refused ({why}): it could leave the folder"),
    "file_conflict": N_("complex obs file {name}: central holds other bytes under this name ({why}); not "
                        "overwritten"),
    "file_chunk_refused": N_("complex obs file {name}, chunk {seq}: {why}"),
    "file_digest": N_("complex obs file {name}: the assembled bytes do not match the sha256 the site sent"),
    # a body that is no sync message (receiver/message.py, wire.check): parked as an error
    "too_large": N_("message of {size} bytes exceeds the {limit}-byte limit"),
    "malformed_json": N_("malformed JSON: {error}"),
    "not_json": N_("not a JSON message: {error}"),
    "one_expected": N_("an envelope of {count} messages where one was expected"),
    "envelope_of": N_("an envelope of {count} messages"),
    "envelope_other_site": N_("message for site {site!r} in an envelope of site {envelope_site!r}"),
    "inbox_id": N_("invalid inbox id {inbox!r}"),
    "inbox_base64": N_("inbox body is not valid base64"),
    "header_site": N_("message for site {site!r} was sent with {header} {header_site!r}"),
    "not_object": N_("expected a JSON object, got {type}"),
    "version": N_("unsupported message version {version!r}"),
    "missing_field": N_("missing or invalid {field!r}"),
    "unknown_table": N_("unknown table {table!r}"),
    "unknown_op": N_("unknown op {op!r}"),
    "invalid_uuid": N_("invalid uuid {uuid!r}"),
    "ref_uuid": N_("{table}.{column}: invalid uuid {uuid!r}"),
    "sent_string": N_("sent must be a string"),
    "delete_data": N_("data of a delete must be null"),
    "data_object": N_("data must be an object"),
    "source_object": N_("source must be an object"),
    "source_integer": N_("source.{key} {value!r} is not an integer from {low} to {high}"),
    "source_file": N_("source.file must be a binlog file name"),
    "source_epoch": N_("source.epoch must be a short string"),
    "source_gtid": N_("source.gtid must be a GTID of at most 200 characters"),
    "source_repair": N_("source.repair must be a verify run id"),
    "source_gtid_pos": N_("source.gtid_pos must be a string"),
    "envelope_id": N_("envelope: missing or invalid 'id'"),
    "envelope_site": N_("envelope: missing or invalid 'site'"),
    "envelope_messages": N_("envelope: 'messages' must be a non-empty list"),
    "envelope_too_many": N_("envelope: {count} messages, over the limit of {limit}"),
    # a message whose values central cannot store (receiver/resolve.py, apply.py): parked as an error
    "no_uuid_table": N_("reference to {table}, which has no uuid"),
    "unknown_column": N_("unknown column {table}.{column!r}"),
    "expected_ref": N_("{table}.{column}: expected a uuid reference"),
    "unknown_ref_table": N_("{table}.{column}: unknown reference table {target!r}"),
    "invalid_base64": N_("{where}: invalid base64"),
    "object_value": N_("{where}: unexpected object value"),
    "list_value": N_("{where}: unexpected list value"),
    "invalid_datetime": N_("{where}: invalid datetime {value!r}"),
    "merge_unknown": N_("--merge: {columns} not in the incoming {table} row"),
    "other_site_row": N_("{table} {uuid} belongs to site {owner}: a change from site {site} is refused (a site "
                         "changes only its own rows; receiver.cross_site_changes)"),
    "uuid_case": N_("{table} {uuid} was sent as {sent!r}, which differs only in letter case from central's own row "
                    "{stored!r}: refused (a uuid names one row whatever its letter case)"),
    # who sent it (apply.py): the broker's stamp against the site's registered broker user
    "sender_mismatch": N_("message for site {site!r} was sent by broker user {user!r}; the site sends as "
                          "{expected!r}"),
    "sender_unstamped": N_("message for site {site!r} was sent by a broker that stamps no sender "
                           "(populate-validated-user is off in broker.xml); the site sends as {expected!r}"),
    "signed_mismatch": N_("row of site {site!r} came in a bundle signed by key {key}; the site's recorded key is "
                          "{expected} (dbsync sites update SITE --public-key)"),
    # deliveries consume parks without a body (receiver/consume.py)
    "cut_short": N_("broker delivery {delivery} on {destination} from broker user {user!r}: headers cut short at a "
                    "NUL byte (last header read: {last!r}), no ack header, body lost"),
    "cut_short_parked": N_("broker delivery {delivery} on {destination} from broker user {user!r}: headers cut short "
                           "at a NUL byte (last header read: {last!r}), no ack header, body lost; acknowledged by its "
                           "message-id and parked"),
    "refused_too_large": N_("message {message} from broker user {user!r}: message of {size} bytes exceeds the "
                            "{limit}-byte limit"),
    "refused_deflate": N_("message {message} from broker user {user!r}: deflate body of {size} bytes inflates "
                          "beyond the {limit}-byte limit"),
    # the retry pass (receiver/retry.py, superseded.py)
    "unpacked_from": N_("unpacked from envelope {envelope}"),
    "unpacked_into": N_("unpacked into {count} entries"),
    "superseded": N_("a newer change of its row has been applied since"),
    # the archive (receiver/archive.py): an operator's decision about a parked message
    "resolved_as": N_("conflict resolved: {mode}"),
    # conflicts and skips (receiver/conflict.py)
    "stale": N_("incoming change ({incoming}) is older than central ({central})"),
    "older_position": N_("from {position}, before the change applied last ({last})"),
    "already_absent": N_("already absent"),
    "adopted": N_("central has it unchanged: now the site's"),
    "future": N_("dated {ahead} in central's future (site clock ahead?): row edited centrally, incoming change "
                 "dated {incoming}"),
    "future_at": N_("dated {ahead} in central's future (site clock ahead?): row edited centrally at {central}, "
                    "incoming change dated {incoming}"),
    "future_measured": N_("dated {ahead} in central's future (site clock ahead?): row edited centrally, incoming "
                          "change dated {incoming}; site {site} measured its server's clock {skew} {direction}"),
    "future_at_measured": N_("dated {ahead} in central's future (site clock ahead?): row edited centrally at "
                             "{central}, incoming change dated {incoming}; site {site} measured its server's clock "
                             "{skew} {direction}"),
}
#: the words an argument may hold that are shown translated: {why}, {direction}, an undated {incoming}
WORDS = {"is not registered": N_("is not registered"), "is disabled": N_("is disabled"), "ahead": N_("ahead"),
         # why a complex obs file name is refused (complex_obs.refusal) or in conflict (receiver/file_lane.py)
         "empty": N_("empty"), "NUL byte": N_("NUL byte"), "path separator": N_("path separator"),
         "not a file name": N_("not a file name"), "control character": N_("control character"),
         "another site's file": N_("another site's file"), "not sent by dbsync": N_("not sent by dbsync"),
         "the site sent other bytes before": N_("the site sent other bytes before"),
         "changed at central": N_("changed at central"), "not a regular file": N_("not a regular file"),
         "behind": N_("behind"), "undated": N_("undated"),
         # what orjson says of a body that is not JSON (the `error` of malformed_json), its position cut off
         "unexpected end of data": N_("unexpected end of data"),
         "Input is a zero-length, empty document": N_("Input is a zero-length, empty document"),
         "trailing comma is not allowed": N_("trailing comma is not allowed"),
         "unexpected content after document": N_("unexpected content after document"),
         "invalid escaped sequence in string": N_("invalid escaped sequence in string"),
         "str is not valid UTF-8": N_("str is not valid UTF-8"),
         "unexpected character, expected a JSON value": N_("unexpected character, expected a JSON value"),
         "unexpected character, expected a string key": N_("unexpected character, expected a string key"),
         "unexpected character, expected ':' after key": N_("unexpected character, expected ':' after key"),
         "unexpected character, expected ',' or ']'": N_("unexpected character, expected ',' or ']'"),
         "unexpected character, expected ',' or '}'": N_("unexpected character, expected ',' or '}'"),
         "unexpected control character in string": N_("unexpected control character in string"),
         "number with leading zero is not allowed": N_("number with leading zero is not allowed"),
         "no low surrogate in string": N_("no low surrogate in string")}


#: what MySQL/MariaDB say when they refuse a change (the `error` of apply_failed, values already cut to '…' by
#: batch.failure_reason); said again in the reader's language with the identifiers they name
DB_ERRORS = [
    N_("Data too long for column '{column}' at row {row}"),
    N_("Out of range value for column '{column}' at row {row}"),
    N_("Column '{column}' cannot be null"),
    N_("Duplicate entry '…' for key '{key}'"),
    N_("Cannot add or update a child row: a foreign key constraint fails ({detail})"),
    N_("Cannot delete or update a parent row: a foreign key constraint fails ({detail})"),
    N_("Field '{column}' doesn't have a default value"),
    N_("Incorrect {kind} value: '…' for column {column} at row {row}"),
    N_("Lock wait timeout exceeded; try restarting transaction"),
    N_("Deadlock found when trying to get lock; try restarting transaction"),
]


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
