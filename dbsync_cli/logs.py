"""Logging to <home>/logs/dbsync.log (rotated) and stderr, with every configured secret masked; stderr carries
dbsync's own records only, so that its one line for a fault comes first."""

from __future__ import annotations

import functools
import logging
import logging.handlers
import sys
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from dbsync_cli.files import private_dir, private_file

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"



@functools.cache
def stderr_console() -> Console:
    """The one rich console on stderr: the log handler and the progress bars share it, so that log lines print
    above a live bar instead of into it."""
    return Console(stderr=True, force_terminal=sys.stderr.isatty())  # a bar only on a real terminal


class SecretMask(logging.Filter):
    """Replace secret values wherever they would appear, including in exception text."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in self.secrets:
                text = text.replace(secret, "********")
            record.msg, record.args = text, None
        return True


class OwnRecords(logging.Filter):
    """stderr carries dbsync's own records only: a library's (stomp.py's `could not connect`, pymysql's `TLS/SSL
    connection has been closed (EOF)`) went before dbsync's one line and read as the cause. They go to the log
    file; -vv shows them on stderr too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "dbsync" or record.name.startswith(("dbsync.", "dbsync_cli"))


class LogFile(logging.handlers.RotatingFileHandler):
    """The log file; a record it cannot write (a full home) is one line on stderr, once, never the logging
    module's `--- Logging error ---` traceback per record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        from dbsync_cli import space

        home = Path(self.baseFilename).parent.parent
        print(f"dbsync: cannot write the log {self.baseFilename} ({error}): {space.describe(home)}",
              file=sys.stderr, flush=True)


def setup(level: str = "INFO", verbosity: int = 0, log_file: Path | None = None, secrets: Iterable[str] = ()) -> None:
    """-v lowers the stderr level, -q raises it; the file always keeps the configured level. Libraries' records go
    to the file only (OwnRecords) unless -vv."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    base = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    stderr_level = max(logging.DEBUG, min(logging.CRITICAL, base - 10 * verbosity))
    mask = SecretMask(secrets)
    stderr: logging.Handler
    if sys.stderr.isatty():  # rich's handler: it knows about a live progress bar on the same console
        stderr = RichHandler(console=stderr_console(), show_path=False, markup=False, rich_tracebacks=False,
                             log_time_format="%H:%M:%S")
        stderr.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:  # a pipe or a file (systemd's journal): plain one-line records
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    stderr.setLevel(stderr_level)
    if verbosity < 2:
        stderr.addFilter(OwnRecords())
    stderr.addFilter(mask)
    root.addHandler(stderr)
    root.setLevel(min(stderr_level, base))
    if log_file is not None:
        private_dir(log_file.parent, tighten=False)
        private_file(log_file)
        handler = LogFile(log_file, maxBytes=20_000_000, backupCount=5, encoding="utf-8")
        handler.setLevel(base)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(mask)
        root.addHandler(handler)
    for noisy in ("stomp", "stomp.py", "pymysqlreplication"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, stderr_level))
