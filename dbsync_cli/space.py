"""Free space of the home (state.sqlite, logs): a full home named in one line with its free space, and a warning
before it is full.

Seen: a full home made a restart loop of `--- Logging error ---` tracebacks while `config check` said all was well.
A command that writes its home refuses to start with less than FULL_BYTES free (exit 19), and a write that fails
for want of space ends the process the same way instead of being retried; `status` and `config check` warn below
WARN_FRACTION or WARN_BYTES free.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from dbsync_cli.i18n import _

#: below this a command that writes its home does not start (a checkpoint, a log line need a few pages)
FULL_BYTES = 256 * 1024
#: below either of these `status` and `config check` warn
WARN_FRACTION = 0.05
WARN_BYTES = 200 * 1024 * 1024

_homes: list[Path] = []  # the homes of this process's configs, for the one line of a write that failed


def free(home: Path) -> tuple[int, int] | None:
    """(bytes free to us, bytes in all) of the filesystem holding `home` (or its nearest existing parent)."""
    path = Path(home).expanduser()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        vfs = os.statvfs(path)
    except OSError:
        return None
    return vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def describe(home: Path) -> str:
    found = free(home)
    if found is None:
        return _("home {home} (free space unknown)").format(home=home)
    avail, total = found
    return _("home {home} has {free} free of {total}").format(home=home, free=_size(avail), total=_size(total))


def watch(home: Path) -> None:
    """Remember a home this process writes, for full_line."""
    if home not in _homes:
        _homes.append(Path(home))


def full(home: Path) -> str | None:
    """The one line for a home too full to start in, or None."""
    found = free(home)
    if found is None or found[0] >= FULL_BYTES:
        return None
    return _("{home}: the state directory is full; free space there (state.sqlite and logs/ live in it)").format(
        home=describe(home))


def warning(home: Path) -> str | None:
    """A warning while the home's filesystem is under WARN_FRACTION or WARN_BYTES free, or None."""
    found = free(home)
    if found is None:
        return None
    avail, total = found
    if avail >= WARN_BYTES and (total == 0 or avail >= WARN_FRACTION * total):
        return None
    return _("{home} (under 5 % or 200 MB): state.sqlite and the logs stop the process when it is full").format(
        home=describe(home))


def out_of_space(exc: BaseException) -> bool:
    """A write failed for want of space: an OSError ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def full_line(exc: BaseException) -> str:
    """The one line for a write that failed for want of space, naming the home(s) and their free space."""
    where = "; ".join(describe(home) for home in _homes) or _("the state directory")
    return _("no space left to write ({error}): {where}; free space there, then start again").format(
        error=" ".join(str(exc).split()), where=where)


__all__ = ["FULL_BYTES", "WARN_BYTES", "WARN_FRACTION", "describe", "free", "full", "full_line", "out_of_space",
           "warning", "watch"]
