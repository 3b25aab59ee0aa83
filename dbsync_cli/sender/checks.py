"""The sender's own `config check` steps on its site DB connection: grants, binlog settings, server id."""

from __future__ import annotations

import fcntl
from typing import Any

import pymysql

from dbsync_cli import exitcodes
from dbsync_cli.checks import ERROR, OK, SKIPPED, WARNING, Finding, Step, privileges
from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.sender.binlog import REPORT_HOST, CaptureStop, check_settings, row_metadata

_WRITES = ("INSERT", "UPDATE", "DELETE", "ALL PRIVILEGES", "DROP", "ALTER", "CREATE", "SUPER")


def grants(conn: Any, cfg: Config) -> list[Finding]:
    glob, local = privileges(conn, cfg["site_db.database"])
    everything = "ALL PRIVILEGES" in glob
    missing = [p for p, ok in (
        ("SELECT", everything or "SELECT" in glob | local),
        ("REPLICATION SLAVE", everything or "REPLICATION SLAVE" in glob or "REPLICATION REPLICA" in glob),
        ("BINLOG MONITOR or REPLICATION CLIENT", everything or bool(
            {"BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"} & glob)),
    ) if not ok]
    if cfg["sender.purge_binlogs"] and not (everything or {"BINLOG ADMIN", "BINLOG_ADMIN", "SUPER"} & glob):
        missing.append("BINLOG ADMIN (for sender.purge_binlogs)")
    writes = sorted(p for p in glob | local if p in _WRITES)
    found = []
    if missing:
        found.append(Finding("site_db.grants", ERROR, _("the sender's user lacks {missing} (GRANT SELECT, REPLICATION SLAVE, "
                                                        "BINLOG MONITOR ON *.* TO …)").format(missing=", ".join(missing)),
                             exitcodes.PRIVILEGES))
    if writes:
        found.append(Finding("site_db.grants", ERROR, _("the sender's user can write ({writes}): it only reads; give it "
                                                        "SELECT, REPLICATION SLAVE, BINLOG MONITOR").format(
            writes=", ".join(writes)),
                             exitcodes.PRIVILEGES))
    return found or [Finding("site_db.grants", OK, _("SELECT, replication and binlog monitoring, no writes"))]


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
    metadata = row_metadata(conn)
    found = [Finding("binlog", OK, _("log_bin ON, binlog_format ROW, binlog_row_image FULL, binlog_row_metadata "
                                     "{metadata}").format(metadata=metadata))]
    if metadata != "FULL":
        found.append(Finding("binlog.row_metadata", WARNING, _("binlog_row_metadata {metadata}: row events carry no "
                             "column names, so the sender names them from its schema history; a table altered "
                             "twice while the sender is behind stops it (exit 11). FULL (MariaDB 10.5+, MySQL 8) "
                             "avoids that").format(metadata=metadata)))
    if retention and minimum and retention < minimum:
        found.append(Finding("binlog.retention", WARNING, _("binlogs are kept {hours:.1f} h, less than "
                                                            "sender.min_binlog_retention_hours ({minimum:.0f} h)")
                             .format(hours=retention / 3600, minimum=minimum / 3600)))
    return found


def server_id(conn: Any, cfg: Config) -> list[Finding]:
    """The reader's id must be unique among the server and its replicas: the server disconnects one of two readers
    with one id (MariaDB 4052), so a clash is an endless reconnect fight with a real replica."""
    ours = int(cfg["sender.server_id"])
    key = "sender.server_id"
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        (server,) = cur.fetchone()
    if int(server) == ours:
        return [Finding(key, ERROR, _("{id} is the site server's own server_id: the binlog reader needs an id no "
                                      "server or replica uses").format(id=ours), exitcodes.CONFIG)]
    try:
        replicas = _replicas(conn)
    except pymysql.MySQLError as exc:
        return [Finding(key, OK, _("{id} differs from the server's ({server})").format(id=ours, server=server)),
                Finding("sender.server_id.replicas", SKIPPED, _(
                    "replicas not listed (SHOW SLAVE HOSTS: {error}); grant REPLICATION MASTER ADMIN (MariaDB) to "
                    "check them too").format(error=exc.args[-1]))]
    clash = [host for sid, host in replicas if sid == ours]
    if clash and not (clash == [REPORT_HOST] and _home_reading(cfg)):
        return [Finding(key, ERROR, _("{id} is used by a replica of the site server already (registered as "
                                      "{host}): pick an id no server or replica uses").format(
            id=ours, host=clash[0] or _("an unnamed host")),
                        exitcodes.CONFIG)]
    others = len([sid for sid, _host in replicas if sid != ours])
    return [Finding(key, OK, _("{id} differs from the server's ({server}) and from its {others} other replica(s)")
                    .format(id=ours, server=server, others=others))]


def _replicas(conn: Any) -> list[tuple[int, str]]:
    """(server id, registered host) of each replica the server knows (SHOW REPLICAS on MySQL 8.0.22+)."""
    with conn.cursor() as cur:
        try:
            cur.execute("SHOW SLAVE HOSTS")
        except pymysql.err.ProgrammingError:
            cur.execute("SHOW REPLICAS")
        names = [d[0].lower() for d in cur.description or ()]
        rows = cur.fetchall()
    sid, host = names.index("server_id"), names.index("host")
    return [(int(row[sid]), str(row[host] or "")) for row in rows]


def _home_reading(cfg: Config) -> bool:
    """This home's own sender reads the binlog now (it holds the reader lock), so the registered id is its own."""
    path = cfg.home / "binlog-reader.lock"
    if not path.exists():
        return False
    try:
        with path.open("r") as handle:
            try:  # shared: a sender starting meanwhile is refused only for this instant, not by a held lock
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False
    except OSError:  # another OS user's home: it cannot be told, so the clash stands
        return False


def clock(conn: Any, cfg: Config) -> list[Finding]:
    """The site server's clock against this host's (keep the sender on the site's network, both on NTP): a server
    ahead dates the site's changes in central's future."""
    from dbsync_cli.sender.clock import measure
    from dbsync_cli.sender.status import clock_problem

    limit = int(cfg["status.clock_skew_warning_seconds"])
    skew = measure(conn)
    if limit and abs(skew) >= limit:
        return [Finding("site_db.clock", WARNING, clock_problem(skew) + " " + _(
            "(status.clock_skew_warning_seconds = {limit})").format(limit=limit))]
    return [Finding("site_db.clock", OK, _("the site server's clock is {skew:+.1f} s off this host's (within "
                                           "{limit} s)").format(skew=skew, limit=limit))]


STEPS: list[Step] = [grants, binlog, server_id, clock]
