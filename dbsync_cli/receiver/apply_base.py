"""What the parts of apply share: its settings and the state an Applier holds (apply.py builds it; apply_judge.py,
apply_park.py and apply_row.py are the parts, each one job, joined by class inheritance into apply.Applier)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from dbsync_cli.config_model import DEFAULTS
from dbsync_cli.db import DbParams
from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.receiver import bookkeeping, state
from dbsync_cli.receiver.adopt_held import HeldRows
from dbsync_cli.receiver.current_rows import (
    ROW_LOCK_WAIT_SECONDS,
    CurrentRows,
)
from dbsync_cli.receiver.inserts import GroupedInserts
from dbsync_cli.receiver.resolve import (
    Converter,
    UuidToId,
)
from dbsync_cli.sql import Sql, StatementCache


@dataclass
class ApplySettings:
    central: DbParams  # database = the central OpenMRS schema
    # defaults: the config model's (config_model.DEFAULTS), never literals of their own
    state_schema: str = DEFAULTS.central_db.state_schema
    timezone: str = DEFAULTS.receiver.timezone
    conflict_policy: str = DEFAULTS.receiver.conflict_policy  # newer | any
    central_rows: str = DEFAULTS.receiver.central_rows  # skip | park: a site's change to a row central owns
    cross_site_changes: str = DEFAULTS.receiver.cross_site_changes  # refuse | allow: a row another site created
    batch_messages: int = DEFAULTS.receiver.batch_messages
    max_message_bytes: int = DEFAULTS.broker.max_message_bytes
    rest_enabled: bool = False
    consecutive_keys: bool = True  # take new keys from a grouped INSERT when the server makes them consecutive
    insert_returning: bool = True  # the set path reads new keys and hashes back with INSERT … RETURNING (MariaDB)
    future_tolerance_seconds: int = DEFAULTS.receiver.future_tolerance_seconds  # later than central's clock: no win
    row_lock_wait_seconds: int = ROW_LOCK_WAIT_SECONDS  # innodb_lock_wait_timeout of apply's session
    archive_days: int = DEFAULTS.receiver.archive_days  # 0: no archive of handled messages (receiver/archive.py)
    complex_obs: bool = False  # receiver.complex_obs_dir is set: an obs waits for its file (complex_files.py)
    set_apply: bool = DEFAULTS.receiver.set_apply  # plain rows written set-based (set_apply.py) before the rest


class ApplierBase:
    """The attributes apply.Applier.__init__ sets, declared for the parts that use them."""

    _clock: tuple[dt.datetime, float] | None = None  # central's UTC clock read at a monotonic time (_central_now)
    #: who decides the outcomes being written (an operator's action: the console user or the CLI's); None: the receiver
    actor: str | None = None
    _future_logged: frozenset[str] = frozenset()  # sites whose future-dated changes were logged once
    settings: ApplySettings
    model: SchemaModel
    s: Sql
    conn: Any
    ids: UuidToId
    statements: StatementCache
    convert: Converter
    sites: dict[str, state.Site]
    blocked: set[str]
    inserts: GroupedInserts
    rows: CurrentRows
    held_rows: HeldRows
    _grouping: bool
    _synced: dict[tuple[str, str], bookkeeping.Synced] | None
    _built_ins: set[str] | None
