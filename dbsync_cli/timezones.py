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


#: moments the configured zone and the server's are compared at (UTC): both seasons of both hemispheres, beside now
_COMPARE_AT = ("2024-01-15 12:00:00", "2024-04-15 12:00:00", "2024-07-15 12:00:00", "2024-10-15 12:00:00")


def server_zone_difference(conn: Any, configured: str) -> tuple[str, str] | None:
    """(the server's zone, what differs) when the configured zone gives a different UTC offset than the server's
    time zone (`@@global.time_zone`, or the system zone for SYSTEM) now or at a date of `_COMPARE_AT`; None when
    they agree, or when the server cannot say (named zones without the time zone tables)."""
    moments = [dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)]
    moments += [dt.datetime.fromisoformat(text) for text in _COMPARE_AT]
    columns = ", ".join("TIMESTAMPDIFF(MINUTE, %s, CONVERT_TZ(%s, '+00:00', @@global.time_zone))" for _m in moments)
    with conn.cursor() as cur:
        cur.execute(f"SELECT @@global.time_zone, @@system_time_zone, {columns}",  # noqa: S608 (placeholders only)
                    tuple(value for moment in moments for value in (moment, moment)))
        zone, system, *offsets = cur.fetchone()
    name = f"SYSTEM ({system})" if zone == "SYSTEM" else str(zone)
    tz = parse_timezone(configured)
    for moment, server in zip(moments, offsets, strict=True):
        if server is None:
            return None
        ours = moment.replace(tzinfo=dt.UTC).astimezone(tz).utcoffset()
        minutes = int(ours.total_seconds() // 60) if ours is not None else 0
        if minutes != int(server):
            return name, _("on {date} UTC {configured!r} is UTC{ours}, the server's zone UTC{server}").format(
                date=moment.strftime("%Y-%m-%d %H:%M"), configured=configured, ours=_hours(minutes),
                server=_hours(int(server)))
    return None
