"""The per-entity order guard: where in its site's binlog the last applied change of an entity came from.

Artemis can hand out a killed consumer's unacknowledged messages *after* newer ones, so a message may reach apply
after a later change of the same entity. Dates cannot always tell (an obs has no date_changed; a redelivered
create carries no date at all), so apply keeps the source position (binlog file, position, row) of the change it
applied last, per table and uuid, in `entity_hash`, and skips a message that comes from earlier in the same site's
binlog. A delete keeps its position as a tombstone, so an older create cannot bring the row back.

Both the position *and* the sender's enrich time (`sent`) must be older to skip: a message re-sent after a sender
crash has an old position but was loaded later (its data is the newer row), and a site whose binlog restarted
(RESET MASTER, a rebuilt server) sends positions that go backwards with a newer `sent`.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

COLUMNS = ("src_site", "src_server_id", "src_file", "src_pos", "src_row", "src_sent")


@dataclass(frozen=True)
class SourcePosition:
    site: str
    server_id: int | None
    file: str
    pos: int
    row: int  # -1 for a snapshot row: before any binlog event at the snapshot's position
    sent: dt.datetime | None

    @classmethod
    def of(cls, message: dict[str, Any]) -> SourcePosition | None:
        """The message's position, or None when it has none we can order by."""
        source = message.get("source")
        if not isinstance(source, dict):
            return None
        file, pos, row = source.get("file"), source.get("pos"), source.get("row", -1)
        if not isinstance(file, str) or not isinstance(pos, int) or not isinstance(row, int) or _seq(file) is None:
            return None
        if source.get("snapshot"):
            row = -1
        server_id = source.get("server_id")
        return cls(str(message.get("site")), server_id if isinstance(server_id, int) else None, file[:255], pos,
                   row, _parse_sent(sent if isinstance(sent := message.get("sent"), str) else None))

    @classmethod
    def from_row(cls, values: tuple[Any, ...]) -> SourcePosition | None:
        """From the COLUMNS of an entity_hash row."""
        site, server_id, file, pos, row, sent = values
        if site is None or file is None or pos is None:
            return None
        return cls(site, server_id, file, int(pos), int(row), sent)

    def row_values(self) -> tuple[Any, ...]:
        return self.site, self.server_id, self.file, self.pos, self.row, self.sent

    def _lineage(self) -> tuple[Any, ...]:
        return self.site, self.server_id, self.file.rsplit(".", 1)[0]

    def _order(self) -> tuple[int, int, int]:
        return _seq(self.file) or 0, self.pos, self.row

    def older_than(self, last: SourcePosition) -> bool:
        """True when this change comes from before `last` in the same binlog and was loaded no later."""
        if self._lineage() != last._lineage() or self.sent is None or last.sent is None:
            return False
        return self._order() < last._order() and self.sent <= last.sent

    def since(self, last: SourcePosition | None) -> SourcePosition:
        """What to store after applying this change: the guard never moves back within one binlog (a re-send from
        an older position keeps the newer position, and takes its own, later, load time)."""
        if last is None or self._lineage() != last._lineage():
            return self
        newest = self if self._order() >= last._order() else last
        sent = max((s for s in (self.sent, last.sent) if s is not None), default=None)
        return SourcePosition(newest.site, newest.server_id, newest.file, newest.pos, newest.row, sent)

    def __str__(self) -> str:
        return f"{self.site} {self.file}:{self.pos}:{self.row}"


def _seq(file: str) -> int | None:
    """mysql-bin.000012 → 12 (binlog files of one server sort by their number)."""
    suffix = file.rsplit(".", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


@functools.lru_cache(maxsize=256)  # the messages of one enrich batch carry one load time
def _parse_sent(value: Any) -> dt.datetime | None:
    """UTC, naive (as stored in DATETIME(3))."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:
            return None
    if not 1000 <= parsed.year <= 9999:  # what DATETIME(3) stores
        return None
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
