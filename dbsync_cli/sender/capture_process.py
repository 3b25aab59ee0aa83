"""Capture in a child process: the sender's binlog decoder and its enrich + publish then run on two cores.

The decoder (python-mysql-replication, pure Python) is three quarters of capture's time, and capture, enrich and
publish in one process share one core under the GIL. In a child process capture runs beside the rest, as it does
in `dbsync capture | dbsync enrich | dbsync publish`. Events cross as the same NDJSON lines that pipe carries, so
the combined sender and the pipe give enrich the same events.

The parent owns the child: it stops it when the sender stops or its generator is closed, and the child dies with
the parent (PR_SET_PDEATHSIG; a write to the closed pipe at the next heartbeat otherwise). A fault in the child
comes back as the same exception (CaptureStop with its exit code, a database error with its server code), so
supervision treats it as it would in one process. The child's log records are logged by the parent's handlers.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pymysql

from dbsync_cli import wire
from dbsync_cli.sender.binlog import CaptureSettings, CaptureStop

#: events sent to the parent in one pipe message at most (a heartbeat is sent at once)
CHUNK_EVENTS = 64
#: pipe messages read ahead of enrich at most (each up to CHUNK_EVENTS events: about 5 MB)
READ_AHEAD_FRAMES = 64
_DATA, _LOG, _STOP, _DB_ERROR, _ERROR, _END = b"D", b"L", b"S", b"B", b"X", b"E"


class CaptureFailed(RuntimeError):
    """The capture child failed with an error that supervision retries (its type and text in the message)."""


def capture_events(settings: CaptureSettings, checkpoint: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """capture(settings, checkpoint), run in a child process; the events as the `capture` command prints them."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: the parent has threads (stomp.py)
    receiver, sender = context.Pipe(duplex=False)
    child_settings = dataclasses.replace(settings, stop=None)  # type: ignore[arg-type]  # the child has its own
    child = context.Process(target=_child, args=(child_settings, checkpoint, sender, logging.getLogger().level),
                            name="dbsync-capture", daemon=True)
    child.start()
    sender.close()
    ahead = _ReadAhead(receiver)
    stopping = False
    try:
        while True:
            if settings.stop.is_set() and not stopping:
                stopping = True  # capture ends at its next event or heartbeat, like capture in one process
                child.terminate()  # SIGTERM
            try:
                frame = ahead.frames.get(timeout=0.5)
            except queue.Empty:
                continue
            if frame is None:  # the pipe ended without the end frame
                child.join(5)
                raise CaptureFailed(f"the capture process ended early (exit code {child.exitcode})")
            kind, body = frame[:1], frame[1:]
            if kind == _DATA:
                for line in body.split(b"\n"):
                    yield orjson.loads(line)
            elif kind == _LOG:
                name, level, text = orjson.loads(body)
                logging.getLogger(name).log(level, "%s", text)
            elif kind == _END:
                return
            else:
                raise _fault(kind, orjson.loads(body))
    finally:
        ahead.done.set()
        if child.is_alive():
            child.terminate()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join(5)
        ahead.thread.join(5)  # the pipe has ended: the reader is done
        receiver.close()


class _ReadAhead:
    """The child's frames read on a thread of their own into a bounded queue, so that the child decodes on while
    this process enriches and publishes. Read only when asked, the pipe (64 kB, less than one frame of events) held
    the child back at every frame: the two processes took turns instead of running side by side (`dbsync sender`
    took 10 s of wall time for 11 s of CPU on two cores). At most READ_AHEAD_FRAMES frames wait: bounded memory."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.frames: queue.Queue[bytes | None] = queue.Queue(READ_AHEAD_FRAMES)
        self.done = threading.Event()  # the consumer is gone: stop reading
        self.thread = threading.Thread(target=self._run, name="dbsync-capture-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                if not self._put(self.conn.recv_bytes()):
                    return
        except (EOFError, OSError):
            pass
        self._put(None)  # the end of the pipe

    def _put(self, frame: bytes | None) -> bool:
        while not self.done.is_set():
            try:
                self.frames.put(frame, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False


def _fault(kind: bytes, detail: dict[str, Any]) -> Exception:
    if kind == _STOP:
        return CaptureStop(detail["message"], detail["code"])
    if kind == _DB_ERROR:
        return pymysql.err.OperationalError(*detail["args"])
    return CaptureFailed(f"{detail['type']}: {detail['message']}")


class _PipeLog(logging.Handler):
    """The child's records, sent to the parent, which formats, masks and writes them with its own handlers."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):  # the parent is gone: the next event write ends the child
            self.conn.send_bytes(_LOG + orjson.dumps([record.name, record.levelno, record.getMessage()]))


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: it ends at its next write to the closed pipe
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child(settings: CaptureSettings, checkpoint: dict[str, Any] | None,
           conn: multiprocessing.connection.Connection, level: int) -> None:
    from dbsync_cli.sender.capture import capture  # imported here: the parent need not load the decoder

    _die_with_parent()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # a terminal's ^C reaches the group: the parent decides
    root = logging.getLogger()
    root.handlers[:] = [_PipeLog(conn)]
    root.setLevel(level)
    settings = dataclasses.replace(settings, stop=stop)
    chunk: list[bytes] = []
    try:
        for event in capture(settings, checkpoint):
            chunk.append(wire.dumps_event(event))
            if len(chunk) >= CHUNK_EVENTS or event.get("op") == wire.HEARTBEAT:
                conn.send_bytes(_DATA + b"\n".join(chunk))
                chunk = []
        if chunk:
            conn.send_bytes(_DATA + b"\n".join(chunk))
        conn.send_bytes(_END)
    except (BrokenPipeError, EOFError):
        return  # the parent is gone
    except CaptureStop as exc:
        _send(conn, _STOP, {"message": str(exc), "code": exc.code}, chunk)
    except pymysql.err.OperationalError as exc:
        _send(conn, _DB_ERROR, {"args": [a if isinstance(a, int | str) else str(a) for a in exc.args]}, chunk)
    except Exception as exc:  # noqa: BLE001 - every other fault goes to the parent, which decides
        _send(conn, _ERROR, {"type": type(exc).__name__, "message": str(exc)}, chunk)
    finally:
        conn.close()


def _send(conn: multiprocessing.connection.Connection, kind: bytes, detail: dict[str, Any],
          chunk: list[bytes]) -> None:
    """The events read before the fault first (the parent publishes them), then the fault."""
    try:
        if chunk:
            conn.send_bytes(_DATA + b"\n".join(chunk))
        conn.send_bytes(kind + orjson.dumps(detail))
    except (BrokenPipeError, EOFError, OSError):
        pass
