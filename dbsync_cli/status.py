"""`dbsync status`: health of a sender or a receiver as one report, graded for cron and Nagios.

No CLI code here: :func:`sender_status` and :func:`receiver_status` read a Config (plus threshold overrides) and
return a JSON-ready dict with ``state`` (OK, WARNING, CRITICAL or UNKNOWN), ``exit_code`` (0, 1, 2, 3 — the
Nagios plugin convention), ``problems`` (one entry per failed check), a one-line ``summary`` and Nagios
``perfdata``, beside the measured values.

Grading, worst wins (CRITICAL > UNKNOWN > WARNING > OK):
- the broker does not accept a STOMP CONNECT → CRITICAL (nothing moves);
- the site DB (sender) or the central DB (receiver) does not accept a connection → CRITICAL: the check did find
  out what it needed — sync is stopped — so this is not UNKNOWN; the checks that need the DB are then skipped;
- UNKNOWN: the check itself could not judge (invalid config, unreadable sender state, no receiver state schema);
- every other check is graded by a warning and a critical threshold (``status.*`` keys; 0 turns one off).

All times in the receiver's state tables are UTC; the report prints ISO-8601 with ``+00:00``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql

from dbsync_cli.config import KEYS, Config

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
_SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}


def threshold_keys(role: str) -> list[str]:
    """The ``status.*`` config keys that apply to a role (without the ``status.`` prefix)."""
    return [k.split(".", 1)[1] for k, spec in KEYS.items() if k.startswith("status.") and role in spec.roles]


def limits(cfg: Config, overrides: dict[str, int | None] | None = None) -> dict[str, int]:
    """Effective thresholds: a command-line override, else the config value (which has its default)."""
    out = {}
    for name in threshold_keys(cfg.role):
        value = (overrides or {}).get(name)
        out[name] = int(cfg.get(f"status.{name}") if value is None else value)
    return out


def worst(states: list[str]) -> str:
    return max(states, key=_SEVERITY.__getitem__, default=OK)


def grade(value: float | None, warning: int, critical: int) -> str:
    """OK below the warning threshold; a threshold of 0 is off."""
    if value is None:
        return OK
    if critical and value >= critical:
        return CRITICAL
    if warning and value >= warning:
        return WARNING
    return OK


def _utc(value: dt.datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
    return value.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


def _seconds(later: dt.datetime, earlier: dt.datetime | None) -> float | None:
    return None if earlier is None else round(max(0.0, (later - earlier).total_seconds()), 1)


def duration(seconds: float | None) -> str:
    """3 s, 4 min, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} B"


class _Report:
    def __init__(self, role: str, ident: str, cfg: Config):
        self.data: dict[str, Any] = {"role": role, "id": ident, "config": cfg.source,
                                     "checked_at": _utc(time.time())}
        self.problems: list[dict[str, str]] = []
        self.notes: list[str] = []

    def problem(self, state: str, check: str, message: str) -> None:
        if state != OK:
            self.problems.append({"state": state, "check": check, "message": message})

    def finish(self, perfdata: dict[str, float | int | None]) -> dict[str, Any]:
        state = worst([p["state"] for p in self.problems])
        self.data["state"] = state
        self.data["exit_code"] = EXIT_CODES[state]
        ordered = sorted(self.problems, key=lambda p: -_SEVERITY[p["state"]])
        self.data["problems"] = ordered
        text = "; ".join(p["message"] for p in ordered) or "; ".join(self.notes)
        self.data["summary"] = f"{self.data['role']} {self.data['id']}: {text}"
        self.data["perfdata"] = " ".join(f"{k}={_perf(v)}" for k, v in perfdata.items() if v is not None)
        return self.data


def _perf(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


# ---- probes ------------------------------------------------------------------------------------------------

def probe_broker(cfg: Config, timeout: float) -> dict[str, Any]:
    """One STOMP CONNECT (no client-id, so a running receiver's durable subscription is not disturbed)."""
    from dbsync_cli.broker import BrokerError, open_connection
    from dbsync_cli.sender.run import broker_settings

    started = time.monotonic()
    url = cfg["broker.url"]
    try:
        settings = dataclasses.replace(broker_settings(cfg), connect_timeout=timeout, heartbeats=(0, 0))
        url = settings.url
        conn = open_connection(settings)
        try:
            conn.disconnect()
        except Exception:  # noqa: BLE001,S110 - the CONNECTED frame already answered the question
            pass
    except BrokerError as exc:
        return {"url": url, "ok": False, "error": str(exc), "seconds": None}
    return {"url": url, "ok": True, "error": None, "seconds": round(time.monotonic() - started, 3)}


def _connect(cfg: Config, section: str, timeout: float) -> tuple[Any, dict[str, Any]]:
    params = cfg.db(section)
    info: dict[str, Any] = {"address": params.describe(), "ok": False, "error": None}
    try:
        conn = params.connect(connect_timeout=max(1, int(timeout)), read_timeout=max(5, int(timeout) * 6))
    except pymysql.MySQLError as exc:
        info["error"] = f"cannot connect to {params.describe()}: {exc.args[-1] if exc.args else exc}"
        return None, info
    info["ok"] = True
    return conn, info


# ---- sender ------------------------------------------------------------------------------------------------

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
        "snapshot": bool(value.get("snapshot")), "snapshot_table": value.get("table") if value.get("snapshot") else None,
        "ts": _utc(ts_ms / 1000) if isinstance(ts_ms, int | float) else None,
        "ts_ms": ts_ms, "updated": _utc(updated),
        "age_seconds": round(max(0.0, now - updated), 1) if updated is not None else None,
    }
    return checkpoint, rate, None


def binlog_lag(binary_logs: list[tuple[str, int]], file: str, pos: int) -> int | None:
    """Bytes of binlog after (file, pos): the rest of that file plus every later file; None if it was purged."""
    names = [name for name, _ in binary_logs]
    if file not in names:
        return None
    index = names.index(file)
    rest = max(0, binary_logs[index][1] - int(pos))
    return rest + sum(sz for _, sz in binary_logs[index + 1:])


def sender_status(cfg: Config, overrides: dict[str, int | None] | None = None,
                  now: float | None = None) -> dict[str, Any]:
    lim = limits(cfg, overrides)
    now = time.time() if now is None else now
    report = _Report("sender", cfg["sender.id"], cfg)
    timeout = lim["timeout_seconds"] or 5
    checkpoint, rate, error = _sender_state(cfg.home, now)
    report.data["checkpoint"] = checkpoint
    report.data["rate"] = rate
    lag: dict[str, Any] = {"bytes": None, "seconds": None, "binlog_end": None, "purged": False}
    report.data["lag"] = lag
    if error:
        report.problem(UNKNOWN, "checkpoint", error)
    elif checkpoint is None:
        report.problem(WARNING, "checkpoint", f"no checkpoint in {cfg.home / 'state.sqlite'}: the sender has not "
                                              "confirmed anything yet")
    else:
        age = checkpoint["age_seconds"]
        state = grade(age, lim["checkpoint_warning_minutes"] * 60, lim["checkpoint_critical_minutes"] * 60)
        report.problem(state, "checkpoint", f"checkpoint not moved for {duration(age)} (sender stopped or stuck?)")
        if checkpoint["snapshot"]:
            report.notes.append(f"snapshot in progress ({checkpoint['snapshot_table']})")

    conn, site_db = _connect(cfg, "site_db", timeout)
    report.data["site_db"] = site_db
    if conn is None:
        report.problem(CRITICAL, "site_db", site_db["error"])
    else:
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
            if logs:
                lag["binlog_end"] = {"file": logs[-1][0], "pos": logs[-1][1]}
            if checkpoint is not None and checkpoint["file"]:
                lag["bytes"] = binlog_lag(logs, checkpoint["file"], checkpoint["pos"] or 0)
                if lag["bytes"] is None:
                    lag["purged"] = True
                    report.problem(CRITICAL, "binlog", f"checkpoint {checkpoint['file']}:{checkpoint['pos']} is in a "
                                                       "purged binlog: the sender stops with exit 10 (restart it "
                                                       "with --snapshot when_needed)")
                else:
                    ts_ms = checkpoint["ts_ms"]
                    if lag["bytes"] == 0:
                        lag["seconds"] = 0.0
                    elif isinstance(ts_ms, int | float):
                        lag["seconds"] = round(max(0.0, now - ts_ms / 1000), 1)
        except pymysql.MySQLError as exc:
            report.problem(UNKNOWN, "binlog", f"SHOW BINARY LOGS failed on {site_db['address']}: {exc.args[-1]} "
                                              "(the user needs REPLICATION CLIENT / BINLOG MONITOR)")
        finally:
            conn.close()
        report.problem(grade(lag["seconds"], lim["lag_warning_seconds"], lim["lag_critical_seconds"]), "lag",
                       f"{duration(lag['seconds'])} behind the binlog")
        report.problem(grade(lag["bytes"], lim["lag_warning_bytes"], lim["lag_critical_bytes"]), "lag_bytes",
                       f"{size(lag['bytes'])} of binlog not published")

    broker = probe_broker(cfg, timeout)
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
    })


# ---- receiver ----------------------------------------------------------------------------------------------

def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _count_oldest(cur: Any, sql: str) -> tuple[int, dt.datetime | None]:
    cur.execute(sql)
    count, oldest = cur.fetchone()
    return int(count), oldest


def receiver_status(cfg: Config, overrides: dict[str, int | None] | None = None,
                    now: dt.datetime | None = None) -> dict[str, Any]:
    from dbsync_cli.receiver import state
    from dbsync_cli.receiver.rest import rest_status

    lim = limits(cfg, overrides)
    now = now or _utcnow()
    report = _Report("receiver", cfg["receiver.site_id"], cfg)
    timeout = lim["timeout_seconds"] or 5
    schema = cfg["central_db.state_schema"]
    data = report.data
    data.update({"state_schema": schema, "sites": [], "inbox": None, "retry_queue": None, "conflicts": None,
                 "rest": None})
    conn, central = _connect(cfg, "central_db", timeout)
    data["central_db"] = central
    silent_max: float | None = None
    if conn is None:
        report.problem(CRITICAL, "central_db", central["error"])
    else:
        try:
            s = state.schema_name(schema)
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,))
                exists = cur.fetchone()[0] > 0
            if not exists:
                report.problem(UNKNOWN, "state_schema", f"receiver state schema {schema!r} does not exist on "
                                                        f"{central['address']} (no receiver or `dbsync sites add` "
                                                        "has run yet)")
            else:
                silent_max = _sites(report, conn, schema, now, lim)
                with conn.cursor() as cur:
                    size_, oldest = _count_oldest(cur, f"SELECT COUNT(*), MIN(date_received) FROM {s}.inbox")  # noqa: S608
                    data["inbox"] = {"size": size_, "oldest": _utc(oldest), "oldest_seconds": _seconds(now, oldest)}
                    size_, oldest = _count_oldest(
                        cur, f"SELECT COUNT(*), MIN(date_created) FROM {s}.receiver_retry_queue")  # noqa: S608
                    cur.execute(f"SELECT COALESCE(site, ''), COUNT(*) FROM {s}.receiver_retry_queue "  # noqa: S608
                                "GROUP BY site ORDER BY 1")
                    by_site = {r[0] or "?": int(r[1]) for r in cur.fetchall()}
                    data["retry_queue"] = {"size": size_, "oldest": _utc(oldest), "oldest_seconds": _seconds(now, oldest),
                                           "by_site": by_site}
                    size_, oldest = _count_oldest(
                        cur, f"SELECT COUNT(*), MIN(date_created) FROM {s}.receiver_conflict_queue "  # noqa: S608
                             "WHERE resolved = 0")
                    data["conflicts"] = {"unresolved": size_, "oldest": _utc(oldest),
                                         "oldest_seconds": _seconds(now, oldest)}
                rest = rest_status(conn, schema)
                rest["enabled"] = bool(cfg.get("openmrs.url"))
                rest["last_error_date"] = _utc(rest["last_error_date"])
                data["rest"] = rest
                inbox, retry, conflicts = data["inbox"], data["retry_queue"], data["conflicts"]
                report.problem(grade(inbox["size"], lim["inbox_warning"], lim["inbox_critical"]), "inbox",
                               f"{inbox['size']} message(s) in the inbox not applied yet "
                               f"(oldest {duration(inbox['oldest_seconds'])})")
                report.problem(grade(retry["size"], lim["retry_warning"], lim["retry_critical"]), "retry_queue",
                               f"{retry['size']} message(s) in the retry queue "
                               f"(oldest {duration(retry['oldest_seconds'])})")
                report.problem(grade(conflicts["unresolved"], lim["conflict_warning"], lim["conflict_critical"]),
                               "conflicts", f"{conflicts['unresolved']} unresolved conflict(s) (dbsync conflicts list)")
                report.problem(grade(rest["failing"], lim["rest_failing_warning"], lim["rest_failing_critical"]),
                               "rest", f"{rest['failing']} OpenMRS REST call(s) failing: {rest['last_error'] or '?'}")
        except pymysql.MySQLError as exc:
            report.problem(UNKNOWN, "state_schema", f"reading receiver state {schema!r}: {exc.args[-1]}")
        finally:
            conn.close()

    broker = probe_broker(cfg, timeout)
    data["broker"] = broker
    if not broker["ok"]:
        report.problem(CRITICAL, "broker", broker["error"])

    enabled = [site for site in data["sites"] if not site["disabled"]]
    report.notes.append(f"{len(enabled)} site(s), longest silence {duration(silent_max)}")
    for name, key in (("inbox", "size"), ("retry_queue", "size"), ("conflicts", "unresolved")):
        if data[name] is not None:
            report.notes.append(f"{name.replace('_', ' ')} {data[name][key]}")
    return report.finish({
        "site_silence_max": silent_max,
        "inbox": data["inbox"]["size"] if data["inbox"] else None,
        "retry": data["retry_queue"]["size"] if data["retry_queue"] else None,
        "conflicts": data["conflicts"]["unresolved"] if data["conflicts"] else None,
        "rest_failing": data["rest"]["failing"] if data["rest"] else None,
    })


def _sites(report: _Report, conn: Any, schema: str, now: dt.datetime, lim: dict[str, int]) -> float | None:
    """Per site: last sync (or registration, for a site that never synced) and how long it has been silent."""
    from dbsync_cli.receiver import state

    with conn.cursor() as cur:
        cur.execute(f"SELECT site_id, last_sync_date, messages, last_message_id "  # noqa: S608
                    f"FROM {state.schema_name(schema)}.receiver_sync_status")
        status = {int(r[0]): r[1:] for r in cur.fetchall()}
    silent_max = None
    sites = sorted(state.sites(conn, schema).values(), key=lambda site: site.identifier)
    for site in sites:
        last, messages, last_id = status.get(site.id, (None, 0, None))
        silence = _seconds(now, last or site.date_created)
        row = {"identifier": site.identifier, "name": site.name, "disabled": site.disabled,
               "date_created": _utc(site.date_created), "last_sync_date": _utc(last),
               "age_seconds": _seconds(now, last), "silent_seconds": silence, "messages": int(messages or 0),
               "last_message_id": last_id, "state": "DISABLED" if site.disabled else OK}
        if not site.disabled:
            row["state"] = grade(silence, lim["site_silent_warning_minutes"] * 60,
                                 lim["site_silent_critical_minutes"] * 60)
            since = "since its last sync" if last else "and never synced since it was registered"
            report.problem(row["state"], "site", f"site {site.identifier} silent for {duration(silence)} {since}")
            if silence is not None and (silent_max is None or silence > silent_max):
                silent_max = silence
        report.data["sites"].append(row)
    if not sites:
        report.problem(WARNING, "site", "no sites registered (dbsync sites add)")
    return silent_max


def status(cfg: Config, overrides: dict[str, int | None] | None = None) -> dict[str, Any]:
    """The report for the config's role."""
    return sender_status(cfg, overrides) if cfg.role == "sender" else receiver_status(cfg, overrides)


def unknown(role: str, message: str, source: str | None = None) -> dict[str, Any]:
    """The report when no check could run (e.g. the config is invalid)."""
    return {"role": role, "id": None, "config": source, "checked_at": _utc(time.time()), "state": UNKNOWN,
            "exit_code": EXIT_CODES[UNKNOWN], "problems": [{"state": UNKNOWN, "check": "config", "message": message}],
            "summary": f"{role}: {message}", "perfdata": ""}


def to_json(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, default=str)
