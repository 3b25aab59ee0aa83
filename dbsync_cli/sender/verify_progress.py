"""What an interrupted verify (or catch-up by verify) had finished, kept in the site's home so that trying again
continues the same run instead of starting over.

On a link that drops every 30 s, or for a sender killed mid-way, starting over means reading and digesting every
table again and asking central again: a catch-up that never finishes. So a run keeps, per table, central's answer
to its buckets (the buckets that differ), then its rows' answers a request at a time (which buckets were asked and
how each differing row was classified), then whether its repair messages were confirmed by the broker.

A saved run is reused only for the same purpose and key (`dbsync verify` of the same tables; a catch-up of the
same lost checkpoint) and, for `dbsync verify`, only while it is recent; anything else starts a new run and
forgets the old one. Resuming stays correct because what a kept answer said is checked again before it counts:
the verifier reads the differing rows again and asks central about them again (so a row the site has again is
never deleted at central), and a catch-up's changes after its binlog position are streamed by capture anyway.
"""

from __future__ import annotations

import sqlite3
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import orjson

from dbsync_cli.files import private_dir, private_file

FILE = "verify-progress.sqlite"
#: `dbsync verify` resumes an interrupted run only this recent (a catch-up's run has its own key and no age)
VERIFY_MAX_AGE_SECONDS = 6 * 3600

#: a row's state between requests: (kind, the site's digest, central's digest)
State = tuple[str, str | None, str | None]


class VerifyProgress:
    """One purpose's saved run (``"verify"`` or ``"catch-up"``) in ``<home>/verify-progress.sqlite``."""

    def __init__(self, home: Path, purpose: str, key: dict[str, Any], *, max_age: float | None = None,
                 restart: bool = False) -> None:
        private_dir(home)
        path = home / FILE
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS progress (purpose TEXT NOT NULL, name TEXT NOT NULL, "
                          "value BLOB NOT NULL, PRIMARY KEY (purpose, name))")
        for name in (FILE, f"{FILE}-wal", f"{FILE}-shm"):
            private_file(home / name)
        self.purpose = purpose
        self.key = key
        run = self._load("run")
        too_old = max_age is not None and run is not None and time.time() - float(run.get("started", 0)) > max_age
        if run is None or restart or too_old or run.get("key") != orjson.loads(orjson.dumps(key)):
            self.clear()
            run = None
        #: the run: its id, when it started and what its caller kept with it (a catch-up's binlog position)
        self.run: dict[str, Any] | None = run
        #: True when this continues an interrupted run
        self.resuming = run is not None

    @property
    def extra(self) -> dict[str, Any]:
        return dict((self.run or {}).get("extra") or {})

    def start(self, site: str, extra: dict[str, Any] | None = None) -> str:
        """The run id to use: the interrupted run's, or a new one, saved at once with `extra`."""
        if self.run is None:
            self.run = {"run": f"{site}:{uuidlib.uuid4().hex[:20]}", "key": self.key, "started": time.time(),
                        "extra": extra or {}}
            self._save("run", self.run)
        return str(self.run["run"])

    # ---- per table -----------------------------------------------------------------------------------------------
    def answer(self, table: str) -> dict[str, Any] | None:
        """Central's answer to the table's buckets: {"site_rows", "central_rows", "prefixes"} (the narrowed
        differing buckets whose rows are asked about next)."""
        return self._load(f"buckets:{table}")

    def save_answer(self, table: str, site_rows: int, central_rows: int, prefixes: list[str]) -> None:
        self._save(f"buckets:{table}", {"site_rows": site_rows, "central_rows": central_rows, "prefixes": prefixes})

    def rows(self, table: str) -> tuple[set[str], dict[str, State], set[str]]:
        """The buckets already asked about, the rows' states so far and the rows central edited too."""
        kept = self._load(f"rows:{table}") or {}
        states = {u: (str(s[0]), s[1], s[2]) for u, s in (kept.get("states") or {}).items()}
        return set(kept.get("asked") or ()), states, set(kept.get("edited") or ())

    def save_rows(self, table: str, asked: set[str], states: dict[str, State], edited: set[str]) -> None:
        self._save(f"rows:{table}", {"asked": sorted(asked), "states": states, "edited": sorted(edited)})

    # ---- storage -------------------------------------------------------------------------------------------------
    def _load(self, name: str) -> Any:
        row = self.conn.execute("SELECT value FROM progress WHERE purpose = ? AND name = ?",
                                (self.purpose, name)).fetchone()
        return orjson.loads(row[0]) if row else None

    def _save(self, name: str, value: Any) -> None:
        self.conn.execute("INSERT INTO progress (purpose, name, value) VALUES (?, ?, ?) ON CONFLICT(purpose, name) "
                          "DO UPDATE SET value = excluded.value", (self.purpose, name, orjson.dumps(value)))

    def clear(self) -> None:
        """Forget the run (it finished, or it is not the one to resume)."""
        self.conn.execute("DELETE FROM progress WHERE purpose = ?", (self.purpose,))
        self.run = None
        self.resuming = False

    def close(self) -> None:
        self.conn.close()
