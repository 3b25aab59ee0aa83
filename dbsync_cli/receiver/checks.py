"""The receiver's own `config check` steps on its central DB connection: the state schema and the sites."""

from __future__ import annotations

from typing import Any

import pymysql

from dbsync_cli import exitcodes
from dbsync_cli.checks import ERROR, OK, WARNING, Finding, Step, privileges, table_grants
from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.receiver import state

#: what the receiver does on the OpenMRS schema (upsert, delete, placeholders) and on its own state schema
OPENMRS_NEEDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
STATE_NEEDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER", "INDEX")


def grants(conn: Any, cfg: Config) -> list[Finding]:
    found = []
    for database, needs, advice in (
            (cfg["central_db.database"], OPENMRS_NEEDS, "SELECT, INSERT, UPDATE, DELETE"),
            (cfg["central_db.state_schema"], STATE_NEEDS, "ALL PRIVILEGES")):
        glob, local = privileges(conn, database)
        have = glob | local
        missing = [] if "ALL PRIVILEGES" in have else [p for p in needs if p not in have]
        if missing and table_grants(conn, database):
            found.append(Finding("central_db.grants", WARNING, _("{database}: the receiver's user is granted table by table; not "
                                                                 "checked (it needs {advice} on every synced "
                                                                 "table)").format(database=database, advice=advice)))
        elif missing:
            found.append(Finding("central_db.grants", ERROR, _("the receiver's user lacks {missing} on {database} (GRANT {advice} "
                                                               "ON {database}.* TO …)").format(
                missing=", ".join(missing), database=database, advice=advice),
                                 exitcodes.PRIVILEGES))
    return found or [Finding("central_db.grants", OK, _("read and write on the OpenMRS schema, all on the state "
                                                        "schema"))]


def state_schema(conn: Any, cfg: Config) -> list[Finding]:
    schema = cfg["central_db.state_schema"]
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,))
        exists = cur.fetchone()[0] > 0
    if not exists:
        return [Finding("central_db.state_schema", WARNING, _("{schema!r} does not exist yet: the receiver (or "
                                                              "`dbsync sites add`) creates it").format(schema=schema))]
    try:
        sites = state.sites(conn, schema)
    except pymysql.MySQLError as exc:
        return [Finding("central_db.state_schema", ERROR, _("cannot read {schema}.site_info: {error}").format(
            schema=schema, error=exc.args[-1]),
                        exitcodes.PRIVILEGES)]
    if not sites:
        return [Finding("sites", WARNING, _("no sites registered: every message waits in the retry queue until "
                                            "`dbsync sites add`"))]
    return [Finding("sites", OK, _("{count} site(s) registered").format(count=len(sites)))]


def enabled_sites(cfg: Config) -> list[str]:
    """The sites central answers over the broker (their reply and request queues: `config check` tries its
    permissions there); none when the state schema cannot be read (its own check says why)."""
    try:
        conn = cfg.db("central_db").connect(connect_timeout=5, read_timeout=30)
    except pymysql.MySQLError:
        return []
    try:
        return sorted(name for name, site in state.sites(conn, cfg["central_db.state_schema"]).items()
                      if not site.disabled)
    except pymysql.MySQLError:
        return []
    finally:
        conn.close()


STEPS: list[Step] = [grants, state_schema]
