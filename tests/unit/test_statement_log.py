"""devtools/statement_log.py: what scripts/bench-floor records of `dbsync apply` is what it replays."""

from __future__ import annotations

from typing import Any

import pymysql

from devtools import statement_log


class FakeServer:
    """Connections that keep what they were sent, in order, across all of them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []
        self.opened: list[bool] = []

    def connect(self, autocommit: bool) -> Any:
        number = len(self.opened)
        self.opened.append(autocommit)
        server = self

        class Conn:
            def query(self, text: bytes) -> None:
                server.sent.append((number, "Q", text))

            def commit(self) -> None:
                server.sent.append((number, "C", b""))

            def rollback(self) -> None:
                server.sent.append((number, "R", b""))

            def close(self) -> None:
                pass

        return Conn()


def _recorded(tmp_path: Any, monkeypatch: Any) -> str:
    """A log written by the recorder as PyMySQL's connection methods call it (no server: the originals are
    replaced by no-ops before the recorder wraps them)."""
    cls = pymysql.connections.Connection
    for name in ("query", "commit", "rollback"):
        monkeypatch.setattr(cls, name, lambda self, *a, **k: None)
    path = str(tmp_path / "statements.log")
    close = statement_log.install(path)
    apply_conn, other = cls(defer_connect=True, autocommit=False), cls(defer_connect=True, autocommit=True)
    apply_conn.query("SET time_zone = '+00:00'")
    other.query("SELECT GET_LOCK('dbsync:s', 30)")
    apply_conn.query("SELECT uuid, obs_id FROM obs WHERE uuid IN ('a')")
    apply_conn.query("INSERT INTO obs (uuid, comments) VALUES ('a', 'ção \\'x\\'')")
    apply_conn.query("  update obs SET comments = NULL")
    other.query("ALTER TABLE s.archive REORGANIZE PARTITION pmax INTO (PARTITION p1 VALUES LESS THAN (1))")
    apply_conn.commit()
    apply_conn.query("DELETE FROM s.inbox WHERE id IN (1)")
    apply_conn.rollback()
    for conn in (apply_conn, other):
        conn.query("SELECT 1")
    close()
    return path


def test_the_log_holds_every_statement_in_order_with_its_connection(tmp_path, monkeypatch) -> None:
    entries = list(statement_log.read(_recorded(tmp_path, monkeypatch)))
    assert [(e.kind, e.connection) for e in entries] == [
        (b"Q", 0), (b"Q", 1), (b"Q", 0), (b"Q", 0), (b"Q", 0), (b"Q", 1), (b"C", 0), (b"Q", 0), (b"R", 0),
        (b"Q", 0), (b"Q", 1)]
    assert entries[3].text == "INSERT INTO obs (uuid, comments) VALUES ('a', 'ção \\'x\\'')".encode()
    assert [e.autocommit for e in entries[:2]] == [False, True]


def test_a_replay_sends_them_in_order_on_their_own_connections_and_the_writes_alone(tmp_path, monkeypatch) -> None:
    path = _recorded(tmp_path, monkeypatch)
    whole = FakeServer()
    done = statement_log.replay(path, whole.connect)
    assert whole.opened == [False, True]  # each connection as it was: apply's in a transaction
    assert [(n, k) for n, k, _ in whole.sent] == [(0, "Q"), (0, "Q"), (0, "Q"), (0, "Q"), (1, "Q"), (0, "C"),
                                                  (0, "Q"), (0, "R"), (0, "Q"), (1, "Q")]
    assert not any(b"GET_LOCK" in text for _, _, text in whole.sent)  # the replaying client is alone
    assert done.statements == 10 and done.seconds >= 0 and "COMMIT" in done.by_kind
    writes = FakeServer()
    statement_log.replay(path, writes.connect, writes_only=True)
    assert [(k, t.split()[0].upper()) for _, k, t in writes.sent if k == "Q"] == [
        ("Q", b"INSERT"), ("Q", b"UPDATE"), ("Q", b"DELETE")]
    assert [k for _, k, _ in writes.sent] == ["Q", "Q", "C", "Q", "R"] and writes.opened == [False]
