"""The central rows apply judges, read under a row lock that the batch's transaction holds until it commits.

Apply judges an incoming change against central's current row (the conflict rule) and then writes it. Both must
see one row: a central edit that commits between them would be overwritten with no conflict. So the rows a batch
may judge are read with ``SELECT … FOR UPDATE`` (one statement per table and 1,000 keys, in the batch's first
moments), and a row read later (a second message for it, the retry queue, a conflict resolution) is read the
same way. A central edit is then either committed before the read (judged: parked or applied by the rule), or it
waits for the batch's commit and is a later edit (the next change from the site finds the row edited centrally).

Deadlock safety: apply's session runs READ COMMITTED, where a locking read takes record locks on the rows it
finds and no gap or next-key locks (InnoDB keeps those for foreign key and duplicate key checks), so a key that
does not exist locks nothing and OpenMRS's inserts are never held up. Tables are locked in name order and keys
in ascending order within one statement, so dbsync's own transactions (apply, retry, conflict resolution) take
them in one global order. An OpenMRS transaction may still lock two of the rows the other way round: the server
detects the cycle at once and rolls one transaction back whole; when that is apply's (it holds only locks at that
point, so it is usually the lighter one), `deadlock` tells the caller to retry the whole batch, never to park a
message for it. A lock wait timeout (a central transaction holding a row for longer than ROW_LOCK_WAIT_SECONDS, e.g. an
OpenMRS connection left in a transaction) says something about one row only: the batch is replayed message by
message without the up-front lock, and the one message whose row stays locked is parked for the retry queue while
every other message applies. One held row never stops every site.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pymysql
import pymysql.cursors
from pymysql.constants import ER

from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.receiver.conflict import hash_sql, select_with_hash
from dbsync_cli.sql import StatementCache, chunks, placeholders, quote, sql

#: MySQL/MariaDB errors of a lock conflict with another transaction: deadlock (1213, the whole transaction was
#: rolled back) and lock wait timeout (1205). Both are cured by retrying the batch, never by parking a message.
LOCK_CONFLICT_CODES = frozenset({ER.LOCK_DEADLOCK, ER.LOCK_WAIT_TIMEOUT})
#: how long apply waits for a row another central transaction holds (innodb_lock_wait_timeout of its session)
ROW_LOCK_WAIT_SECONDS = DEFAULTS.receiver.row_lock_wait_seconds  # receiver.row_lock_wait_seconds
#: how often apply retries a batch that lost a lock conflict before it gives up (the error then ends the run;
#: the receiver's supervision restarts it and the inbox still holds the batch)
LOCK_RETRIES = 8


def lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.MySQLError) and bool(exc.args) and exc.args[0] in LOCK_CONFLICT_CODES


def deadlock(exc: BaseException) -> bool:
    """The server rolled the whole transaction back (savepoints included): only a retry of all of it helps."""
    return isinstance(exc, pymysql.MySQLError) and bool(exc.args) and exc.args[0] == ER.LOCK_DEADLOCK


def backoff(attempt: int) -> float:
    """Seconds before retry `attempt` (1, 2, …) of a batch that lost a lock conflict."""
    return float(min(0.05 * 2 ** attempt, 3.0))


class CurrentRows:
    """Central's current rows (with their hash) for the conflict rule, locked until the transaction ends."""

    def __init__(self, conn: Any, model: SchemaModel, statements: StatementCache) -> None:
        self.conn = conn
        self.model = model
        self.statements = statements
        self._rows: dict[tuple[str, Any], dict[str, Any]] | None = None  # read for the batch, each used once

    def lock(self, keys: Mapping[str, Iterable[Any]]) -> None:
        """Read and lock the existing rows of these keys per table, for the batch that starts."""
        self._rows = {}
        for name in sorted(keys):
            key_column = self.model.synced[name].key
            for row in self.by_key(name, sorted(set(keys[name])), lock=True):
                self._rows[(name, row[key_column])] = row

    def peek(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row as the batch's read found it (None: not found, or not read), left for `current` (set_apply.py
        judges with it whether a change needs the per-row path)."""
        return self._rows.get((table, key)) if self._rows is not None else None

    def reset(self) -> None:
        """The batch ended (its commit or rollback released the locks)."""
        self._rows = None

    def current(self, table: SyncedTable, key: Any) -> dict[str, Any] | None:
        """The row as it is now (None: there is none), locked: first the batch's read, each row once (a message may
        change it), then a locking read of its own."""
        if self._rows is not None:
            row = self._rows.pop((table.name, key), None)
            if row is not None:
                return row
        with self.conn.cursor(pymysql.cursors.DictCursor) as dcur:
            dcur.execute(self.statements.get(("current", table.name), lambda: sql(
                "{} WHERE {} = %s FOR UPDATE", select_with_hash(table), quote(table.key))), (key,))
            found: dict[str, Any] | None = dcur.fetchone()
            return found

    def by_key(self, table: str, keys: list[Any], *, whole: bool = True, lock: bool = False) -> Iterator[Any]:
        """Central rows by primary key with their hash, 1,000 per query: whole (dicts) or (key, hash) tuples;
        `lock`: read with FOR UPDATE, in ascending key order (give the keys sorted)."""
        info = self.model.synced[table]
        select = select_with_hash(info) if whole else sql("SELECT {}, {} FROM {}", quote(info.key), hash_sql(info),
                                                          quote(table))
        locking = sql(" ORDER BY {} FOR UPDATE", quote(info.key)) if lock else sql("")
        with self.conn.cursor(pymysql.cursors.DictCursor if whole else pymysql.cursors.Cursor) as dcur:
            for part in chunks(keys):
                dcur.execute(sql("{} WHERE {} IN ({}){}", select, quote(info.key), placeholders(len(part)), locking),
                             part)
                yield from dcur.fetchall()
