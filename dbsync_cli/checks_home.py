"""`config check`: the state directory (home) exists or can be made, takes a write, and has room.

A full home made the sender loop on restarts with `--- Logging error ---` tracebacks while `config check` said ok.
How full is too full is `space`'s rule (the one a starting command applies); this adds what only a check asks:
is it a directory, may this user write there.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from dbsync_cli import exitcodes, space
from dbsync_cli.findings import ERROR, OK, WARNING, Finding
from dbsync_cli.i18n import _


def state_directory(home: Path) -> Finding:
    """One finding for `home`: an error when it cannot be created or written, or is full; a warning when little
    space is left."""
    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Finding("home", ERROR, _("{home}: {path} is not a directory").format(home=home, path=existing),
                       exitcodes.CONFIG)
    if not os.access(existing, os.W_OK | os.X_OK):
        text = _("{home}: not writable by this user") if existing == home else \
            _("{home} does not exist and {path} is not writable by this user: create it for the dbsync user")
        return Finding("home", ERROR, text.format(home=home, path=existing), exitcodes.CONFIG)
    full = space.full(home)
    if full:
        return Finding("home", ERROR, full, exitcodes.HOME_FULL)
    if existing == home:
        try:
            with tempfile.NamedTemporaryFile(dir=home, prefix=".dbsync-check-"):
                pass
        except OSError as exc:
            return Finding("home", ERROR, _("{home}: a file cannot be created there: {error}").format(
                home=home, error=exc.strerror), exitcodes.HOME_FULL if exc.errno == errno.ENOSPC else exitcodes.CONFIG)
    warning = space.warning(home)
    if warning:
        return Finding("home", WARNING, warning)
    return Finding("home", OK, _("{where}, writable").format(where=space.describe(home)))
