"""Time zones as the configuration names them: the site's for DATETIME on the wire, central's for storing it."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from dbsync_cli.i18n import _

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def is_fixed(name: str) -> bool:
    """A fixed offset or UTC: the same offset all year."""
    return bool(_OFFSET.match(name.strip())) or name.strip().upper() == "UTC"


#: a winter and a summer moment of either hemisphere: a zone with daylight saving has two offsets across them
_PROBES = ("2024-01-15 12:00:00", "2024-07-15 12:00:00")


def server_dst_warning(conn: Any, configured: str, key: str) -> str | None:
    """A warning when `key` names a fixed offset but the server's time zone changes with daylight saving: half the
    year its DATETIME values would be converted with the wrong offset."""
    if not is_fixed(configured):
        return None
    with conn.cursor() as cur:
        cur.execute("SELECT @@global.time_zone, @@system_time_zone, "
                    "TIMESTAMPDIFF(MINUTE, CONVERT_TZ(%s, @@global.time_zone, '+00:00'), %s), "
                    "TIMESTAMPDIFF(MINUTE, CONVERT_TZ(%s, @@global.time_zone, '+00:00'), %s)",
                    (_PROBES[0], _PROBES[0], _PROBES[1], _PROBES[1]))
        zone, system, winter, summer = cur.fetchone()
    if winter is None or summer is None or winter == summer:
        return None
    name = system if zone == "SYSTEM" else zone
    return _("{key} is the fixed offset {configured!r}, but the server's time zone ({name}) is UTC{winter} in "
             "January and UTC{summer} in July: DATETIME values from part of the year would move by the difference; "
             "set {key} to the zone's IANA name (e.g. Europe/Berlin)").format(
        key=key, configured=configured, name=name, winter=_hours(winter), summer=_hours(summer))


def _hours(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def parse_timezone(name: str) -> dt.tzinfo:
    """An IANA name ("Africa/Kigali"), "UTC", or a fixed offset ("+02:00")."""
    name = name.strip()
    match = _OFFSET.match(name)
    if match:
        if int(match.group(3)) >= 60:
            raise ValueError(f"time zone offset {name!r}: minutes must be below 60")
        sign = -1 if match.group(1) == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    if name.upper() == "UTC":
        return dt.UTC
    return ZoneInfo(name)
