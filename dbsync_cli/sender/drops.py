"""What the sender read and did not send, as records in its stream, counted where the checkpoint moves.

A stage that does not send an event (enrich: a row deleted since, a subclass row whose parent row is gone, an event
that is malformed or of a table not synced; publish: a message over the size limit, a record that is no sync
message) puts a *drop record* in its place: a heartbeat (``op: "h"``, so every consumer that skips heartbeats skips
it: `dbsync apply`, test pipes, jq filters) with its event's ``source`` and a ``dropped`` object saying what and
why. Publish, the stage that moves the checkpoint, counts it per reason in the sender's SQLite state in the same
transaction as the checkpoint that moves past it: a crash before that re-reads the event and counts it then, never
twice; after it, neither the count nor the checkpoint is lost. The combined sender and the `capture | enrich |
publish` pipe carry the same records, so they count the same.
"""

from __future__ import annotations

import time
from typing import Any

from dbsync_cli import wire

#: the reasons, in the order `dbsync status` lists them
TOO_LARGE = "too_large"  # publish: the message's JSON is over broker.max_message_bytes (kept in <home>/rejected/)
PARENT_GONE = "parent_gone"  # enrich: a subclass row (patient, drug_order …) whose parent row is gone: no uuid
ROW_DELETED = "row_deleted"  # enrich: a create/update of a row deleted since (its delete follows in the binlog)
NOT_SYNCED = "not_synced"  # enrich: an event of a table the sender does not sync (a pipe fed another capture)
MALFORMED = "malformed"  # enrich: an event without its row image or key, or an unknown op
NOT_A_MESSAGE = "not_a_message"  # publish: a record without a message id or table
REASONS = (TOO_LARGE, PARENT_GONE, ROW_DELETED, NOT_SYNCED, MALFORMED, NOT_A_MESSAGE)

#: reasons that lose data (the others are superseded by a later change): `dbsync status` warns about these
LOSSES = (TOO_LARGE, PARENT_GONE, NOT_SYNCED, MALFORMED, NOT_A_MESSAGE)

KEY = "dropped"


def record(reason: str, source: Any, *, table: Any = None, op: Any = None, key: Any = None, uuid: Any = None,
           message_id: Any = None) -> dict[str, Any]:
    """A drop record: a heartbeat at the event's source that also says what was not sent and why."""
    what = {"reason": reason, "table": table, "op": op, "key": key, "uuid": uuid, "id": message_id}
    return {"op": wire.HEARTBEAT, "source": source if isinstance(source, dict) else None,
            KEY: {k: v for k, v in what.items() if v is not None}}


def of_event(reason: str, event: dict[str, Any], key: Any = None, uuid: Any = None) -> dict[str, Any]:
    image = event.get("after") if isinstance(event.get("after"), dict) else event.get("before")
    if uuid is None and isinstance(image, dict) and isinstance(image.get("uuid"), str):
        uuid = image["uuid"]
    return record(reason, event.get("source"), table=event.get("table"), op=event.get("op"), key=key, uuid=uuid)


def of_message(reason: str, message: dict[str, Any]) -> dict[str, Any]:
    return record(reason, message.get("source"), table=message.get("table"), op=message.get("op"),
                  uuid=message.get("uuid"), message_id=message.get("id"))


def is_dropped(item: dict[str, Any]) -> bool:
    return item.get("op") == wire.HEARTBEAT and isinstance(item.get(KEY), dict)


def reason_of(item: dict[str, Any]) -> str:
    reason = str(item[KEY].get("reason") or "")
    return reason if reason in REASONS else NOT_A_MESSAGE


def summary(items: list[dict[str, Any]], now: float | None = None) -> dict[str, tuple[int, dict[str, Any]]]:
    """Per reason: how many, and the last one (what, where in the binlog, when)."""
    now = time.time() if now is None else now
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for item in items:
        reason = reason_of(item)
        source = item.get("source") or {}
        last = {**{k: v for k, v in item[KEY].items() if k != "reason"}, "at": now,
                "source": {k: source.get(k) for k in ("file", "pos", "row", "snapshot") if k in source}}
        found[reason] = (found.get(reason, (0, last))[0] + 1, last)
    return found
