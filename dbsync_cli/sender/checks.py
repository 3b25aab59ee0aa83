"""The sender's own `config check` steps on its site DB connection: grants, binlog settings, server id."""

from __future__ import annotations

import re
from typing import Any

from dbsync_cli import exitcodes
from dbsync_cli.checks import ERROR, OK, WARNING, Finding, Step
from dbsync_cli.config import Config
from dbsync_cli.sender.binlog import CaptureStop, check_settings

_WRITES = ("INSERT", "UPDATE", "DELETE", "ALL PRIVILEGES", "DROP", "ALTER", "CREATE", "SUPER")


def _privileges(conn: Any) -> tuple[set[str], set[str]]:
    """(global privileges, privileges on the configured database) of the current user, from SHOW GRANTS."""
    glob: set[str] = set()
    local: set[str] = set()
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        (database,) = cur.fetchone()
        cur.execute("SHOW GRANTS")
        for (grant,) in cur.fetchall():
            match = re.match(r"GRANT (.+?) ON (\S+) TO ", str(grant))
            if not match or match.group(1).startswith("PROXY"):
                continue
            privileges = {p.strip().upper() for p in match.group(1).split(",")}
            target = match.group(2).replace("`", "")
            if target == "*.*":
                glob |= privileges
            elif database and target in (f"{database}.*",):
                local |= privileges
    return glob, local


def grants(conn: Any, _cfg: Config) -> list[Finding]:
    glob, local = _privileges(conn)
    everything = "ALL PRIVILEGES" in glob
    missing = [p for p, ok in (
        ("SELECT", everything or "SELECT" in glob | local),
        ("REPLICATION SLAVE", everything or "REPLICATION SLAVE" in glob or "REPLICATION REPLICA" in glob),
        ("BINLOG MONITOR or REPLICATION CLIENT", everything or bool(
            {"BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"} & glob)),
    ) if not ok]
    writes = sorted(p for p in glob | local if p in _WRITES)
    found = []
    if missing:
        found.append(Finding("site_db.grants", ERROR, f"the sender's user lacks {', '.join(missing)} (GRANT SELECT, "
                                                      "REPLICATION SLAVE, BINLOG MONITOR ON *.* TO …)",
                             exitcodes.PRIVILEGES))
    if writes:
        found.append(Finding("site_db.grants", ERROR, f"the sender's user can write ({', '.join(writes)}): it only "
                                                      "reads; give it SELECT, REPLICATION SLAVE, BINLOG MONITOR",
                             exitcodes.PRIVILEGES))
    return found or [Finding("site_db.grants", OK, "SELECT, replication and binlog monitoring, no writes")]


def binlog(conn: Any, cfg: Config) -> list[Finding]:
    try:
        check_settings(conn)
    except CaptureStop as exc:
        return [Finding("binlog", ERROR, str(exc), exc.code)]
    with conn.cursor() as cur:
        cur.execute("SELECT @@binlog_expire_logs_seconds, @@expire_logs_days")
        seconds, days = cur.fetchone()
    retention = float(seconds or 0) or float(days or 0) * 86400
    minimum = cfg["sender.min_binlog_retention_hours"] * 3600
    found = [Finding("binlog", OK, "log_bin ON, binlog_format ROW, binlog_row_image FULL, binlog_row_metadata FULL")]
    if retention and minimum and retention < minimum:
        found.append(Finding("binlog.retention", WARNING, f"binlogs are kept {retention / 3600:.1f} h, less than "
                                                          f"sender.min_binlog_retention_hours "
                                                          f"({minimum / 3600:.0f} h)"))
    return found


def server_id(conn: Any, cfg: Config) -> list[Finding]:
    ours = cfg["sender.server_id"]
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        (server,) = cur.fetchone()
    if int(server) == int(ours):
        return [Finding("sender.server_id", ERROR, f"{ours} is the site server's own server_id: the binlog reader "
                                                   "needs an id no server or replica uses", exitcodes.CONFIG)]
    return [Finding("sender.server_id", OK, f"{ours} differs from the server's ({server})")]


STEPS: list[Step] = [grants, binlog, server_id]
