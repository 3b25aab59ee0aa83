"""What apply writes beside the changes, in the same transaction: entity hashes with the source position of the
change applied last (tombstones for deletes), handled message ids, inbox deletions, REST-call queue entries and
the per-site status. One transaction for all of it is why receiver state lives on the central server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dbsync_cli.receiver.batch import Batch
from dbsync_cli.receiver.guard import COLUMNS as POSITION_COLUMNS
from dbsync_cli.receiver.guard import SourcePosition
from dbsync_cli.sql import Sql, chunks, columns, join, placeholders, quote, sql, value_rows
from dbsync_cli.wire import canonical_uuid

#: (key, hash) of central rows of a table, as the central server computes them
Hashes = Callable[[str, list[Any]], Iterable[tuple[Any, str]]]


@dataclass(frozen=True)
class Synced:
    """What entity_hash knows of an entity: the hash stored when dbsync last wrote it (None: never, or deleted),
    where that change came from, and who owns the entity (None: no entry at all)."""
    hash: str | None = None
    position: SourcePosition | None = None
    owner: str | None = None


UNKNOWN = Synced()


def fetch_synced(cur: Any, schema: Sql, table: str, uuids: list[str]) -> dict[tuple[str, str], Synced]:
    """entity_hash entries of these uuids, UNKNOWN for the unknown, 1,000 per query."""
    found: dict[tuple[str, str], Synced] = {(table, u): UNKNOWN for u in uuids}
    for part in chunks(uuids):
        cur.execute(sql("SELECT entity_uuid, hash, owner, {} FROM {}.entity_hash WHERE table_name = %s AND "
                        "entity_uuid IN ({})", columns(POSITION_COLUMNS), schema, placeholders(len(part))),
                    [table, *part])
        # the key compares case-insensitively: an entry written in another letter case is this entity's too
        asked = {canonical_uuid(u): u for u in part}
        for row in cur.fetchall():
            uuid = asked.get(canonical_uuid(row[0]), row[0])
            found[(table, uuid)] = Synced(row[1], SourcePosition.from_row(row[3:]), row[2])
    return found


def set_owner(cur: Any, schema: Sql, table: str, uuid: str, owner: str) -> None:
    """An operator's decision (conflict resolution): the entity is now owned by `owner`."""
    cur.execute(sql("UPDATE {}.entity_hash SET owner = %s WHERE table_name = %s AND entity_uuid = %s", schema),
                (owner, table, uuid))


def write_entity_hashes(cur: Any, schema: Sql, batch: Batch, stamp: dt.datetime, hashes: Hashes) -> None:
    """Hash and source position of every row the batch wrote; a tombstone (no hash) for every delete."""
    no_position = (None,) * len(POSITION_COLUMNS)

    def position(table: str, uuid: str) -> tuple[Any, ...]:
        found = batch.positions.get((table, uuid))
        return no_position if found is None else found.row_values()

    entries = [(table, uuid, None, site, site, stamp, *position(table, uuid))
               for (table, uuid), site in batch.removed.items()]
    by_table: dict[str, list[Any]] = {}
    for table, key in batch.touched:
        by_table.setdefault(table, []).append(key)
    for table, keys in by_table.items():
        for key, digest in hashes(table, keys):
            uuid, site = batch.touched[(table, key)]
            entries.append((table, uuid, digest, site, site, stamp, *position(table, uuid)))
    if entries:
        keep = join(sql("{c}=IF(VALUES(src_pos) IS NULL, {c}, VALUES({c}))", c=quote(c)) for c in POSITION_COLUMNS)
        cur.executemany(
            sql("INSERT INTO {}.entity_hash (table_name, entity_uuid, hash, site, owner, date_synced, {}) "
                "VALUES ({}) ON DUPLICATE KEY UPDATE hash=VALUES(hash), site=VALUES(site), "
                "owner=COALESCE(owner, VALUES(owner)), date_synced=VALUES(date_synced), {}", schema,
                columns(POSITION_COLUMNS), placeholders(6 + len(POSITION_COLUMNS)), keep), entries)


def write_batch(cur: Any, schema: Sql, batch: Batch, site_ids: dict[str, int], stamp: dt.datetime,
                hashes: Hashes) -> None:
    """Everything `batch` collected; `site_ids` maps each site identifier in `batch.sites` to its site_info id."""
    write_entity_hashes(cur, schema, batch, stamp, hashes)
    if batch.handled:
        stamp_text = stamp.isoformat(sep=" ", timespec="microseconds")  # once, not per row
        for part in chunks(list(dict.fromkeys(batch.handled))):
            cur.execute(sql("INSERT INTO {}.applied_message (message_id, date_applied, digest) VALUES {} "
                            "ON DUPLICATE KEY UPDATE digest = COALESCE(VALUES(digest), digest)", schema,
                            value_rows(cur.connection, [(m[:255], stamp_text, batch.digests.get(m)) for m in part])))
    if batch.inbox:
        inbox = sorted(set(batch.inbox))
        cur.execute(sql("DELETE FROM {}.inbox WHERE id IN ({})", schema, placeholders(len(inbox))), inbox)
    if batch.rest:
        cur.executemany(sql("INSERT INTO {}.rest_call (resource, sub_resource, entity_uuid, date_created) "
                            "VALUES (%s, %s, %s, %s)", schema), [(*r, stamp) for r in batch.rest])
    if batch.skipped:
        cur.executemany(
            sql("INSERT INTO {}.receiver_skipped (site, reason, table_name, count, last_message_id, last_date) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE count = count + VALUES(count), "
                "last_message_id = VALUES(last_message_id), last_date = VALUES(last_date)", schema),
            [(site[:100], reason, table[:64], count, last_id[:255], stamp)
             for (site, reason, table), (count, last_id) in batch.skipped.items()])
    for identifier, (count, last_id) in batch.sites.items():
        cur.execute(
            sql("INSERT INTO {}.receiver_sync_status (site_id, last_sync_date, last_message_id, messages) "
                "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE last_sync_date=VALUES(last_sync_date), "
                "last_message_id=VALUES(last_message_id), messages=messages+VALUES(messages)", schema),
            (site_ids[identifier], stamp, last_id[:255], count),
        )
