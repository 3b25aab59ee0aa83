"""`dbsync status` for a sender: checkpoint age, binlog lag and retention, throughput, broker and site DB."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pymysql

from dbsync_cli.config import Config
from dbsync_cli.health import (
    CRITICAL,
    UNKNOWN,
    WARNING,
    Report,
    connect,
    duration,
    grade,
    home_problem,
    limits,
    plaintext_problem,
    probe_broker,
    size,
    utc,
)
from dbsync_cli.i18n import _
from dbsync_cli.sender import binlog


def _sender_state(home: Path, now: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """(checkpoint, rate, error) from <home>/state.sqlite without creating it."""
    import sqlite3

    from dbsync_cli.sender.checkpoint import CheckpointStore

    if not (home / "state.sqlite").exists():
        return None, None, None
    try:
        store = CheckpointStore(home)
        try:
            value, updated = store.load(), store.updated()
            rate = {"rows_per_second": round(store.sent_since(now - 60) / 60, 2),
                    "rows_per_second_5m": round(store.sent_since(now - 300) / 300, 2),
                    "rows_last_hour": store.sent_since(now - 3600)}
        finally:
            store.close()
    except (sqlite3.Error, OSError) as exc:
        return None, None, f"cannot read {home / 'state.sqlite'}: {exc}"
    if value is None:
        return None, rate, None
    ts_ms = value.get("ts_ms")
    checkpoint = {
        "file": value.get("file"), "pos": value.get("pos"), "row": value.get("row"),
        "read_pos": _read_pos(value), "born": value.get("born"), "epoch": value.get("epoch"),
        "gtid_pos": value.get("gtid_pos"),  # what a failover to a replica resumes by (gtid.py)
        "snapshot": bool(value.get("snapshot")), "snapshot_table": value.get("table") if value.get("snapshot") else None,
        **_snapshot_progress(value),
        "ts": utc(ts_ms / 1000) if isinstance(ts_ms, int | float) else None,
        "ts_ms": ts_ms, "updated": utc(updated),
        "age_seconds": round(max(0.0, now - updated), 1) if updated is not None else None,
    }
    return checkpoint, rate, None


def binlog_lag(binary_logs: list[tuple[str, int]], file: str, pos: int) -> int | None:
    """Bytes of binlog after (file, pos): the rest of that file plus every later file; None if it was purged."""
    names = [name for name, _size in binary_logs]
    if file not in names:
        return None
    index = names.index(file)
    rest = max(0, binary_logs[index][1] - int(pos))
    return rest + sum(sz for _name, sz in binary_logs[index + 1:])


def _disk(conn: Any, logs: list[tuple[str, int]], checkpoint: dict[str, Any] | None, cfg: Config) -> dict[str, Any]:
    """Binlog disk use, the server's retention, and how long the checkpoint's file has left before the server
    expires it (a sender down longer than that needs a new snapshot)."""
    with conn.cursor() as cur:
        cur.execute("SELECT @@binlog_expire_logs_seconds, @@expire_logs_days")
        seconds, days = cur.fetchone()
    retention = float(seconds or 0) or float(days or 0) * 86400
    expires_in = None
    born = checkpoint.get("born") if checkpoint else None
    if retention and isinstance(born, int | float):
        expires_in = round(born + retention - time.time())
    disk = sum(size for _name, size in logs)
    rate = written_per_day(cfg, logs[0][0], disk) if logs else None
    return {"files": len(logs), "disk_bytes": disk, "written_bytes_per_day": rate,
            "retention_seconds": retention or None, "checkpoint_file_expires_in_seconds": expires_in,
            "retention_left_days": None if expires_in is None else round(max(0, expires_in) / 86400, 1),
            "disk_bytes_at_retention": None if rate is None or not retention else round(rate * retention / 86400),
            "purge": bool(cfg["sender.purge_binlogs"])}


def written_per_day(cfg: Config, oldest: str, disk: int, min_age_seconds: float = 3600) -> int | None:
    """The rate the server writes binlog at: the bytes it holds over the time since its oldest file was created
    (None under an hour of history: too short to say). Read under a server id of its own, so that a running
    sender's binlog connection is not the one the server drops."""
    settings = binlog.CaptureSettings(db=cfg.db("site_db"), server_id=4_290_000_000 + os.getpid() % 4_000_000,
                                      tables=[])
    born = binlog.file_born(settings, oldest)
    age = time.time() - born if born is not None else 0
    return round(disk / age * 86400) if age >= max(min_age_seconds, 1) else None


def _read_pos(value: dict[str, Any]) -> int | None:
    """Where the confirmed rows reach in the checkpoint's file: inside a large transaction the rows event of the
    last confirmed row, past the transaction's start (`pos`), so the byte lag moves while the transaction goes
    through."""
    pos, end = value.get("pos"), value.get("end_pos")
    if isinstance(end, int) and isinstance(pos, int) and end > pos and not value.get("snapshot"):
        return end
    return pos if isinstance(pos, int) else None


def _snapshot_progress(value: dict[str, Any]) -> dict[str, Any]:
    """How far a running initial load is: the rows confirmed of the rows there were when it started."""
    done, total = value.get("done"), value.get("total")
    if not value.get("snapshot") or not isinstance(done, int) or not isinstance(total, int):
        return {"snapshot_done": None, "snapshot_total": None, "snapshot_percent": None}
    percent = round(min(100.0, 100.0 * done / total), 1) if total else 100.0
    return {"snapshot_done": done, "snapshot_total": total, "snapshot_percent": percent}


def _stored(home: Path, name: str) -> dict[str, Any] | None:
    """A record of the sender's store: the last failover (capture.py), the refused re-sync requests (resync.py)."""
    import sqlite3

    from dbsync_cli.sender.checkpoint import CheckpointStore

    if not (home / "state.sqlite").exists():
        return None
    try:
        store = CheckpointStore(home)
        try:
            return store.load(name)
        finally:
            store.close()
    except (sqlite3.Error, OSError):
        return None  # _sender_state reports the file's problem


def _exports(report: Report, home: Path) -> None:
    """Sync by file (sender/export.py): the last sealed bundle, and an export that was cut short."""
    from dbsync_cli.sender.checkpoint import EXPORT_PART, EXPORTED

    exported = report.data["exported"] = _stored(home, EXPORTED)
    if exported:
        report.notes.append(f"last export: {exported['rows']:,} row(s) in {exported['file']}, sealed "
                            f"{exported.get('sealed') or '?'}: the checkpoint is after them")
    part = report.data["export_part"] = _stored(home, EXPORT_PART)
    if part:
        report.problem(WARNING, "export", _("an export to {file} stopped after {rows:,} row(s): dbsync export --to "
                                            "{file} resumes it").format(file=part["file"], rows=part["rows"]))


def clock_problem(skew: float) -> str:
    """What a site server's clock `skew` seconds off this host's does (status and config check say the same)."""
    amount = duration(round(abs(skew)))
    if skew >= 0:
        return _("the site server's clock is {duration} ahead of this host's: the site's changes reach central dated "
                 "in its future (central parks those to rows it edited as conflicts); set the clock right "
                 "(NTP)").format(duration=amount)
    return _("the site server's clock is {duration} behind this host's: the site's changes reach central dated in "
             "the past, where central's earlier edits win over them; set the clock right (NTP)").format(
        duration=amount)


def _clock(report: Report, conn: Any, home: Path, limit: int, now: float) -> float | None:
    """The site server's clock against this host's (status runs at the site): measured now, else as the running
    sender measured it last. WARNING at `limit` seconds either way (0: off)."""
    import sqlite3

    from dbsync_cli.sender import clock

    live = None
    if conn is not None:
        try:
            live = round(clock.measure(conn), 1)
        except pymysql.MySQLError:
            live = None
    try:
        stored = clock.load(home)
    except (sqlite3.Error, OSError):
        stored = None
    skew = live if live is not None else (stored or {}).get("skew_seconds")
    report.data["clock"] = {"skew_seconds": live, "sender": stored}
    report.data["clock_skew_seconds"] = skew
    if isinstance(skew, int | float):
        report.problem(grade(abs(skew), limit, 0), "clock", clock_problem(skew))
    ahead = (stored or {}).get("binlog_ahead_seconds")
    if isinstance(ahead, int | float) and now - float((stored or {}).get("at") or 0) < 86400:
        report.notes.append(f"the sender saw binlog events dated {duration(round(ahead))} ahead of this host's "
                            f"clock ({utc(stored['at']) if stored else ''})")
    return skew


#: a data-losing drop (drops.LOSSES) keeps `dbsync status` at WARNING this long after it happened
DROPPED_WARNING_HOURS = 24


def _dropped(report: Report, home: Path, now: float) -> None:
    """What the sender read and did not send, per reason (drops.py): `dropped` {reason: count} and `dropped_last`
    {reason: the last one}; a WARNING while a data-losing one happened in the last DROPPED_WARNING_HOURS."""
    import sqlite3

    from dbsync_cli.sender import drops
    from dbsync_cli.sender.checkpoint import CheckpointStore

    found: dict[str, dict[str, Any]] = {}
    if (home / "state.sqlite").exists():
        try:
            store = CheckpointStore(home)
            try:
                found = store.dropped()
            finally:
                store.close()
        except (sqlite3.Error, OSError):
            pass  # _sender_state reports the file's problem
    report.data["dropped"] = {reason: found[reason]["count"] if reason in found else 0 for reason in drops.REASONS}
    report.data["dropped_last"] = {reason: {**entry["last"], "at": utc(entry["last_at"])}
                                   for reason, entry in found.items()}
    for reason in drops.REASONS:
        if reason not in found:
            continue
        entry, last = found[reason], found[reason]["last"]
        what = " ".join(str(last[k]) for k in ("table", "uuid") if last.get(k)) or str(last.get("key", "?"))
        if reason in drops.LOSSES and now - entry["last_at"] < DROPPED_WARNING_HOURS * 3600:
            report.problem(WARNING, "dropped", _("{count} change(s) read and not sent ({reason}); the last at {at}: "
                                                 "{what}").format(count=entry["count"], reason=reason,
                                                                  at=utc(entry["last_at"]), what=what))
        else:
            report.notes.append(f"{entry['count']} change(s) not sent ({reason}), the last at "
                                f"{utc(entry['last_at'])}: {what}")


def _files(report: Report, cfg: Config) -> None:
    """Complex obs files (file_jobs.py): waiting (queued, sending, not in the folder yet), sent, refused; a WARNING
    while a file is missing from the folder or a name was refused."""
    import sqlite3

    from dbsync_cli.sender import file_jobs

    path = cfg.home / "state.sqlite"
    if not cfg["sender.complex_obs_dir"] or not path.exists():
        report.data["complex_obs"] = None
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            db.execute("SELECT 1 FROM complex_file LIMIT 1")
            found = file_jobs.counts(db)
        finally:
            db.close()
    except sqlite3.Error:
        found = {state: 0 for state in file_jobs.STATES}
    found["waiting"] = found["queued"] + found["sending"] + found["missing"]
    report.data["complex_obs"] = found
    if found["missing"]:
        last = found.get("last_missing") or {}
        report.problem(WARNING, "complex_obs", _("{count} complex obs file(s) not in {folder} yet (their obs was "
                                                 "sent; looked for again with backoff); the last: {name}, {attempts} "
                                                 "attempt(s)").format(count=found["missing"],
                                                                      folder=cfg["sender.complex_obs_dir"],
                                                                      name=last.get("name"),
                                                                      attempts=last.get("attempts")))
    if found["refused"]:
        last = found.get("last_refused") or {}
        report.problem(WARNING, "complex_obs", _("{count} complex obs file name(s) refused (they would leave the "
                                                 "folder); the last: {name} ({reason})").format(
            count=found["refused"], name=last.get("name"), reason=last.get("reason")))
    report.notes.append(_("complex obs files: {waiting} waiting ({sending} sending), {sent} sent, {refused} "
                          "refused").format(waiting=found["waiting"], sending=found["sending"], sent=found["sent"],
                                            refused=found["refused"]))


#: how `dbsync status` grades the broker's last refusal of a batch (broker_refusals kinds); others WARNING
REFUSAL_STATES = {"disk_full": CRITICAL, "permission": CRITICAL, "unknown_address": CRITICAL,
                  "address_full": WARNING}


def _broker_refusal(report: Report, home: Path) -> None:
    """The broker's last refusal of a batch, as publish recorded it (a full broker disk, AMQ229119, blocks every
    producer while the broker itself answers CONNECT): named until a batch is confirmed again."""
    from dbsync_cli.sender.checkpoint import BROKER_REFUSED

    refused = report.data["broker_refused"] = _stored(home, BROKER_REFUSED)
    if not refused:
        return
    if refused.get("kind") == "disk_full":
        text = _("the broker's disk is full since {since} (AMQ229119, last at {at}): it blocks every producer; "
                 "nothing is sent until space is freed on the broker (or its max-disk-usage raised)")
    else:
        text = _("the broker refuses batches since {since} (last at {at}): {message}")
    report.problem(REFUSAL_STATES.get(str(refused.get("kind")), WARNING), "broker_refused", text.format(
        since=utc(refused.get("since")), at=utc(refused.get("at")), message=refused.get("message", "")))


def sender_status(cfg: Config, overrides: dict[str, int | None] | None = None,
                  now: float | None = None) -> dict[str, Any]:
    lim = limits(cfg, overrides)
    now = time.time() if now is None else now
    report = Report("sender", cfg["sender.id"], cfg)
    timeout = lim["timeout_seconds"] or 5
    checkpoint, rate, error = _sender_state(cfg.home, now)
    from dbsync_cli.sender.checkpoint import FAILOVER, RESYNC_REFUSED

    failover = report.data["failover"] = _stored(cfg.home, FAILOVER)
    if failover is not None:
        passed = (f"; {failover['not_sent']} transaction(s) of domains the sender never read were not sent "
                  f"({failover['not_sent_first']} … {failover['not_sent_last']})" if failover["not_sent"] else "")
        report.notes.append(f"followed the site from server id {failover['from_server_id']} to "
                            f"{failover['to_server_id']} at {utc(failover['at'])}, going on at "
                            f"{failover['file']}:{failover['pos']} by GTID{passed}")
    _exports(report, cfg.home)
    refused = report.data["resync_refused"] = _stored(cfg.home, RESYNC_REFUSED)
    if refused:
        report.problem(WARNING, "resync", _("{count} re-sync request(s) from central refused; the last at {at}: "
                                            "{last}").format(count=refused["count"], at=utc(refused["at"]),
                                                             last=refused["last"]))
    _dropped(report, cfg.home, now)
    _files(report, cfg)
    _broker_refusal(report, cfg.home)
    home_problem(report, cfg.home)  # not writable, or space short before it is full (a full home: exit 19)
    report.data["checkpoint"] = checkpoint
    report.data["rate"] = rate
    lag: dict[str, Any] = {"bytes": None, "seconds": None, "binlog_end": None, "purged": False}
    report.data["lag"] = lag
    if error:
        report.problem(UNKNOWN, "checkpoint", error)
    elif checkpoint is None:
        report.problem(WARNING, "checkpoint", _("no checkpoint in {path}: the sender has not confirmed anything "
                                                "yet").format(path=cfg.home / "state.sqlite"))
    else:
        age = checkpoint["age_seconds"]
        state = grade(age, lim["checkpoint_warning_minutes"] * 60, lim["checkpoint_critical_minutes"] * 60)
        report.problem(state, "checkpoint", _("checkpoint not moved for {duration} (sender stopped or stuck?)").format(
            duration=duration(age)))
        if checkpoint["snapshot"]:
            done, total = checkpoint["snapshot_done"], checkpoint["snapshot_total"]
            how_far = f": {checkpoint['snapshot_percent']:.1f} % ({done:,} of {total:,} rows)" if total else ""
            report.notes.append(f"snapshot in progress ({checkpoint['snapshot_table']}){how_far}")

    conn, site_db = connect(cfg, "site_db", timeout)
    report.data["site_db"] = site_db
    skew = _clock(report, conn, cfg.home, lim["clock_skew_warning_seconds"], now)
    if conn is None:
        report.problem(CRITICAL, "site_db", site_db["error"])
    else:
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
            if logs:
                lag["binlog_end"] = {"file": logs[-1][0], "pos": logs[-1][1]}
            disk = report.data["binlog"] = _disk(conn, logs, checkpoint, cfg)
            expires = disk["checkpoint_file_expires_in_seconds"]
            written = disk["written_bytes_per_day"]
            report.notes.append(f"binlog {disk['files']} file(s), {size(disk['disk_bytes'])}"
                                + (f", written at {size(written)}/day" if written is not None else "")
                                + (f"; the checkpoint's file expires in {duration(max(0, expires))}"
                                   f" ({disk['retention_left_days']} days)" if expires is not None else "")
                                + (f"; at this rate the binlogs take {size(disk['disk_bytes_at_retention'])} "
                                   "at the server's retention" if disk["disk_bytes_at_retention"] is not None
                                   else ""))
            if written is not None and not disk["retention_seconds"] and not disk["purge"]:
                report.notes.append(f"binlogs are never expired nor purged: they grow by {size(written * 30)} a "
                                    "month (set sender.purge_binlogs = true or binlog_expire_logs_seconds)")
            if checkpoint is not None and checkpoint["file"]:
                lag["bytes"] = binlog_lag(logs, checkpoint["file"], checkpoint["read_pos"] or 0)
                try:  # by file name and size here; capture also compares when the file was created
                    binlog.check_history(conn, {"file": checkpoint["file"], "pos": checkpoint["pos"] or 0},
                                         lambda _file: None)
                except binlog.PositionLost as lost:
                    lag["bytes"], lag["purged"] = None, True
                    report.problem(CRITICAL, "binlog", _("{lost}: the sender re-snapshots (snapshot = when_needed) "
                                                         "or stops with exit 10 (restart it with --snapshot "
                                                         "when_needed)").format(lost=lost))
                else:
                    ts_ms = checkpoint["ts_ms"]
                    if lag["bytes"] == 0:
                        lag["seconds"] = 0.0
                    elif isinstance(ts_ms, int | float):
                        lag["seconds"] = round(max(0.0, now - ts_ms / 1000), 1)
        except pymysql.MySQLError as exc:
            report.problem(UNKNOWN, "binlog", _("SHOW BINARY LOGS failed on {address}: {error} (the user needs "
                                                "REPLICATION CLIENT / BINLOG MONITOR)").format(
                address=site_db["address"], error=exc.args[-1]))
        finally:
            conn.close()
        report.problem(grade(lag["seconds"], lim["lag_warning_seconds"], lim["lag_critical_seconds"]), "lag",
                       _("{duration} behind the binlog").format(duration=duration(lag["seconds"])))
        report.problem(grade(lag["bytes"], lim["lag_warning_bytes"], lim["lag_critical_bytes"]), "lag_bytes",
                       _("{size} of binlog not published").format(size=size(lag["bytes"])))

    broker = probe_broker(cfg, timeout)
    plaintext_problem(report, cfg)
    report.data["broker"] = broker
    if not broker["ok"]:
        report.problem(CRITICAL, "broker", broker["error"])

    if checkpoint is not None:
        report.notes.insert(0, f"checkpoint {checkpoint['file']}:{checkpoint['pos']} "
                               f"({duration(checkpoint['age_seconds'])} ago)")
    report.notes.append(f"lag {size(lag['bytes'])}, {duration(lag['seconds'])}")
    if rate is not None:
        report.notes.append(f"{rate['rows_per_second_5m']:g} rows/s (5 min)")
    return report.finish({
        "lag_seconds": lag["seconds"], "lag_bytes": lag["bytes"],
        "checkpoint_age": checkpoint["age_seconds"] if checkpoint else None,
        "rows_per_second": rate["rows_per_second_5m"] if rate else None,
        "snapshot_percent": checkpoint["snapshot_percent"] if checkpoint else None,
        "clock_skew": skew,
    })


# ---- receiver ----------------------------------------------------------------------------------------------

