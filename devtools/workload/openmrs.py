"""Create a test OpenMRS database: the real 2.5 schema dump plus the shared metadata fixture.

Loaded through PyMySQL with multi-statements (≈0.6 s for the 128-table dump): no client binary, no password file.
"""

from __future__ import annotations

import re
from pathlib import Path

from pymysql.constants import CLIENT

from dbsync_cli.db import DbParams
from devtools.workload.metadata import metadata_sql

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"  # devtools runs from a checkout only
SCHEMA_SQL = FIXTURES / "openmrs-2.5-schema.sql"
METADATA_SQL = FIXTURES / "openmrs-metadata.sql"
_DB_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def run_sql_script(params: DbParams, sql: str) -> None:
    """Execute a whole script in one round trip (the dump's statements are plain `;`-terminated)."""
    conn = params.connect(client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            while cur.nextset():
                pass
    finally:
        conn.close()


def load_openmrs(admin: DbParams, database: str, *, metadata: bool = True, schema_sql: Path | None = None) -> DbParams:
    """Create `database` (must not exist), load the schema and, unless disabled, the metadata; return its params."""
    if not _DB_NAME.match(database):
        raise ValueError(f"unsafe database name: {database!r}")
    conn = admin.with_database(None).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    target = admin.with_database(database)
    script = (schema_sql or SCHEMA_SQL).read_text(encoding="utf-8")
    if metadata:
        # the committed fixture file is what other tools load; fall back to the generator if it is missing
        script += "\n" + (METADATA_SQL.read_text(encoding="utf-8") if METADATA_SQL.exists() else metadata_sql())
    run_sql_script(target, script)
    return target
