"""The statements a dbsync process sends to a server, recorded and replayed: what the server alone costs.

`scripts/bench-floor` records what `dbsync apply` sends to central (every statement's text as PyMySQL sends it, with
its bound values, and every COMMIT and ROLLBACK, per connection) and replays it into a fresh central by a client
that does nothing else: the replay's seconds are what central needs for those statements with no client work at
all, the floor under any client that sends them.

Recording is switched on in a child process by `DBSYNC_STATEMENT_LOG=FILE` with `devtools/statement_hook` first
on its PYTHONPATH (its sitecustomize installs the recorder before dbsync starts). The log holds values of the rows
applied (test data only: never point it at a real central).
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pymysql

ENV = "DBSYNC_STATEMENT_LOG"
_HEAD = struct.Struct(">cBBI")  # kind (Q, C, R), connection number, autocommit (1/0), length of the text

#: statements a replay leaves out: server locks only one applier may hold (the replay's client is alone anyway)
_LOCKS = re.compile(rb"^\s*SELECT\s+(GET_LOCK|RELEASE_LOCK|IS_USED_LOCK)\b", re.IGNORECASE)
#: what "writes only" keeps: changes and their commits, not reads, DDL or session settings
_WRITE = re.compile(rb"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


def install(path: str) -> Any:
    """Record every statement, COMMIT and ROLLBACK of every PyMySQL connection of this process into `path`;
    returns what closes the log (also called at exit)."""
    import atexit

    out: BinaryIO = open(path, "wb")  # noqa: SIM115 - open for the life of the process
    atexit.register(out.close)
    numbers: dict[int, int] = {}
    cls = pymysql.connections.Connection
    query, commit, rollback = cls.query, cls.commit, cls.rollback

    def write(conn: Any, kind: bytes, text: Any) -> None:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
        number = numbers.setdefault(id(conn), len(numbers))
        out.write(_HEAD.pack(kind, number % 256, 1 if conn.autocommit_mode else 0, len(data)) + data)

    def recorded_query(self: Any, sql: Any, unbuffered: bool = False) -> Any:
        write(self, b"Q", sql)
        return query(self, sql, unbuffered)

    def recorded_commit(self: Any) -> Any:
        write(self, b"C", b"")
        return commit(self)

    def recorded_rollback(self: Any) -> Any:
        write(self, b"R", b"")
        return rollback(self)

    cls.query, cls.commit, cls.rollback = recorded_query, recorded_commit, recorded_rollback  # type: ignore[method-assign]
    return out.close


@dataclass(frozen=True)
class Entry:
    kind: bytes  # b"Q" a statement, b"C" COMMIT, b"R" ROLLBACK
    connection: int
    autocommit: bool
    text: bytes


def read(path: str) -> Iterator[Entry]:
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + _HEAD.size <= len(data):
        kind, number, autocommit, size = _HEAD.unpack_from(data, at)
        at += _HEAD.size
        yield Entry(kind, number, bool(autocommit), data[at:at + size])
        at += size


@dataclass
class Replay:
    statements: int = 0
    seconds: float = 0.0  # wall seconds from the first statement to the last reply
    client_cpu: float = 0.0  # this process's CPU seconds meanwhile (sending, reading replies)
    by_kind: dict[str, float] = field(default_factory=dict)  # seconds per statement shape (first words)


def replay(path: str, connect: Any, *, writes_only: bool = False) -> Replay:
    """Send the log's statements, in order, each on its own connection (`connect(autocommit)` opens one), reading
    each reply and doing nothing else. `writes_only`: the apply connection's changes and commits only (its reads,
    DDL and the other connections left out), what the writes alone cost the server."""
    entries = [e for e in read(path) if not (e.kind == b"Q" and _LOCKS.match(e.text))]
    main = max({e.connection for e in entries}, key=lambda n: sum(1 for e in entries if e.connection == n))
    if writes_only:
        entries = [e for e in entries if e.connection == main and (e.kind != b"Q" or _WRITE.match(e.text))]
    conns: dict[int, Any] = {}
    result = Replay()
    try:
        for e in entries:  # connections opened before the clock starts
            if e.connection not in conns:
                conns[e.connection] = connect(e.autocommit)
        began, cpu = time.perf_counter(), time.process_time()
        for e in entries:
            conn = conns[e.connection]
            started = time.perf_counter()
            if e.kind == b"Q":
                conn.query(e.text)
                shape = " ".join(e.text[:80].decode("utf-8", "replace").split()[:3])
            elif e.kind == b"C":
                conn.commit()
                shape = "COMMIT"
            else:
                conn.rollback()
                shape = "ROLLBACK"
            result.by_kind[shape] = result.by_kind.get(shape, 0.0) + time.perf_counter() - started
            result.statements += 1
        result.seconds = time.perf_counter() - began
        result.client_cpu = time.process_time() - cpu
    finally:
        for conn in conns.values():
            conn.close()
    return result


if os.environ.get(ENV):  # imported by devtools/statement_hook/sitecustomize.py in a recorded process
    install(os.environ[ENV])
