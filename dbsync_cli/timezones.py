"""Time zones as the configuration names them: the site's for DATETIME on the wire, central's for storing it."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


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
