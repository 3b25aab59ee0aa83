"""The receiver's own `config check` steps on its central DB connection: the state schema and the sites."""

from __future__ import annotations

from typing import Any

import pymysql

from dbsync_cli import exitcodes
from dbsync_cli.checks import ERROR, OK, WARNING, Finding, Step
from dbsync_cli.config import Config
from dbsync_cli.receiver import state


def state_schema(conn: Any, cfg: Config) -> list[Finding]:
    schema = cfg["central_db.state_schema"]
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,))
        exists = cur.fetchone()[0] > 0
    if not exists:
        return [Finding("central_db.state_schema", WARNING, f"{schema!r} does not exist yet: the receiver (or "
                                                            "`dbsync sites add`) creates it")]
    try:
        sites = state.sites(conn, schema)
    except pymysql.MySQLError as exc:
        return [Finding("central_db.state_schema", ERROR, f"cannot read {schema}.site_info: {exc.args[-1]}",
                        exitcodes.PRIVILEGES)]
    if not sites:
        return [Finding("sites", WARNING, "no sites registered: every message waits in the retry queue until "
                                          "`dbsync sites add`")]
    return [Finding("sites", OK, f"{len(sites)} site(s) registered")]


STEPS: list[Step] = [state_schema]
