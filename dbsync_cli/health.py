"""`dbsync status` grading shared by both sides: thresholds, the report, the broker and database probes.

No CLI code here: `sender.status.sender_status` and `receiver.status.receiver_status` read a Config (plus threshold overrides) and
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

import contextlib
import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql

from dbsync_cli.broker import BrokerError, open_connection, server_of, settings_from_config
from dbsync_cli.config import KEYS, Config
from dbsync_cli.i18n import _

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


def utc(value: dt.datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
    return value.replace(tzinfo=dt.UTC).isoformat(timespec="seconds")


def seconds_between(later: dt.datetime, earlier: dt.datetime | None) -> float | None:
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


class Report:
    def __init__(self, role: str, ident: str, cfg: Config):
        self.data: dict[str, Any] = {"role": role, "id": ident, "config": cfg.source,
                                     "checked_at": utc(time.time())}
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
        self.data["notes"] = self.notes
        text = "; ".join(p["message"] for p in ordered) or "; ".join(self.notes)
        self.data["summary"] = f"{self.data['role']} {self.data['id']}: {text}"
        self.data["perfdata"] = " ".join(f"{k}={_perf(v)}" for k, v in perfdata.items() if v is not None)
        return self.data


def _perf(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


# ---- probes ------------------------------------------------------------------------------------------------

def plaintext_problem(report: Report, cfg: Config) -> None:
    """WARNING while the broker URL is plain STOMP to another host (allowed with broker.allow_plaintext)."""
    from dbsync_cli.config import plaintext_host

    host = plaintext_host(cfg.values)
    if host is not None:
        report.problem(WARNING, "broker_tls", _("broker.url is plain stomp:// to {host} (broker.allow_plaintext): "
                                                "patient data and the broker password cross the network "
                                                "unencrypted").format(host=host))


def probe_broker(cfg: Config, timeout: float) -> dict[str, Any]:
    """One STOMP CONNECT (no client-id, so a running receiver's durable subscription is not disturbed)."""
    started = time.monotonic()
    url = cfg["broker.url"]
    try:
        settings = dataclasses.replace(settings_from_config(cfg), connect_timeout=timeout, heartbeats=(0, 0))
        url = settings.url
        conn = open_connection(settings)
        server = server_of(conn)  # which broker: how to read its queues (broker_depth)
        with contextlib.suppress(Exception):  # the CONNECTED frame already answered the question
            conn.disconnect()
    except BrokerError as exc:
        return {"url": url, "ok": False, "error": str(exc), "seconds": None}
    return {"url": url, "ok": True, "error": None, "seconds": round(time.monotonic() - started, 3), "server": server}


def connect(cfg: Config, section: str, timeout: float) -> tuple[Any, dict[str, Any]]:
    params = cfg.db(section)
    info: dict[str, Any] = {"address": params.describe(), "ok": False, "error": None}
    try:
        conn = params.connect(connect_timeout=max(1, int(timeout)), read_timeout=max(5, int(timeout) * 6))
    except pymysql.MySQLError as exc:
        info["error"] = f"cannot connect to {params.describe()}: {exc.args[-1] if exc.args else exc}"
        return None, info
    info["ok"] = True
    return conn, info


def home_problem(report: Report, home: Path) -> None:
    """The home in `dbsync status`: CRITICAL when no process can write it (not a directory, a read-only file
    system: the commands stop with exit 2), WARNING while space is short (a full one stops them with exit 19).
    Whether the service's own user may write it is `config check`'s to say: status may run as a monitoring user."""
    from dbsync_cli import space

    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        report.problem(CRITICAL, "home", _("home {home} is not writable: {path} is not a directory").format(
            home=home, path=existing))
        return
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        report.problem(CRITICAL, "home", _("home {home} is not writable: {path} is on a read-only file system "
                                           "(the commands stop with exit 2)").format(home=home, path=existing))
        return
    warning = space.warning(home)
    if warning:
        report.problem(WARNING, "home", warning)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def unknown(role: str, message: str, source: str | None = None) -> dict[str, Any]:
    """The report when no check could run (e.g. the config is invalid)."""
    return {"role": role, "id": None, "config": source, "checked_at": utc(time.time()), "state": UNKNOWN,
            "exit_code": EXIT_CODES[UNKNOWN], "problems": [{"state": UNKNOWN, "check": "config", "message": message}],
            "summary": f"{role}: {message}", "perfdata": ""}


def to_json(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, default=str)
