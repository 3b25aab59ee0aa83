"""Files only their owner may read: the sender's home holds its checkpoint and rejected messages (patient data),
the logs hold binlog positions and row keys. The process umask covers what dbsync creates; these helpers tighten
what an earlier version (or another tool) created readable by others."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: what the command line sets before anything is created: owner-only files and directories
UMASK = 0o077


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create `path` owner-only; `tighten`: also restrict it if it exists (a directory dbsync owns, like its home;
    never a shared one such as the parent of a configured log_file, e.g. /var/log)."""
    existed = path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if existed and tighten:
        with contextlib.suppress(OSError):
            if path.stat().st_mode & 0o077:
                path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return path


def restrict_process() -> None:
    os.umask(UMASK)


def sync_dir(directory: Path) -> None:
    """A rename in `directory` made durable (a power cut after it must not bring the old name back)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
