"""The archive of what was synced, write side: every handled message's outcome, who decided it, the people it hangs
off, and its wire form, written in the transaction that records the outcome (receiver state migration 20).

A write is one deflated blob of the bodies (a batch's messages deflate together about as well as on the broker)
and one multi-row INSERT of the outcome rows, so a kill -9 never leaves an outcome without its archive row or the
reverse. A later outcome of the same message (a retry applied, a conflict resolved, an entry dropped) adds a row;
rows are never updated (with FULL row images an UPDATE would log the row twice). The person a row hangs off is found
at write time from the message (its person or patient references) or, for a row that names none (a delete, an
encounter_provider, a drug_order), from the archived rows it hangs off, so a look-up by patient is one indexed query.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from dbsync_cli.openmrs.patients import Links
from dbsync_cli.receiver import reasons
from dbsync_cli.receiver.batch import ArchiveEntry as Entry
from dbsync_cli.receiver.batch import Outcome
from dbsync_cli.receiver.message import Parsed
from dbsync_cli.sql import Sql, chunks, placeholders, sql, value_rows
from dbsync_cli.wire import canonical_uuid

#: bodies deflated into one blob at most (a bigger write takes several blobs: the server's packet limit)
BLOB_BYTES = 4 << 20
#: an archive row's own bytes beside its body, for the size cap: the row and its index entries as InnoDB stores
#: them (scripts/bench measured 803 bytes a row on disk, 60 of them the deflated body at level 6)
ROW_BYTES = 800
#: zlib level of a blob: 1 deflates a batch of obs messages to ~80 bytes a message against ~60 at level 6, in under
#: half the CPU (0.08 against 0.20 CPU-s for 20,000 messages), beside ~800 bytes a row of index and row on disk
DEFLATE_LEVEL = 1
#: who decided an outcome when no person did: the receiver applying live, or its retry pass
RETRY_ACTOR = "retry queue"


def entry(item: Parsed, outcome: Outcome, links: Links, *, actor: str | None = None,
          from_queue: bool = False) -> Entry:
    """The archive entry of a message's outcome (`links`: who the rows of the schema model hang off)."""
    message = item.message or {}
    uuid = message.get("uuid") if isinstance(message.get("uuid"), str) else None
    data = message.get("data") if isinstance(message.get("data"), dict) else None
    persons = links.people(item.table, uuid, data) if item.table is not None and uuid else []
    parents = links.parents(item.table, uuid, data) if item.table is not None and uuid and not persons else []
    return Entry(item.message_id, outcome.outcome, str(message.get("site") or item.site or "") or None,
                 item.table.name if item.table else None, message.get("op") if isinstance(message.get("op"), str)
                 else None, uuid, outcome.reason, actor, item.raw, "unless_kept" if from_queue else "always",
                 persons, parents)


def event(message_id: str, outcome: str, *, site: str | None, table: str | None, uuid: str | None,
          reason: str | None, actor: str | None) -> Entry:
    """A later outcome of a message archived before (dropped, resolved): no body; its people from its first row."""
    return Entry(message_id, outcome, site, table, None, uuid, reason, actor, None, "never",
                 parents=[canonical_uuid(uuid)] if uuid else [])


def queue_events(cur: Any, s: Sql, ids: list[int], outcome: str, actor: str | None,
                 reason: str | None = None) -> list[Entry]:
    """Events for retry entries `ids` (read before they go): dropped by an operator."""
    if not ids:
        return []
    cur.execute(sql("SELECT message_id, site, table_name, entity_uuid FROM {}.receiver_retry_queue WHERE id IN ({}) "
                    "ORDER BY id", s, placeholders(len(ids))), ids)
    return [event(str(m), outcome, site=site, table=table, uuid=uuid, reason=reason, actor=actor)
            for m, site, table, uuid in cur.fetchall()]


def pack(bodies: Iterable[bytes]) -> bytes:
    """Bodies one after another, each behind its length, deflated together."""
    return zlib.compress(b"".join(struct.pack(">I", len(b)) + b for b in bodies), DEFLATE_LEVEL)


def unpack(blob: bytes) -> Iterator[bytes]:
    """The bodies of a blob, in order."""
    raw, at = zlib.decompress(blob), 0
    while at < len(raw):
        (size,) = struct.unpack_from(">I", raw, at)
        yield raw[at + 4:at + 4 + size]
        at += 4 + size


def write(cur: Any, s: Sql, entries: list[Entry], stamp: dt.datetime) -> None:
    """The entries' rows and their bodies, in the caller's transaction (one blob and one INSERT per call)."""
    if not entries:
        return
    patients = _patients(cur, s, entries)
    kept = _bodies_kept(cur, s, [e.message_id for e in entries if e.body == "unless_kept"])
    day = stamp.date()
    # the write's day and time as text, formatted once (PyMySQL escapes a date or datetime per row at about the
    # cost of all the row's other values)
    day_text, stamp_text = day.isoformat(), stamp.isoformat(sep=" ", timespec="microseconds")
    rows: list[tuple[Any, ...]] = []
    groups: list[list[int]] = [[]]  # indexes of entries per blob
    size = 0
    with_body: dict[int, int] = {}  # entry index → its part in its blob
    for index, e in enumerate(entries):
        if e.raw is None or e.body == "never" or (e.body == "unless_kept" and e.message_id in kept):
            continue
        if size + len(e.raw) > BLOB_BYTES and groups[-1]:
            groups.append([])
            size = 0
        with_body[index] = len(groups[-1])
        groups[-1].append(index)
        size += len(e.raw)
    blob_of: dict[int, int] = {}
    for number, group in enumerate(groups):
        body = pack(entries[i].raw or b"" for i in group) if group else None
        # the entries without a body of their own are counted with the first blob
        members = group if number else [i for i in range(len(entries)) if i not in with_body] + group
        cur.execute(sql("INSERT INTO {}.archive_blob (day, n_rows, bytes, body) VALUES (%s, %s, %s, %s)", s),
                    (day_text, len(members), len(body or b"") + ROW_BYTES * len(members), body))
        for i in members:
            blob_of[i] = int(cur.lastrowid)
    for index, e in enumerate(entries):
        people = patients.get(index) or []
        first, second = (people[0] if people else None), (people[1] if len(people) > 1 else None)
        code, args = reasons.columns(e.reason)
        rows.append((day_text, stamp_text, blob_of[index], with_body.get(index), e.message_id[:255], (e.site or "")[:100] or None,
                     e.table, (e.op or "")[:1] or None, _uuid(e.uuid), first, second,
                     e.outcome[:32], (e.reason or "")[:1000] or None, code, args, (e.actor or "")[:100] or None))
    for part in chunks(rows):
        cur.execute(sql("INSERT INTO {}.archive (day, date_handled, blob_id, part, message_id, site, table_name, "
                        "op, entity_uuid, patient_uuid, patient2_uuid, outcome, reason, reason_code, reason_args, "
                        "actor) VALUES {}", s, value_rows(cur.connection, part)))


def _uuid(value: str | None) -> str | None:
    return canonical_uuid(value)[:38] if value else None


def _patients(cur: Any, s: Sql, entries: list[Entry]) -> dict[int, list[str]]:
    """Entry index → the people it hangs off: its own, else those of the first row it hangs off that has one (an
    earlier entry of this write, else an archived row: one indexed query per 1,000 uuids)."""
    wanted = sorted({p for e in entries if not e.persons for p in e.parents})
    archived: dict[str, list[str]] = {}
    for part in chunks(wanted):
        cur.execute(sql("SELECT entity_uuid, patient_uuid, patient2_uuid FROM {}.archive WHERE entity_uuid IN ({}) "
                        "AND patient_uuid IS NOT NULL ORDER BY id DESC", s, placeholders(len(part))), part)
        for uuid, first, second in cur.fetchall():
            archived.setdefault(canonical_uuid(uuid), [p for p in (first, second) if p])
    found: dict[int, list[str]] = {}
    here: dict[str, list[str]] = {}
    for index, e in enumerate(entries):
        people = e.persons or next((known for p in e.parents if (known := here.get(p) or archived.get(p))), [])
        if people:
            found[index] = people[:2]
            if e.uuid:
                here[canonical_uuid(e.uuid)] = people[:2]
    return found


def _bodies_kept(cur: Any, s: Sql, message_ids: list[str]) -> set[str]:
    """Which of these messages the archive holds a body of already."""
    kept: set[str] = set()
    for part in chunks(sorted(set(message_ids))):
        cur.execute(sql("SELECT DISTINCT message_id FROM {}.archive WHERE message_id IN ({}) AND part IS NOT NULL",
                        s, placeholders(len(part))), part)
        kept.update(row[0] for row in cur.fetchall())
    return kept
