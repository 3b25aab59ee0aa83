"""Ceilings for `scripts/bench`: the same work as a dbsync stage with nothing of dbsync in the way, measured in the
same run on the same data, so that every stage is reported as a ratio to what the parts below it can do.

- raw decode: python-mysql-replication reading the same binlog range (this database's row events, as capture reads
  them), touching every row, doing nothing else, in a process of its own as capture runs: its CPU seconds (start-up
  included) against capture's are the one capture ÷ decoder figure of `scripts/bench` and `scripts/bench-sender
  --pairs`; and the same with dbsync's row reader (what capture decodes with): capture ÷ that is what capture adds
- raw STOMP send: persistent SENDs, a RECEIPT per 500 frames: of the very frames `dbsync publish` put on the broker
  (its envelopes: the same rows per message, the same deflated bytes, taken off its queue by the raw receive), and
  of the rows' plain JSON one row per message (what wire version 1 would cost)
- raw STOMP receive: a client-individual subscriber that acknowledges every frame, of publish's frames (kept, for
  the raw send above) or of one-row messages
- id-mapped executemany: the rows apply wrote, copied into an empty central schema with their ids (no uuid
  lookups), executemany 500 rows per COMMIT, foreign key checks off
- a byte-counting TCP proxy, to see what crosses a clinic's link
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import stomp

from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.db import DbParams


@dataclass
class Ceiling:
    name: str
    rows: int
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ceiling": self.name, "rows": self.rows, "seconds": round(self.seconds, 2),
                "rows_per_second": round(self.rows / self.seconds) if self.seconds else 0, "note": self.note,
                **self.extra}


# ------------------------------------------------------------------------------------------------ binlog decode

_DECODER = """
import json, sys
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent
a = json.loads(sys.stdin.read())
if a["reader"] == "dbsync":
    from dbsync_cli.sender import row_reader
    assert row_reader.install()
stream = BinLogStreamReader(connection_settings=a["db"], server_id=a["server_id"], log_file=a["start"]["file"],
                            log_pos=a["start"]["pos"], resume_stream=True, blocking=False,
                            only_schemas=[a["schema"]] if a["schema"] else None,
                            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent])
rows = 0
for event in stream:
    rows += len(event.rows)
stream.close()
print(json.dumps({"rows": rows}))
"""


def raw_decode(repl: DbParams, start: dict[str, Any], server_id: int, reader: str = "library") -> Ceiling:
    """Every row event of `repl`'s database from `start` (file, pos) to the end of the binlog, decoded and touched,
    in a process of its own (the password on its stdin): wall seconds, and its CPU seconds (user + system, wait4)
    in `extra`, start-up included as capture's are. `reader`: the library's own row reader, or "dbsync"'s
    (dbsync_cli/sender/row_reader.py, which capture uses): capture over the second is what capture adds to
    decoding."""
    request = json.dumps({"db": {"host": repl.host, "port": repl.port, "user": repl.user, "passwd": repl.password},
                          "start": start, "server_id": server_id, "schema": repl.database, "reader": reader})
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _DECODER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(request.encode())
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()  # a line, and a traceback at most
    _pid, status, usage = os.wait4(proc.pid, 0)  # reaped here, for its own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    proc.stdout.close()
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"raw decode failed: {err.decode(errors='replace')[-2000:]}")
    name = "raw decode (python-mysql-replication)" if reader == "library" else \
        "raw decode (python-mysql-replication, dbsync's row reader)"
    return Ceiling(name, int(json.loads(out)["rows"]), seconds,
                   "same binlog range, this database's rows decoded and counted, nothing else; a process of its own",
                   {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2)})


# ------------------------------------------------------------------------------------------------------- STOMP

class _Receipts(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.got: set[str] = set()
        self.frames: list[Any] = []

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.got.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def wait_receipt(self, receipt: str, timeout: float = 120) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: receipt in self.got, timeout):
                raise RuntimeError(f"no receipt {receipt} within {timeout} s")


def raw_send(broker: BrokerSettings, destination: str, lines: list[bytes], rows_per_message: int,
             receipt_every: int = 500) -> Ceiling:
    """Persistent SENDs of the messages' JSON (N rows joined by newlines per message), a receipt per batch."""
    frames = [Frame(b"\n".join(lines[i:i + rows_per_message]), {}) for i in range(0, len(lines), rows_per_message)]
    seconds = _send_all(broker, destination, frames, receipt_every)
    return Ceiling(f"raw STOMP send, {rows_per_message} row(s)/message", len(lines), seconds,
                   f"persistent, receipt per {receipt_every} frames, uncompressed",
                   {"messages": len(frames)})


def _send_all(broker: BrokerSettings, destination: str, frames: list[Frame], receipt_every: int) -> float:
    """Persistent SENDs of `frames` (their own headers kept), a receipt per `receipt_every`: the seconds taken."""
    listener = _Receipts()
    conn = open_connection(broker, listener=listener)
    started = time.perf_counter()
    try:
        for start in range(0, len(frames), receipt_every):
            part = frames[start:start + receipt_every]
            receipt = uuidlib.uuid4().hex
            for index, frame in enumerate(part):
                headers = {**frame.headers, "persistent": "true", "destination-type": "ANYCAST"}
                if index == len(part) - 1:
                    headers["receipt"] = receipt
                conn.send(destination=destination, body=frame.body, headers=headers)
            listener.wait_receipt(receipt)
        return time.perf_counter() - started
    finally:
        conn.disconnect()


def raw_receive(broker: BrokerSettings, destination: str, frames: int, rows: int, ack_every: int = 1,
                window: int = 1_048_576, rows_per_message: float = 1, keep: list[Frame] | None = None) -> Ceiling:
    """A subscriber that takes `frames` frames and acknowledges each (client-individual) or every `ack_every`
    (client, cumulative); no database. With `keep`, each frame's body and dbsync headers are appended to it (the
    rows a frame holds are its `dbsync-rows` header), for `raw_send_frames`."""
    listener = _Receipts()
    conn = open_connection(broker, listener=listener, auto_decode=False)
    mode = "client-individual" if ack_every == 1 else "client"
    started = time.perf_counter()
    taken = 0
    try:
        conn.subscribe(destination, id="ceiling", ack=mode,
                       headers={"subscription-type": "ANYCAST", "consumer-window-size": str(window)})
        deadline = time.monotonic() + 600
        while taken < frames and time.monotonic() < deadline:
            with listener.cond:
                listener.cond.wait_for(lambda: listener.frames, 1.0)
                batch, listener.frames = listener.frames, []
            for frame in batch:
                taken += 1
                if keep is not None:
                    keep.append(Frame.of(frame))
                if ack_every == 1 or taken % ack_every == 0 or taken == frames:
                    conn.ack(frame.headers["ack"])
        seconds = time.perf_counter() - started
    finally:
        conn.disconnect()
    if taken < frames:
        raise RuntimeError(f"raw receive: {taken} of {frames} frames")
    what = "an ACK per frame" if ack_every == 1 else f"one ACK per {ack_every}"
    return Ceiling(f"raw STOMP receive, {per_message(rows_per_message)} row(s)/message", rows, seconds,
                   f"{what}, no database", {"messages": frames})


def per_message(rows_per_message: float) -> str:
    return f"{rows_per_message:.0f}" if float(rows_per_message).is_integer() else f"{rows_per_message:.1f}"


@dataclass(frozen=True)
class Frame:
    """One broker message as a consumer got it: its body and the headers its sender set (dbsync's own and the
    duplicate id), not the broker's (message-id, subscription, ack, the validated user …)."""

    body: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, frame: Any) -> Frame:
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        return cls(body, {k: v for k, v in frame.headers.items() if k.startswith(SENDER_HEADERS)})

    @property
    def rows(self) -> int:
        try:
            return max(1, int(self.headers.get("dbsync-rows") or 1))
        except ValueError:
            return 1


SENDER_HEADERS = ("dbsync-", "_AMQ_DUPL_ID")


def frames_figures(frames: list[Frame]) -> dict[str, Any]:
    """What publish's envelopes held on this workload: rows and bytes per broker message."""
    rows = sum(f.rows for f in frames)
    size = sum(len(f.body) for f in frames)
    deflated = sum(1 for f in frames if f.headers.get("dbsync-encoding") == "deflate")
    return {"messages": len(frames), "rows": rows, "rows_per_message": round(rows / len(frames), 1) if frames else 0,
            "body_bytes": size, "body_bytes_per_message": round(size / len(frames)) if frames else 0,
            "body_bytes_per_row": round(size / rows, 1) if rows else 0, "deflated_messages": deflated}


def raw_send_frames(broker: BrokerSettings, destination: str, frames: list[Frame],
                    receipt_every: int = 500) -> Ceiling:
    """Persistent SENDs of exactly these frames (publish's envelopes: same rows per message, same bytes, same
    headers), a receipt per `receipt_every` frames."""
    rows = sum(f.rows for f in frames)
    seconds = _send_all(broker, destination, frames, receipt_every)
    return Ceiling(f"raw STOMP send, {per_message(rows / len(frames) if frames else 0)} row(s)/message", rows,
                   seconds, f"publish's own envelopes resent byte for byte, persistent, receipt per {receipt_every} "
                   "frames", {"messages": len(frames)})


def queue_depth(broker: BrokerSettings, queue: str) -> int:
    """Messages waiting on an Artemis queue (its management address): what a stage put on the broker."""
    from dbsync_cli.broker_queue import queue_stats

    return queue_stats(broker, queue, timeout=30).messages


# ---------------------------------------------------------------------------------------------------- database

def mapped_rows(source: DbParams, target: DbParams, tables: list[str]) -> dict[str, tuple[list[str], list[tuple]]]:
    """The rows of `tables` in `source` whose primary key `target` does not have yet (what apply wrote), with
    their ids: read before the clock starts."""
    out: dict[str, tuple[list[str], list[tuple]]] = {}
    with source.connect() as src, target.connect() as dst, src.cursor() as scur, dst.cursor() as dcur:
        for table in tables:
            scur.execute("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA=%s AND "
                         "TABLE_NAME=%s AND CONSTRAINT_NAME='PRIMARY' ORDER BY ORDINAL_POSITION",
                         (source.database, table))
            keys = [r[0] for r in scur.fetchall()]
            if len(keys) != 1:
                continue
            dcur.execute(f"SELECT COALESCE(MAX(`{keys[0]}`), 0) FROM `{table}`")  # noqa: S608 - schema names
            (top,) = dcur.fetchone() or (0,)
            scur.execute(f"SELECT * FROM `{table}` WHERE `{keys[0]}` > %s ORDER BY `{keys[0]}`", (top,))  # noqa: S608
            rows = list(scur.fetchall())
            if rows:
                out[table] = ([d[0] for d in scur.description], rows)
    return out


def mapped_executemany(target: DbParams, rows: dict[str, tuple[list[str], list[tuple]]],
                       per_commit: int = 500) -> Ceiling:
    """The rows apply wrote, inserted with their ids into `target`: executemany, `per_commit` rows a COMMIT."""
    total = sum(len(r) for _, r in rows.values())
    with target.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        started = time.perf_counter()
        for table, (columns, values) in rows.items():
            names = ", ".join(f"`{c}`" for c in columns)
            statement = f"INSERT INTO `{table}` ({names}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
            for i in range(0, len(values), per_commit):
                cur.executemany(statement, values[i:i + per_commit])
                conn.commit()
        seconds = time.perf_counter() - started
    return Ceiling("id-mapped executemany at central", total, seconds,
                   f"the rows apply wrote, ids already mapped, {per_commit} rows/COMMIT, FK checks off")


# ------------------------------------------------------------------------------------------------------- proxy

class ByteCounter:
    """A TCP proxy on 127.0.0.1 in front of `target`: counts the bytes each way (TLS passes through untouched)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = 0  # client → server
        self.down = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        self.server.close()


@contextmanager
def byte_counter(host: str, port: int) -> Iterator[ByteCounter]:
    counter = ByteCounter(host, port)
    try:
        yield counter
    finally:
        counter.close()
