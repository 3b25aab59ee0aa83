"""Central's record of complex obs files: which file each site's obs may name, and what the file lane refused.

`complex_file` holds one row per (site, file name) dbsync wrote into central's folder (state `received`), or that a
synced delete of its obs asked to remove (`purge`, then `removed` once the file is gone: OpenMRS's purgeObs removes
the file through its handler's purgeComplexData; voiding keeps it, so a voided obs changes nothing here).
An obs that names a file of its site that is not `received` yet waits in the retry queue with the cause
`file:<site>:<name>`; the file lane makes that cause due the moment the file is in place (state.fix_changed).
`complex_file_issue` counts, per site, kind and name, the files refused (a name that leaves the folder, a chunk
that fails its digest, a sender that may not speak for the site) and the conflicts (a name central holds with
other bytes): `dbsync status` shows them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path
from typing import Any

from dbsync_cli import complex_obs
from dbsync_cli.receiver import reasons, state
from dbsync_cli.sql import Sql, sql

log = logging.getLogger("dbsync.files")

RECEIVED, PURGE, REMOVED, GONE = "received", "purge", "removed", "gone"
REFUSED, CONFLICT = "refused", "conflict"
CAUSE_PREFIX = "file:"
SWEEP_LIMIT = 100


def cause(site: str, name: str) -> str:
    """The retry cause of obs rows waiting for this file (a long name by its digest: the column holds 160)."""
    text = f"{CAUSE_PREFIX}{site}:{name}"
    if len(text) <= 160:
        return text
    return f"{CAUSE_PREFIX}{site[:100]}:#" + hashlib.blake2b(name.encode("utf-8", "surrogatepass"),
                                                             digest_size=16).hexdigest()


class FileWaiting(Exception):  # noqa: N818 - a verdict, like MissingReference
    """An obs names a file of its site that is not in central's folder yet: park it until the file lane has it."""

    def __init__(self, why: reasons.Reason, cause: str) -> None:
        super().__init__(str(why))
        self.why, self.cause = why, cause


def check_obs(cur: Any, s: Sql, site: str, uuid: str, data: dict[str, Any],
              current: dict[str, Any] | None) -> reasons.Reason | None:
    """Before an obs row is written: the file it names (when the row is new or names another file than central's
    row) must be in place. Raises FileWaiting, or returns a refusal reason for a name that leaves the folder."""
    value = data.get(complex_obs.COLUMN)
    name = complex_obs.file_name(value)
    if name is None or (current is not None and current.get(complex_obs.COLUMN) == value):
        return None
    why = complex_obs.refusal(name)
    if why is not None:
        return reasons.reason("file_name_refused", name=complex_obs.shown(name), why=why)
    if not ready(cur, s, site, name, uuid):
        raise FileWaiting(reasons.reason("file_waiting", name=complex_obs.shown(name), site=site), cause(site, name))
    return None


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def ready(cur: Any, s: Sql, site: str, name: str, obs_uuid: str) -> bool:
    """Whether the site's file is in central's folder, or the site said it will never come for this obs (an obs
    naming it may be applied)."""
    cur.execute(sql("SELECT 1 FROM {0}.complex_file WHERE site = %s AND name = %s AND (state = %s OR (state = %s AND "
                    "obs_uuid = %s AND NOT EXISTS (SELECT 1 FROM {0}.complex_file o WHERE o.name = %s AND "
                    "o.site <> %s AND o.state = %s)))", s),  # `gone` never lends a site another's file
                (site, name, RECEIVED, GONE, obs_uuid, name, site, RECEIVED))
    return cur.fetchone() is not None


def gone(cur: Any, s: Sql, site: str, name: str, obs_uuid: str | None) -> int:
    """The site says this file will never come (its obs was deleted or renamed there before the file was read): an
    obs waiting for it is applied without it (the site's later change deletes or renames it). A file already
    written is left as it is. Returns how many waiting entries became due."""
    cur.execute(sql("INSERT INTO {}.complex_file (site, name, sha256, size, state, obs_uuid, date_created, "
                    "date_changed) VALUES (%s, %s, %s, 0, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                    "obs_uuid = IF(state IN (%s, %s), obs_uuid, VALUES(obs_uuid)), "
                    "state = IF(state IN (%s, %s), state, VALUES(state)), date_changed = VALUES(date_changed)", s),
                (site, name, "0" * 64, GONE, obs_uuid, now(), now(), RECEIVED, PURGE, RECEIVED, PURGE))
    return state.fix_changed(cur, s, cause(site, name))


def purge(cur: Any, s: Sql, site: str, name: str) -> None:
    """A synced delete of an obs naming this file: remove the file (sweep), as OpenMRS's purgeObs does. Inside
    apply's transaction, so the removal is asked exactly when the delete commits."""
    cur.execute(sql("UPDATE {}.complex_file SET state = %s, date_changed = %s WHERE site = %s AND name = %s AND "
                    "state = %s", s), (PURGE, now(), site, name, RECEIVED))


def record(cur: Any, s: Sql, site: str, name: str, sha256: str, size: int, obs_uuid: str | None) -> None:
    cur.execute(sql("INSERT INTO {}.complex_file (site, name, sha256, size, state, obs_uuid, date_created, "
                    "date_changed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
                    "sha256 = VALUES(sha256), size = VALUES(size), state = VALUES(state), "
                    "obs_uuid = VALUES(obs_uuid), date_changed = VALUES(date_changed)", s),
                (site, name, sha256, size, RECEIVED, obs_uuid, now(), now()))


def holders(cur: Any, s: Sql, name: str) -> list[tuple[str, str]]:
    """(site, sha256) of every site whose file of this name is in central's folder."""
    cur.execute(sql("SELECT site, sha256 FROM {}.complex_file WHERE name = %s AND state IN (%s, %s)", s),
                (name, RECEIVED, PURGE))
    return [(str(site), str(sha)) for site, sha in cur.fetchall()]


def issue(cur: Any, s: Sql, site: str, kind: str, name: str, sha256: str | None, why: reasons.Reason) -> None:
    """Count a refused file or a conflict (per site, kind and name), with its reason; logged in one line."""
    shown = complex_obs.shown(name)[:255]
    cur.execute(sql("INSERT INTO {}.complex_file_issue (site, kind, name, sha256, reason_code, reason, date_first, "
                    "date_last) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE times = times + 1, "
                    "sha256 = VALUES(sha256), reason_code = VALUES(reason_code), reason = VALUES(reason), "
                    "date_last = VALUES(date_last)", s),
                (site[:100], kind, shown, sha256, why.code, why[:2000], now(), now()))
    log.warning("site %s: %s", site, why)


def sweep(conn: Any, s: Sql, folder: Path) -> int:
    """Remove the files whose obs a site deleted (state purge), a bounded number; a file whose bytes are not the
    ones dbsync wrote any more is left in place (logged). Returns how many were removed."""
    removed = 0
    with conn.cursor() as cur:
        cur.execute(sql("SELECT site, name, sha256 FROM {}.complex_file WHERE state = %s LIMIT %s", s),
                    (PURGE, SWEEP_LIMIT))
        rows = cur.fetchall()
        for site, name, sha in rows:
            path = folder / name
            try:
                found = complex_obs.sha256_of(path)[0]
            except OSError:
                found = None
            if found == sha:
                path.unlink()
                removed += 1
            elif found is not None:
                log.warning("complex obs file %s of site %s changed at central since dbsync wrote it: kept",
                            complex_obs.shown(name), site)
            cur.execute(sql("UPDATE {}.complex_file SET state = %s, date_changed = %s WHERE site = %s AND "
                            "name = %s AND state = %s", s), (REMOVED, now(), site, name, PURGE))
    conn.commit()
    if removed:
        log.info("complex obs: %d file(s) of deleted obs removed", removed)
    return removed


def counts(conn: Any, s: Sql) -> dict[str, dict[str, Any]]:
    """Per site: files received, removed, in flight (chunks arriving), obs waiting for a file, refused and in
    conflict (with the last reason of each)."""
    out: dict[str, dict[str, Any]] = {}

    def site(name: str) -> dict[str, Any]:
        return out.setdefault(name, {"received": 0, "removed": 0, "gone": 0, "in_flight": 0, "waiting_obs": 0,
                                     "refused": 0, "conflicts": 0})

    with conn.cursor() as cur:
        cur.execute(sql("SELECT site, state, COUNT(*) FROM {}.complex_file GROUP BY site, state", s))
        for name, kind, count in cur.fetchall():
            key = {RECEIVED: "received", PURGE: "received", GONE: "gone"}.get(str(kind), "removed")
            site(str(name))[key] += int(count)
        cur.execute(sql("SELECT site, COUNT(DISTINCT name, sha256), COUNT(*), COALESCE(SUM(LENGTH(data)), 0) "
                        "FROM {}.complex_file_chunk GROUP BY site", s))
        for name, files, chunks, stored in cur.fetchall():
            entry = site(str(name))
            entry["in_flight"] = int(files)
            entry["chunks_stored"] = int(chunks)
            entry["bytes_stored"] = int(stored)
        cur.execute(sql("SELECT site, COUNT(*) FROM {}.receiver_retry_queue WHERE cause LIKE %s GROUP BY site", s),
                    (CAUSE_PREFIX + "%",))
        for name, count in cur.fetchall():
            site(str(name or "?"))["waiting_obs"] = int(count)
        cur.execute(sql("SELECT site, kind, SUM(times), MAX(date_last) FROM {}.complex_file_issue GROUP BY site, kind",
                        s))
        for name, kind, times, _last in cur.fetchall():
            site(str(name))["refused" if kind == REFUSED else "conflicts"] += int(times or 0)
        cur.execute(sql("SELECT i.site, i.kind, i.reason FROM {}.complex_file_issue i JOIN (SELECT site, kind, "
                        "MAX(id) AS id FROM {}.complex_file_issue GROUP BY site, kind) m ON m.id = i.id", s, s))
        for name, kind, why in cur.fetchall():
            site(str(name))[f"last_{REFUSED if kind == REFUSED else 'conflict'}"] = str(why)
    conn.commit()
    return out
