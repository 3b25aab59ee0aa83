"""Receiver state in a `dbsync` schema on the central server, so that applying a change, its entity hash, its
message id and the site status commit in one transaction with the change itself.

Table names an OpenMRS operator knows from EIP are kept: site_info, receiver_sync_status, receiver_conflict_queue,
receiver_retry_queue. Migrations are numbered and recorded in schema_version; each runs once.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dbsync_cli import exitcodes
from dbsync_cli.i18n import _
from dbsync_cli.openmrs.rules import UUID_INDEX_TABLES
from dbsync_cli.receiver.worker_locks import applier_lock, release, running_workers
from dbsync_cli.sql import Sql, join, quote, sql

log = logging.getLogger("dbsync.state")

_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

#: one step of a migration: SQL (idempotent: IF NOT EXISTS, an UPDATE that may run twice) or a function of
#: (cursor, quoted schema, schema name) that looks at information_schema first (alter_table, copy_column_if_present)
Step = str | Callable[[Any, Sql, str], None]

MIGRATIONS: list[list[Step]] = [
    [
        "CREATE TABLE IF NOT EXISTS {s}.schema_version (version INT NOT NULL PRIMARY KEY, applied DATETIME NOT NULL)",
        """CREATE TABLE IF NOT EXISTS {s}.site_info (
            id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            identifier VARCHAR(100) NOT NULL,
            date_created DATETIME NOT NULL,
            disabled TINYINT(1) NOT NULL DEFAULT 0,
            UNIQUE KEY site_identifier (identifier)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.receiver_sync_status (
            site_id INT NOT NULL PRIMARY KEY,
            last_sync_date DATETIME(3) NOT NULL,
            last_message_id VARCHAR(255) NULL,
            messages BIGINT NOT NULL DEFAULT 0,
            CONSTRAINT status_site FOREIGN KEY (site_id) REFERENCES {s}.site_info (id) ON DELETE CASCADE)""",
        """CREATE TABLE IF NOT EXISTS {s}.inbox (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            message_id VARCHAR(255) NOT NULL,
            site VARCHAR(100) NULL,
            body LONGBLOB NOT NULL,
            date_received DATETIME(3) NOT NULL,
            UNIQUE KEY inbox_message (message_id)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.applied_message (
            message_id VARCHAR(255) NOT NULL PRIMARY KEY,
            date_applied DATETIME(3) NOT NULL,
            KEY applied_date (date_applied)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.entity_hash (
            table_name VARCHAR(64) NOT NULL,
            entity_uuid VARCHAR(38) NOT NULL,
            hash CHAR(64) NOT NULL,
            site VARCHAR(100) NULL,
            date_synced DATETIME(3) NOT NULL,
            PRIMARY KEY (table_name, entity_uuid)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.receiver_retry_queue (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            message_id VARCHAR(255) NOT NULL,
            site VARCHAR(100) NULL,
            table_name VARCHAR(64) NULL,
            entity_key VARCHAR(120) NULL,
            body LONGBLOB NOT NULL,
            reason TEXT NOT NULL,
            attempts INT NOT NULL DEFAULT 0,
            date_created DATETIME(3) NOT NULL,
            date_last_attempt DATETIME(3) NULL,
            KEY retry_entity (entity_key)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.receiver_conflict_queue (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            message_id VARCHAR(255) NOT NULL,
            site VARCHAR(100) NOT NULL,
            table_name VARCHAR(64) NOT NULL,
            entity_uuid VARCHAR(38) NOT NULL,
            entity_key VARCHAR(120) NOT NULL,
            body LONGBLOB NOT NULL,
            central_row LONGBLOB NULL,
            reason TEXT NOT NULL,
            date_created DATETIME(3) NOT NULL,
            resolved TINYINT(1) NOT NULL DEFAULT 0,
            resolution VARCHAR(40) NULL,
            date_resolved DATETIME(3) NULL,
            KEY conflict_entity (entity_key, resolved)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.rest_call (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            resource VARCHAR(40) NOT NULL,
            sub_resource VARCHAR(40) NULL,
            entity_uuid VARCHAR(38) NOT NULL,
            attempts INT NOT NULL DEFAULT 0,
            last_error TEXT NULL,
            date_created DATETIME(3) NOT NULL,
            date_last_attempt DATETIME(3) NULL) CHARACTER SET utf8mb4""",
    ],
    [  # 2: the source position of the change applied last (order guard); a delete keeps it as a tombstone
        """ALTER TABLE {s}.entity_hash MODIFY hash CHAR(64) NULL,
            ADD COLUMN src_site VARCHAR(100) NULL, ADD COLUMN src_server_id BIGINT NULL,
            ADD COLUMN src_file VARCHAR(255) NULL, ADD COLUMN src_pos BIGINT NULL, ADD COLUMN src_row INT NULL,
            ADD COLUMN src_sent DATETIME(3) NULL""",
    ],
    [  # 3: what apply decided not to apply, counted per site and reason (never silent)
        """CREATE TABLE IF NOT EXISTS {s}.receiver_skipped (
            site VARCHAR(100) NOT NULL,
            reason VARCHAR(40) NOT NULL,
            count BIGINT NOT NULL DEFAULT 0,
            last_message_id VARCHAR(255) NULL,
            last_date DATETIME(3) NOT NULL,
            PRIMARY KEY (site, reason)) CHARACTER SET utf8mb4""",
    ],
    [  # 4: who owns each entity (a site, or central for rows central had before any site changed them), and the
        # skip counts per table too
        "ALTER TABLE {s}.entity_hash ADD COLUMN owner VARCHAR(100) NULL",
        "UPDATE {s}.entity_hash SET owner = COALESCE(site, src_site)",
        # rows kept as central's own when an onboarding conflict was resolved before this version
        """UPDATE {s}.entity_hash e JOIN {s}.receiver_conflict_queue c ON c.table_name = e.table_name
            AND c.entity_uuid = e.entity_uuid AND c.reason LIKE 'row existed at central before any sync%'
            AND c.resolution IN ('keep-central', 'manual') SET e.owner = '*central'""",
        """ALTER TABLE {s}.receiver_skipped ADD COLUMN table_name VARCHAR(64) NOT NULL DEFAULT '',
            DROP PRIMARY KEY, ADD PRIMARY KEY (site, reason, table_name)""",
    ],
    [  # 5: what each handled message said, so an id seen again with other content is not taken as a duplicate
        "ALTER TABLE {s}.applied_message ADD COLUMN digest BINARY(16) NULL",
    ],
    [  # 6: who may send for a site (the broker user Artemis stamps on its messages), kept with each delivery
        "ALTER TABLE {s}.site_info ADD COLUMN broker_user VARCHAR(100) NULL",
        "ALTER TABLE {s}.inbox ADD COLUMN broker_user VARCHAR(100) NULL",
        "ALTER TABLE {s}.receiver_retry_queue ADD COLUMN broker_user VARCHAR(100) NULL, "
        "ADD COLUMN header_site VARCHAR(100) NULL",
    ],
    [  # 7: a site whose data central already has (loaded from its dump): its snapshot adopts the equal rows
        "ALTER TABLE {s}.site_info ADD COLUMN adopt TINYINT(1) NOT NULL DEFAULT 0",
    ],
    [  # 8: wire version 2 (several rows per delivery), and live changes applied before initial loads' rows
        "ALTER TABLE {s}.inbox ADD COLUMN n_rows INT NOT NULL DEFAULT 1, "
        "ADD COLUMN snapshot TINYINT(1) NOT NULL DEFAULT 0, ADD KEY inbox_live_first (snapshot, id)",
    ],
    [  # 9: `dbsync verify`: each run, its figures per table, and the rows that differ
        """CREATE TABLE IF NOT EXISTS {s}.verify_run (
            run_id VARCHAR(80) NOT NULL PRIMARY KEY,
            site VARCHAR(100) NOT NULL,
            state VARCHAR(20) NOT NULL,
            repair TINYINT(1) NOT NULL DEFAULT 0,
            date_started DATETIME(3) NOT NULL,
            date_finished DATETIME(3) NULL,
            KEY verify_site (site, date_started)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.verify_table (
            run_id VARCHAR(80) NOT NULL,
            table_name VARCHAR(64) NOT NULL,
            site_rows BIGINT NOT NULL DEFAULT 0,
            central_rows BIGINT NOT NULL DEFAULT 0,
            matched BIGINT NOT NULL DEFAULT 0,
            missing BIGINT NOT NULL DEFAULT 0,
            different BIGINT NOT NULL DEFAULT 0,
            extra BIGINT NOT NULL DEFAULT 0,
            placeholders BIGINT NOT NULL DEFAULT 0,
            not_owned BIGINT NOT NULL DEFAULT 0,
            edited_at_central BIGINT NOT NULL DEFAULT 0,
            changing BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, table_name)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.verify_difference (
            run_id VARCHAR(80) NOT NULL,
            table_name VARCHAR(64) NOT NULL,
            entity_uuid VARCHAR(38) NOT NULL,
            kind VARCHAR(20) NOT NULL,
            PRIMARY KEY (run_id, table_name, entity_uuid)) CHARACTER SET utf8mb4""",
    ],
    [  # 10: the console's audit log: every operator action, who and when
        """CREATE TABLE IF NOT EXISTS {s}.console_audit (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            user VARCHAR(64) NOT NULL,
            date_created DATETIME(3) NOT NULL,
            action VARCHAR(40) NOT NULL,
            detail TEXT NOT NULL) CHARACTER SET utf8mb4""",
    ],
    [  # 11: a sample of each site's figures a minute, for the console's charts (kept SAMPLE_DAYS)
        """CREATE TABLE IF NOT EXISTS {s}.receiver_sample (
            site VARCHAR(100) NOT NULL,
            date_sampled DATETIME NOT NULL,
            messages BIGINT NOT NULL,
            inbox BIGINT NOT NULL,
            retry BIGINT NOT NULL,
            PRIMARY KEY (site, date_sampled)) CHARACTER SET utf8mb4""",
    ],
    [  # 12: operator actions (retry, conflicts) handed to the running receiver, which holds the applier lock
        """CREATE TABLE IF NOT EXISTS {s}.receiver_request (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            action VARCHAR(40) NOT NULL,
            args TEXT NOT NULL,
            requested_by VARCHAR(100) NOT NULL,
            date_created DATETIME(3) NOT NULL,
            state VARCHAR(12) NOT NULL,
            taken_by BIGINT NULL,
            date_done DATETIME(3) NULL,
            result MEDIUMTEXT NULL,
            KEY state (state, id)) CHARACTER SET utf8mb4""",
    ],
    [  # 13: fillers: rows a placeholder's required reference needed in a table empty at central (random uuids no
        # site has), written with them; the apply loop removes each once nothing references it
        """CREATE TABLE IF NOT EXISTS {s}.receiver_filler (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            table_name VARCHAR(64) NOT NULL,
            row_key VARCHAR(120) NOT NULL,
            uuid VARCHAR(38) NOT NULL,
            date_created DATETIME(3) NOT NULL,
            date_checked DATETIME(3) NULL,
            KEY filler_checked (date_checked, id)) CHARACTER SET utf8mb4""",
    ],
    [  # 14: the retry queue at scale. The body, written once, lives apart from what each attempt changes (central's
        # binlog in FULL row image logged every body twice per attempt); each entry has a kind (transient |
        # permanent | waiting), a next attempt (NULL: due now) and a cause whose fix makes it due at once
        """CREATE TABLE IF NOT EXISTS {s}.receiver_retry_body (
            id BIGINT NOT NULL PRIMARY KEY,
            body LONGBLOB NOT NULL) CHARACTER SET utf8mb4""",
        # each step may run again after a crash at any point (DDL commits on its own): bodies are copied only while
        # the queue still has them, and only non-empty ones (an empty body is a cut-short delivery, kept as none)
        lambda cur, s, schema: copy_column_if_present(cur, schema, "receiver_retry_queue", "body",
                                                      "INSERT IGNORE INTO {s}.receiver_retry_body (id, body) SELECT id, "
                                                      "body FROM {s}.receiver_retry_queue WHERE body <> ''"),
        lambda cur, s, schema: alter_table(cur, schema, "receiver_retry_queue", drop=("body",), add=(
            ("kind", "VARCHAR(20) NOT NULL DEFAULT 'transient'"), ("next_attempt", "DATETIME(3) NULL"),
            ("cause", "VARCHAR(160) NULL"), ("entity_uuid", "VARCHAR(38) NULL")),
            keys=(("retry_next", "next_attempt"), ("retry_cause", "cause"))),
        "UPDATE {s}.receiver_retry_queue SET kind = 'permanent' WHERE entity_key IS NULL",
        "UPDATE {s}.receiver_retry_queue SET kind = 'waiting' WHERE reason LIKE 'waiting behind %'",
        """CREATE TABLE IF NOT EXISTS {s}.receiver_fix_epoch (
            cause VARCHAR(160) NOT NULL PRIMARY KEY,
            epoch BIGINT NOT NULL DEFAULT 0,
            fingerprint VARCHAR(64) NULL,
            date_changed DATETIME(3) NOT NULL) CHARACTER SET utf8mb4""",
    ],
    [  # 15: a parked message's reason as a code and its arguments (receiver/reasons.py), said in the reader's
        # language when shown; `reason` keeps the English text (older rows have only that)
        lambda cur, s, schema: alter_table(cur, schema, "receiver_retry_queue", add=(
            ("reason_code", "VARCHAR(40) NULL"), ("reason_args", "TEXT NULL"))),
        lambda cur, s, schema: alter_table(cur, schema, "receiver_conflict_queue", add=(
            ("reason_code", "VARCHAR(40) NULL"), ("reason_args", "TEXT NULL"))),
    ],
    [  # 16: the retry queue scheduled per cause: entries sharing a cause are tried through one representative; its
        # failure moves this one row, not every entry (receiver/retry.py). No row: the cause is due
        """CREATE TABLE IF NOT EXISTS {s}.receiver_retry_cause (
            cause VARCHAR(160) NOT NULL PRIMARY KEY,
            kind VARCHAR(20) NOT NULL,
            attempts INT NOT NULL DEFAULT 0,
            entry_id BIGINT NULL,
            ref_table VARCHAR(64) NULL,
            next_attempt DATETIME(3) NULL,
            date_last_attempt DATETIME(3) NULL) CHARACTER SET utf8mb4""",
    ],
    [  # 17: what central held when a site was registered for adoption (receiver/adopt_held.py): the synced tables
        # recorded, and their keys as ranges; those rows, and rows other sites sent as central's, are never adopted
        """CREATE TABLE IF NOT EXISTS {s}.adopt_table (
            site_id INT NOT NULL,
            table_name VARCHAR(64) NOT NULL,
            held_rows BIGINT NOT NULL,
            date_recorded DATETIME(6) NOT NULL,
            PRIMARY KEY (site_id, table_name),
            CONSTRAINT adopt_table_site FOREIGN KEY (site_id) REFERENCES {s}.site_info (id) ON DELETE CASCADE)
            CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.adopt_held (
            site_id INT NOT NULL,
            table_name VARCHAR(64) NOT NULL,
            first_key BIGINT NOT NULL,
            last_key BIGINT NOT NULL,
            PRIMARY KEY (site_id, table_name, first_key),
            CONSTRAINT adopt_held_site FOREIGN KEY (site_id) REFERENCES {s}.site_info (id) ON DELETE CASCADE)
            CHARACTER SET utf8mb4""",
    ],
    [  # 18: sync by file: the public key a site signs its bundles with, and the bundles imported (dbsync import)
        lambda cur, s, schema: alter_table(cur, schema, "site_info", add=(("public_key", "VARCHAR(100) NULL"),)),
        """CREATE TABLE IF NOT EXISTS {s}.bundle_import (
            bundle_id VARCHAR(160) NOT NULL PRIMARY KEY,
            site VARCHAR(100) NOT NULL,
            file_name VARCHAR(255) NOT NULL,
            envelopes INT NOT NULL,
            n_rows INT NOT NULL,
            stored INT NOT NULL,
            times INT NOT NULL DEFAULT 1,
            date_first DATETIME(3) NOT NULL,
            date_last DATETIME(3) NOT NULL,
            KEY bundle_import_site (site, date_last)) CHARACTER SET utf8mb4""",
    ],
    [  # 19: verify's rows added at central that hang off a site's rows, and the columns only one side has (compared
        # without them), per table of a run
        lambda cur, s, schema: alter_table(cur, schema, "verify_table", add=(
            ("added_at_central", "BIGINT NOT NULL DEFAULT 0"), ("site_only_columns", "TEXT NULL"),
            ("central_only_columns", "TEXT NULL"))),
    ],
    [  # 20 (issue 28: the archive of what was synced; receiver/archive*.py): each handled message's outcome, its
        # wire form deflated a write at a time in archive_blob, by day partitions that pruning drops whole (a
        # DROP PARTITION is a few bytes of binlog; a DELETE would log every pruned body again)
        """CREATE TABLE IF NOT EXISTS {s}.archive_blob (
            id BIGINT NOT NULL AUTO_INCREMENT,
            day DATE NOT NULL,
            n_rows INT NOT NULL,
            bytes INT NOT NULL,
            body MEDIUMBLOB NULL,
            PRIMARY KEY (id, day),
            KEY archive_blob_day (day, bytes)) CHARACTER SET utf8mb4
            PARTITION BY RANGE COLUMNS(day) (PARTITION pmax VALUES LESS THAN (MAXVALUE))""",
        """CREATE TABLE IF NOT EXISTS {s}.archive (
            id BIGINT NOT NULL AUTO_INCREMENT,
            day DATE NOT NULL,
            date_handled DATETIME(6) NOT NULL,
            blob_id BIGINT NOT NULL,
            part INT NULL,
            message_id VARCHAR(255) NOT NULL,
            site VARCHAR(100) NULL,
            table_name VARCHAR(64) NULL,
            op CHAR(1) NULL,
            entity_uuid VARCHAR(38) NULL,
            patient_uuid VARCHAR(38) NULL,
            patient2_uuid VARCHAR(38) NULL,
            outcome VARCHAR(32) NOT NULL,
            reason VARCHAR(1000) NULL,
            reason_code VARCHAR(64) NULL,
            reason_args TEXT NULL,
            actor VARCHAR(100) NULL,
            PRIMARY KEY (id, day),
            KEY archive_entity (entity_uuid),
            KEY archive_patient (patient_uuid),
            KEY archive_patient2 (patient2_uuid),
            KEY archive_message (message_id),
            KEY archive_blob_of (blob_id)) CHARACTER SET utf8mb4
            PARTITION BY RANGE COLUMNS(day) (PARTITION pmax VALUES LESS THAN (MAXVALUE))""",
        """CREATE TABLE IF NOT EXISTS {s}.archive_pruned (
            why VARCHAR(16) NOT NULL PRIMARY KEY,
            n_rows BIGINT NOT NULL,
            bytes BIGINT NOT NULL,
            last_date DATETIME(6) NOT NULL) CHARACTER SET utf8mb4""",
    ],
    [  # 21: complex obs files (receiver/complex_files.py): the files written into central's folder, the chunks of
        # those still arriving, and the ones refused or in conflict
        """CREATE TABLE IF NOT EXISTS {s}.complex_file (
            site VARCHAR(100) NOT NULL,
            name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            sha256 CHAR(64) CHARACTER SET ascii NOT NULL,
            size BIGINT NOT NULL,
            state VARCHAR(16) NOT NULL,
            obs_uuid VARCHAR(38) NULL,
            date_created DATETIME(3) NOT NULL,
            date_changed DATETIME(3) NOT NULL,
            PRIMARY KEY (site, name),
            KEY complex_file_name (name),
            KEY complex_file_state (state)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.complex_file_chunk (
            site VARCHAR(100) NOT NULL,
            name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            sha256 CHAR(64) CHARACTER SET ascii NOT NULL,
            seq INT NOT NULL,
            chunks INT NOT NULL,
            size BIGINT NOT NULL,
            encoding VARCHAR(16) NOT NULL,
            repair VARCHAR(100) NULL,
            obs_uuid VARCHAR(38) NULL,
            data LONGBLOB NOT NULL,
            date_created DATETIME(3) NOT NULL,
            PRIMARY KEY (site, name, sha256, seq)) CHARACTER SET utf8mb4""",
        """CREATE TABLE IF NOT EXISTS {s}.complex_file_issue (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            site VARCHAR(100) NOT NULL,
            kind VARCHAR(16) NOT NULL,
            name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
            sha256 CHAR(64) CHARACTER SET ascii NULL,
            reason_code VARCHAR(64) NOT NULL,
            reason VARCHAR(2000) NOT NULL,
            times INT NOT NULL DEFAULT 1,
            date_first DATETIME(3) NOT NULL,
            date_last DATETIME(3) NOT NULL,
            UNIQUE KEY complex_file_issue_key (site, kind, name)) CHARACTER SET utf8mb4""",
    ],
    [  # 22: several receiver workers (--worker): which worker's consume stored each delivery (its slot number);
        # a site's rows another live worker consumed are left to it (worker_sites.py)
        "ALTER TABLE {s}.inbox ADD COLUMN worker SMALLINT NULL, ADD KEY inbox_site_worker (site, worker)",
    ],
]

#: migrations that move parked data between tables (14: bodies to receiver_retry_body): refused while another
#: process holds the applier lock (an older receiver parking a message between the copy and the DROP loses its body)
MOVES_DATA = frozenset({14})
#: how long a migration waits for another process migrating the same schema
MIGRATION_LOCK_SECONDS = 60

#: how long the per-minute samples of the console's charts are kept
SAMPLE_DAYS = 31

#: entity_hash.owner of a row central owns (no site identifier starts with "*": see SITE_IDENTIFIER)
CENTRAL_OWNER = "*central"
#: what `dbsync sites add` accepts as a site identifier (it is a broker header, a message id prefix and a suffix)
SITE_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class StateError(Exception):
    """Receiver state problem an operator must act on (one line)."""


class MigrationRefused(StateError):
    """A migration that must not run now: another receiver applies (or another process migrates); exit 13."""

    code = exitcodes.ANOTHER_RECEIVER


def schema_name(name: str) -> Sql:
    """The state schema, quoted, after checking it is a plain identifier (it comes from the configuration)."""
    if not _NAME.match(name):
        raise StateError(_("central_db.state_schema {name!r} is not a plain identifier").format(name=name))
    return quote(name)


def migrate(conn: Any, schema: str, openmrs_db: str | None = None, *, upto: int | None = None) -> int:
    """Create or upgrade the state schema (to version `upto`, default the newest); returns the version now in place.

    Each step may run again after a crash at any statement (MariaDB's DDL is not transactional, the version is
    recorded after the last step): steps look at information_schema before they change anything. One process
    migrates at a time (a server lock), and a migration that moves data is refused while another process holds the
    applier lock (MigrationRefused: stop the running receiver first)."""
    s = schema_name(schema)
    target = len(MIGRATIONS) if upto is None else upto
    with conn.cursor() as cur:
        cur.execute(sql("CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4", s))
        cur.execute(sql(str(MIGRATIONS[0][0]), s=s))  # schema_version itself
        current = _version(conn, cur, s)
        if current < target:
            with _migration_lock(cur, schema):
                current = _version(conn, cur, s)  # another process may have migrated while we waited
                for number in range(current + 1, target + 1):
                    with _applier_lock_free(cur, schema, number) if number in MOVES_DATA else _nothing():
                        for step in MIGRATIONS[number - 1]:
                            run_step(cur, s, schema, step)
                        cur.execute(sql("INSERT IGNORE INTO {}.schema_version (version, applied) VALUES (%s, %s)",
                                        s), (number, dt.datetime.now(dt.UTC).replace(tzinfo=None)))
                        conn.commit()
                    log.info("receiver state schema %s migrated to version %d", schema, number)
                    current = number
        if openmrs_db:
            _uuid_indexes(cur, openmrs_db)
    conn.commit()
    return current


def run_step(cur: Any, s: Sql, schema: str, step: Step) -> None:
    """One step of a migration (a test runs them one by one to stop a migration after any of them)."""
    if isinstance(step, str):
        cur.execute(sql(step, s=s))
    else:
        step(cur, s, schema)


def _version(conn: Any, cur: Any, s: Sql) -> int:
    conn.commit()  # a fresh read, not the snapshot of a transaction opened before another process migrated
    cur.execute(sql("SELECT COALESCE(MAX(version), 0) FROM {}.schema_version", s))
    (found,) = cur.fetchone() or (0,)
    conn.commit()
    return int(found)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _migration_lock(cur: Any, schema: str) -> Iterator[None]:
    """One migrating process per state schema (two would both add a column: the second fails)."""
    name = f"dbsync-migrate:{schema}"
    cur.execute("SELECT GET_LOCK(%s, %s)", (name, MIGRATION_LOCK_SECONDS))
    (got,) = cur.fetchone() or (0,)
    if got != 1:
        raise MigrationRefused(_("receiver state schema {schema!r}: another process has been migrating it for "
                                 "{seconds} s; try again when it has finished").format(
            schema=schema, seconds=MIGRATION_LOCK_SECONDS))
    try:
        yield
    finally:
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        cur.fetchall()


@contextmanager
def _applier_lock_free(cur: Any, schema: str, number: int) -> Iterator[None]:
    """Hold the applier lock (apply.Applier.claim's, taken at once or not at all) while migration `number` moves
    data: no receiver of any version writes meanwhile."""
    name = applier_lock(schema)
    cur.execute("SELECT GET_LOCK(%s, 0)", (name,))
    (got,) = cur.fetchone() or (0,)
    workers = running_workers(cur, schema) if got == 1 else []  # receiver workers take the gate only to start
    if got != 1 or workers:
        if workers:
            release(cur, name)
        cur.execute("SELECT IS_USED_LOCK(%s)", (name,))
        (holder,) = cur.fetchone() or (None,)
        holder = holder or ", ".join(str(w) for w in workers)
        raise MigrationRefused(_(
            "receiver state schema {schema!r} needs migration {number}, which moves parked messages, but another "
            "receiver (central connection {holder}) is applying to it: stop the running receiver (and any "
            "`dbsync apply` or console) first, then start this version").format(
            schema=schema, number=number, holder=holder))
    try:
        yield
    finally:
        cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
        cur.fetchall()


def _columns(cur: Any, schema: str, table: str) -> set[str]:
    cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (schema, table))
    return {str(row[0]).lower() for row in cur.fetchall()}


def _indexes(cur: Any, schema: str, table: str) -> set[str]:
    cur.execute("SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND "
                "TABLE_NAME = %s", (schema, table))
    return {str(row[0]).lower() for row in cur.fetchall()}


def alter_table(cur: Any, schema: str, table: str, *, drop: tuple[str, ...] = (),
                add: tuple[tuple[str, str], ...] = (), keys: tuple[tuple[str, str], ...] = ()) -> None:
    """One ALTER TABLE with only what is still to do: drop the columns present, add the columns and keys (name,
    column) missing; nothing when all is done (a migration run again after a crash)."""
    have, indexes = _columns(cur, schema, table), _indexes(cur, schema, table)
    parts = [sql("DROP COLUMN {}", quote(column)) for column in drop if column.lower() in have]
    parts += [sql("ADD COLUMN {} " + definition, quote(column)) for column, definition in add
              if column.lower() not in have]
    parts += [sql("ADD KEY {} ({})", quote(name), quote(column)) for name, column in keys
              if name.lower() not in indexes]
    if parts:
        cur.execute(sql("ALTER TABLE {} {}", quote(schema, table), join(parts)))


def add_column_if_missing(cur: Any, schema: str, table: str, column: str, definition: str) -> None:
    """ADD COLUMN unless it is there (a migration's step that may run twice)."""
    alter_table(cur, schema, table, add=((column, definition),))


def copy_column_if_present(cur: Any, schema: str, table: str, column: str, statement: str) -> None:
    """Run `statement` (which reads `table`.`column`) only while that column still exists: once a later step
    dropped it, what it copied is already where it belongs."""
    if column.lower() in _columns(cur, schema, table):
        cur.execute(sql(statement, s=schema_name(schema)))


def _uuid_indexes(cur: Any, database: str) -> None:
    for table in UUID_INDEX_TABLES:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s "
            "AND COLUMN_NAME='uuid' AND SEQ_IN_INDEX=1", (database, table))
        if cur.fetchone()[0] == 0:
            cur.execute("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA=%s AND TABLE_NAME=%s",
                        (database, table))
            if cur.fetchone()[0]:
                cur.execute(sql("CREATE INDEX dbsync_uuid ON {} (uuid)", quote(database, table)))
                log.info("added index dbsync_uuid on %s.%s(uuid) for uuid lookups", database, table)


@dataclass(frozen=True)
class Site:
    id: int
    name: str
    identifier: str
    date_created: dt.datetime
    disabled: bool
    broker_user: str | None = None  # the only broker user whose messages may speak for the site (None: any)
    adopt: bool = False  # its snapshot rows equal to central's unowned rows become its own (sites add --adopt)
    # when central's rows were recorded for its adoption (receiver/adopt_held.py); None: never (nothing is adopted)
    adopt_recorded: dt.datetime | None = None
    public_key: str | None = None  # `ed25519:…`: the key its bundles are signed with (sync by file)


def sites(conn: Any, schema: str) -> dict[str, Site]:
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT i.id, i.name, i.identifier, i.date_created, i.disabled, i.broker_user, i.adopt, "
                        "(SELECT MIN(a.date_recorded) FROM {}.adopt_table a WHERE a.site_id = i.id), i.public_key "
                        "FROM {}.site_info i", s, s))
        return {row[2]: Site(row[0], row[1], row[2], row[3], bool(row[4]), row[5], bool(row[6]), row[7],
                            row[8])
                for row in cur.fetchall()}


def add_site(conn: Any, schema: str, identifier: str, name: str | None = None,
             broker_user: str | None = None, adopt: bool = False, public_key: str | None = None) -> Site:
    """Register a site; `broker_user`: the broker user it sends as (its messages from any other are refused);
    `adopt`: central already has its data (loaded from its dump), so its initial snapshot adopts the rows central
    has unchanged instead of finding them central's own; `public_key`: the key its bundles are signed with."""
    if not SITE_IDENTIFIER.match(identifier):
        raise StateError(_("site identifier {site!r} must be 1-100 letters, digits, '_', '.' or '-', starting "
                           "with a letter or digit").format(site=identifier))
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT id FROM {}.site_info WHERE identifier=%s", s), (identifier,))
        if cur.fetchone():
            raise StateError(_("site {site!r} is already registered").format(site=identifier))
        cur.execute(sql("INSERT INTO {}.site_info (name, identifier, date_created, broker_user, adopt, public_key) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", s),
                    (name or identifier, identifier, dt.datetime.now(dt.UTC).replace(tzinfo=None), broker_user,
                     int(adopt), public_key))
        fix_changed(cur, s, site_cause(identifier))  # its parked messages are tried at once
    conn.commit()
    return sites(conn, schema)[identifier]


def update_site(conn: Any, schema: str, identifier: str, *, name: str | None = None,
                broker_user: str | None = None, any_broker_user: bool = False, adopt: bool | None = None,
                public_key: str | None = None) -> Site:
    """Change a registered site's display name or broker user (sites registered before broker users were
    recorded have none: their messages are taken from any broker user until this sets one)."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        if identifier not in sites(conn, schema):
            raise StateError(_("site {site!r} is not registered").format(site=identifier))
        if name is not None:
            cur.execute(sql("UPDATE {}.site_info SET name=%s WHERE identifier=%s", s), (name, identifier))
        if broker_user is not None or any_broker_user:
            cur.execute(sql("UPDATE {}.site_info SET broker_user=%s WHERE identifier=%s", s),
                        (None if any_broker_user else broker_user, identifier))
        if adopt is not None:
            cur.execute(sql("UPDATE {}.site_info SET adopt=%s WHERE identifier=%s", s), (int(adopt), identifier))
        if public_key is not None:
            cur.execute(sql("UPDATE {}.site_info SET public_key=%s WHERE identifier=%s", s), (public_key, identifier))
        fix_changed(cur, s, site_cause(identifier))  # e.g. its broker user fixed: its refused messages are tried
    conn.commit()
    return sites(conn, schema)[identifier]


def set_disabled(conn: Any, schema: str, identifier: str, disabled: bool) -> None:
    with conn.cursor() as cur:
        cur.execute(sql("UPDATE {}.site_info SET disabled=%s WHERE identifier=%s", schema_name(schema)),
                    (int(disabled), identifier))
        if cur.rowcount == 0 and identifier not in sites(conn, schema):
            raise StateError(_("site {site!r} is not registered").format(site=identifier))
        if not disabled:
            fix_changed(cur, schema_name(schema), site_cause(identifier))
    conn.commit()


def remove_site(conn: Any, schema: str, identifier: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql("DELETE FROM {}.site_info WHERE identifier=%s", schema_name(schema)), (identifier,))
        if cur.rowcount == 0:
            raise StateError(_("site {site!r} is not registered").format(site=identifier))
    conn.commit()


# ---- fix epochs of the retry queue: what can fix a parked entry ------------------------------------------
def site_cause(identifier: str) -> str:
    """The cause of entries a site's registration, enabling or broker user can fix (refused messages)."""
    return f"site:{identifier}"[:160]


#: the family of causes central's schema or the receiver's settings can fix (malformed here, cross-site): one cause
#: per kind of reason, `central:<code>` (central_cause), all made due when that schema or those settings change
CENTRAL_CAUSE = "central"


def central_cause(reason: str | None) -> str:
    """The cause of an entry central's schema or settings can fix, one per reason code: a malformed message whose
    representative keeps failing never holds a cross-site one (another code) waiting behind it."""
    code = getattr(reason, "code", None) or "other"
    return f"{CENTRAL_CAUSE}:{code}"[:160]


def _cause_match(cause: str) -> tuple[Sql, tuple[str, ...]]:
    """SQL matching the entries of `cause`; CENTRAL_CAUSE matches its whole family (and rows parked with the bare
    family name before causes were per reason)."""
    if cause == CENTRAL_CAUSE:
        return sql("(cause = %s OR cause LIKE %s)"), (cause, f"{cause}:%")
    return sql("cause = %s"), (cause[:160],)


def fix_changed(cur: Any, s: Sql, cause: str, fingerprint: str | None = None) -> int:
    """Something that can fix entries of `cause` changed: move its epoch and make those entries due now (the one
    write they get for it). Returns how many entries became due."""
    cur.execute(sql("INSERT INTO {}.receiver_fix_epoch (cause, epoch, fingerprint, date_changed) VALUES "
                    "(%s, 1, %s, %s) ON DUPLICATE KEY UPDATE epoch = epoch + 1, fingerprint = VALUES(fingerprint), "
                    "date_changed = VALUES(date_changed)", s),
                (cause[:160], fingerprint, dt.datetime.now(dt.UTC).replace(tzinfo=None)))
    match, values = _cause_match(cause)
    cur.execute(sql("UPDATE {}.receiver_retry_queue SET next_attempt = NULL WHERE {} AND next_attempt IS NOT NULL",
                    s, match), values)
    cur.execute(sql("DELETE FROM {}.receiver_retry_cause WHERE {}", s, match), values)  # its schedules
    cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_queue WHERE {}", s, match), values)
    return int((cur.fetchone() or (0,))[0])


def fingerprint_changed(conn: Any, schema: str, cause: str, fingerprint: str) -> int:
    """Record `fingerprint` (e.g. of central's schema) for `cause`; when it differs from the one stored, the
    cause's entries become due now. Returns how many."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT fingerprint FROM {}.receiver_fix_epoch WHERE cause = %s", s), (cause,))
        row = cur.fetchone()
        due = fix_changed(cur, s, cause, fingerprint) if row is None or row[0] != fingerprint else 0
    conn.commit()
    return due


def last_sync_dates(conn: Any, schema: str) -> dict[int, dt.datetime]:
    """When each site (by id) last had a message applied."""
    with conn.cursor() as cur:
        cur.execute(sql("SELECT site_id, last_sync_date FROM {}.receiver_sync_status", schema_name(schema)))
        return {int(row[0]): row[1] for row in cur.fetchall()}


def skipped(conn: Any, schema: str) -> dict[str, dict[str, int]]:
    """Messages apply did not apply, per site and reason (duplicate, stale, central_owned), since the state schema
    was made."""
    found: dict[str, dict[str, int]] = {}
    for (site, reason, _table), count in skipped_by_table(conn, schema).items():
        found.setdefault(site, {})[reason] = found.get(site, {}).get(reason, 0) + count
    return found


def skipped_by_table(conn: Any, schema: str, reason: str | None = None) -> dict[tuple[str, str, str], int]:
    """(site, reason, table) → messages not applied ('' as table where it was not recorded)."""
    where = sql(" WHERE reason = %s") if reason else sql("")
    with conn.cursor() as cur:
        cur.execute(sql("SELECT site, reason, table_name, count FROM {}.receiver_skipped{} ORDER BY site, reason, "
                        "table_name", schema_name(schema), where), (reason,) if reason else ())
        return {(row[0], row[1], row[2]): int(row[3]) for row in cur.fetchall()}


def prune_applied(conn: Any, schema: str, keep_days: int, limit: int = 50_000) -> int:
    """Forget handled message ids older than `keep_days`: a redelivery older than that is judged by the entity hash
    and dates instead (stale changes are skipped), so the table stays small whatever the history."""
    cutoff = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=keep_days)
    with conn.cursor() as cur:
        cur.execute(sql("DELETE FROM {}.applied_message WHERE date_applied < %s LIMIT %s", schema_name(schema)),
                    (cutoff, limit))
        removed = cur.rowcount
    conn.commit()
    return removed


def record_samples(conn: Any, schema: str) -> None:
    """One sample of every site's applied messages, inbox rows and retry entries (the console draws them)."""
    s = schema_name(schema)
    with conn.cursor() as cur:
        cur.execute(sql("SELECT site, COALESCE(SUM(n_rows), 0) FROM {}.inbox GROUP BY site", s))
        inbox = {site: int(n) for site, n in cur.fetchall()}
        cur.execute(sql("SELECT site, COUNT(*) FROM {}.receiver_retry_queue GROUP BY site", s))
        retry = {site: int(n) for site, n in cur.fetchall()}
        cur.execute(sql("SELECT i.identifier, COALESCE(r.messages, 0) FROM {}.site_info i "
                        "LEFT JOIN {}.receiver_sync_status r ON r.site_id = i.id", s, s))
        rows = [(site, int(messages), inbox.get(site, 0), retry.get(site, 0)) for site, messages in cur.fetchall()]
        at = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
        for site, messages, waiting, retrying in rows:
            cur.execute(sql("INSERT INTO {}.receiver_sample (site, date_sampled, messages, inbox, retry) VALUES "
                            "(%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE messages = VALUES(messages), "
                            "inbox = VALUES(inbox), retry = VALUES(retry)", s), (site, at, messages, waiting, retrying))
        cur.execute(sql("DELETE FROM {}.receiver_sample WHERE date_sampled < %s", s),
                    (at - dt.timedelta(days=SAMPLE_DAYS),))
    conn.commit()


def samples(conn: Any, schema: str, site: str, since: dt.datetime) -> list[tuple[dt.datetime, int, int, int]]:
    with conn.cursor() as cur:
        cur.execute(sql("SELECT date_sampled, messages, inbox, retry FROM {}.receiver_sample WHERE site = %s AND "
                        "date_sampled >= %s ORDER BY date_sampled", schema_name(schema)), (site, since))
        found = [(d, int(m), int(i), int(r)) for d, m, i, r in cur.fetchall()]
    conn.commit()
    return found
