"""NDJSON in and out: one record per line, bad lines reported with their number and skipped, never fatal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import orjson

from dbsync_cli import wire
from dbsync_cli.wire import dumps

log = logging.getLogger("dbsync.records")


def read(stream: IO[bytes], source: str = "stdin", max_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield objects from NDJSON; a malformed line gets one error line naming where and why, then is skipped."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        if max_bytes is not None and len(line) > max_bytes:
            log.error("%s line %d: record of %d bytes exceeds the %d-byte limit; skipped", source, number, len(line), max_bytes)
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            log.error("%s line %d: malformed JSON (%s); skipped", source, number, str(exc).split(":")[0])
            continue
        if not isinstance(record, dict):
            log.error("%s line %d: expected a JSON object, got %s; skipped", source, number, type(record).__name__)
            continue
        yield record


def write(records: Iterable[dict[str, Any]], stream: IO[bytes] | None = None,
          encode: Callable[[Any], bytes] = dumps) -> int:
    """Write records as NDJSON; flush on heartbeats and every few records so a downstream pipe never waits long."""
    out = stream or sys.stdout.buffer
    count = 0
    for record in records:
        out.write(encode(record) + b"\n")
        count += 1
        if record.get("op") == wire.HEARTBEAT or count % 64 == 0:
            out.flush()
    out.flush()
    return count
