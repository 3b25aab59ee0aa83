"""A MariaDB site server whose clock runs ahead or behind, as a clinic's unsynchronised server does.

libfaketime (Debian's ``faketime``) is preloaded into mariadbd alone: NOW(), binlog event timestamps and
TIMESTAMP defaults move by the offset, while the test machine's clock (and every client's) stays right.
Monotonic clocks are left real (``DONT_FAKE_MONOTONIC``) so the server's timers and waits keep their length.
"""

from __future__ import annotations

import re
from pathlib import Path

from devtools.services.common import ServiceError
from devtools.services.mariadb import MariaDbInstance, start_mariadb

#: where Debian's faketime package puts the preload library
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
_OFFSET = re.compile(r"^[+-]\d+(\.\d+)?[smhdy]?$")


def faketime_env(offset: str, *, library: Path = LIBFAKETIME) -> dict[str, str]:
    """The environment that shifts a process's wall clock by ``offset`` ("+10m", "-5m", "+90s", "-2h", "+1d"):
    the clock keeps ticking from there."""
    if not _OFFSET.match(offset):
        raise ValueError(f"clock offset {offset!r}: want a sign, a number and s/m/h/d/y, e.g. +10m or -5m")
    if not library.exists():
        raise ServiceError(f"{library} not found: install Debian's faketime package (apt-get install faketime)")
    return {"LD_PRELOAD": str(library), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def offset_seconds(offset: str) -> float:
    """``offset`` as seconds (what a test compares the server's NOW() against)."""
    if not _OFFSET.match(offset):
        raise ValueError(f"clock offset {offset!r}")
    unit = offset[-1] if offset[-1].isalpha() else "s"
    number = float(offset[:-1] if offset[-1].isalpha() else offset)
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}[unit]


def start_skewed_mariadb(name: str, offset: str = "+10m", port: int | None = None, server_id: int | None = None,
                         *, extra_args: tuple[str, ...] | list[str] = (), home: Path | None = None,
                         timeout: float = 60) -> MariaDbInstance:
    """Start (or restart with the new offset) the MariaDB instance ``name`` with its clock ``offset`` off; the
    same binlog settings and accounts as every other instance. Stop it with ``destroy_mariadb``/``stop_mariadb``."""
    return start_mariadb(name, port, server_id, extra_args=extra_args, home=home, timeout=timeout,
                         env=faketime_env(offset))
