"""GTID positions: what lets a checkpoint survive the site failing over to a replica.

A file/position checkpoint means nothing on another server, but a GTID position does: it names the transactions
already captured, whichever server's binlog holds them. Every record's source carries `gtid_pos`, the position
before its transaction (a heartbeat's: at its boundary), so the checkpoint publish saves has it too.

- MariaDB: the last GTID of each replication domain, ``domain-server-seq`` joined by commas (as `gtid_binlog_pos`);
  a GTID is covered when its domain's sequence number has been reached.
- MySQL (`gtid_mode=ON`): the set of GTIDs executed (as `gtid_executed`: ``uuid:1-100:102``).

`locate` finds where a server's binlog continues a GTID position: the first transaction it does not cover.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

from pymysqlreplication.event import (
    GtidEvent,
    MariadbGtidEvent,
    MariadbGtidListEvent,
    PreviousGtidsEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.gtid import Gtid, GtidSet

from dbsync_cli import exitcodes
from dbsync_cli.i18n import _
from dbsync_cli.sender import binlog, servers
from dbsync_cli.sender.binlog import CaptureSettings, CaptureStop, Position, PositionLost

log = logging.getLogger("dbsync.gtid")


class Gtids(Protocol):
    def covers(self, gtid: str) -> bool: ...
    def knows(self, gtid: str) -> bool: ...
    def add(self, gtid: str) -> None: ...
    def covers_all(self, other: Gtids) -> bool: ...
    def covers_known(self, other: Gtids) -> bool: ...
    def restore(self, text: str) -> None: ...


class MariaDbGtids:
    """Per replication domain, the last GTID: sequence numbers only grow within a domain."""

    def __init__(self, text: str = ""):
        self.domains: dict[int, tuple[int, int]] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            domain, server, seq = (int(n) for n in part.split("-"))
            if seq >= self.domains.get(domain, (0, -1))[1]:
                self.domains[domain] = (server, seq)

    def covers(self, gtid: str) -> bool:
        domain, _server, seq = (int(n) for n in gtid.split("-"))
        return domain in self.domains and self.domains[domain][1] >= seq

    def knows(self, gtid: str) -> bool:
        """Whether `gtid`'s replication domain is in this position."""
        return int(gtid.split("-", maxsplit=1)[0]) in self.domains

    def add(self, gtid: str) -> None:
        domain, server, seq = (int(n) for n in gtid.split("-"))
        if seq >= self.domains.get(domain, (0, -1))[1]:
            self.domains[domain] = (server, seq)

    def covers_all(self, other: Gtids) -> bool:
        assert isinstance(other, MariaDbGtids)
        return all(self.covers(f"{d}-{s}-{n}") for d, (s, n) in other.domains.items())

    def covers_known(self, other: Gtids) -> bool:
        """Whether `other` goes beyond this position in none of this position's domains."""
        assert isinstance(other, MariaDbGtids)
        return all(self.covers(f"{d}-{s}-{n}") for d, (s, n) in other.domains.items() if d in self.domains)

    def restore(self, text: str) -> None:
        self.domains = MariaDbGtids(text).domains

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(self.domains.items()))


class MySqlGtids:
    """The set of GTIDs executed (mysql-replication's GtidSet; its set-in-set test is not used: it compares
    whole intervals)."""

    def __init__(self, text: str = ""):
        self.set = GtidSet(text.replace("\n", "") or None)

    def covers(self, gtid: str) -> bool:
        return Gtid(gtid) in self.set

    def knows(self, gtid: str) -> bool:
        """Whether `gtid`'s server uuid is in this set."""
        return Gtid(gtid).sid in {part.sid for part in self.set.gtids}

    def add(self, gtid: str) -> None:
        if not self.covers(gtid):  # the library refuses an overlapping interval
            self.set = self.set + Gtid(gtid)

    def covers_all(self, other: Gtids) -> bool:
        assert isinstance(other, MySqlGtids)
        return all(any(part in mine for mine in self.set.gtids) for part in other.set.gtids)

    def covers_known(self, other: Gtids) -> bool:
        """Whether `other` holds no GTID of this set's server uuids that this set lacks."""
        assert isinstance(other, MySqlGtids)
        mine = {part.sid for part in self.set.gtids}
        return all(any(part in have for have in self.set.gtids) for part in other.set.gtids if part.sid in mine)

    def restore(self, text: str) -> None:
        self.set = MySqlGtids(text).set

    def __str__(self) -> str:
        return str(self.set)


def parse(flavor: str, text: str) -> Gtids:
    return MariaDbGtids(text) if flavor == "mariadb" else MySqlGtids(text)


def flavor_of(conn: Any) -> str | None:
    """mariadb, mysql (gtid_mode ON) or None: a MySQL server without GTIDs has no position a replica shares."""
    found = servers.server(conn).flavor
    if found == "mariadb":
        return found
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_mode")
        (mode,) = cur.fetchone()
    return "mysql" if str(mode).upper() == "ON" else None


def executed(conn: Any, flavor: str) -> Gtids:
    """Every transaction the server's binlog holds (MariaDB gtid_binlog_pos, MySQL gtid_executed)."""
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos" if flavor == "mariadb" else "SELECT @@GLOBAL.gtid_executed")
        (text,) = cur.fetchone()
    return parse(flavor, str(text or ""))


def state_at(settings: CaptureSettings, conn: Any, flavor: str | None, position: Position) -> Gtids | None:
    """The GTID position of the binlog at `position` (a transaction boundary); None without GTIDs."""
    if flavor is None:
        return None
    if flavor == "mariadb":
        with conn.cursor() as cur:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (position.file, position.pos))
            (text,) = cur.fetchone()
        if text is not None:
            return parse(flavor, str(text))
    return _scan(settings, flavor, position.file, stop_at=position).state


@dataclass
class _Scan:
    state: Gtids  # the GTID position where the scan stopped
    first: tuple[Position, str] | None  # the first transaction not covered by `target` (start, its GTID)
    end: Position  # the end of the last event read
    foreign: list[str]  # before the checkpoint's last transaction: of domains (MySQL: servers) `target` does not know
    seen: dict[tuple[int, int], int]  # MariaDB: the last sequence number read per (domain, server id)


def _scan(settings: CaptureSettings, flavor: str, file: str, *, stop_at: Position | None = None,
          target: Gtids | None = None, header_only: bool = False) -> _Scan:
    """Read `file` from its start (its GTID list gives the position before it) up to `stop_at`, or on to the end of
    the binlog until a transaction `target` does not cover: one of a domain (server) `target` knows, or any once
    the scan has passed this server's copy of `target`'s last transactions (what the new server wrote after the
    failover). Before that point, transactions of domains `target` does not know were written on this server
    alone while it replicated: they are listed in `foreign`."""
    reader = binlog.reader(settings, file, 4, blocking=False, only_events=[
        MariadbGtidListEvent, PreviousGtidsEvent, MariadbGtidEvent, GtidEvent, XidEvent, QueryEvent, RotateEvent])
    state = parse(flavor, "")
    end = Position(file, 4)
    foreign: list[str] = []
    reached = False  # the scan is past this server's copy of `target`'s last transactions
    seen: dict[tuple[int, int], int] = {}

    def saw(gtid: str) -> None:
        if flavor == "mariadb":
            domain, server, seq = (int(n) for n in gtid.split("-"))
            seen[domain, server] = max(seq, seen.get((domain, server), -1))

    try:
        for event in reader:
            if isinstance(event, RotateEvent):
                continue
            here = Position(reader.log_file, event.packet.log_pos - event.packet.event_size)
            if stop_at is not None and (here.file, here.pos) >= (stop_at.file, stop_at.pos):
                break
            if header_only and isinstance(event, MariadbGtidEvent | GtidEvent | XidEvent | QueryEvent):
                break
            if isinstance(event, MariadbGtidListEvent) and here.file == file:
                state = parse(flavor, ",".join(g.gtid for g in event.gtid_list))
                for listed in event.gtid_list:
                    saw(listed.gtid)
                reached = target is not None and state.covers_all(target)
            elif isinstance(event, PreviousGtidsEvent) and here.file == file:
                state = parse(flavor, previous_gtids(str(event._previous_gtids)))
                reached = target is not None and state.covers_all(target)
            elif isinstance(event, MariadbGtidEvent | GtidEvent):
                if target is not None and not target.covers(event.gtid):
                    if reached or target.knows(event.gtid):
                        return _Scan(state, (here, event.gtid), end, foreign, seen)
                    foreign.append(event.gtid)
                state.add(event.gtid)
                saw(event.gtid)
                if target is not None and not reached:
                    reached = state.covers_all(target)
            end = Position(reader.log_file, event.packet.log_pos)
    finally:
        reader.close()
    return _Scan(state, None, end, foreign, seen)


@dataclass(frozen=True)
class Located:
    """Where another server's binlog continues a checkpoint (`locate`)."""
    position: Position  # the transaction to go on from
    skip_rows: int  # its rows sent already (the checkpoint was inside it)
    gtid_pos: str  # the GTID position there
    not_sent: list[str]  # transactions passed over: of domains (servers) the sender never read, before that point


def locate(settings: CaptureSettings, conn: Any, checkpoint: dict[str, Any]) -> Located | None:
    """Where this server's binlog continues `checkpoint` by its GTID position, how many rows of that transaction
    were sent already and the GTID position there; None when the checkpoint or the server has no GTID position.

    Transactions of replication domains (MySQL: server uuids) the checkpoint does not know that lie before this
    server's copy of the checkpoint's last transaction were never in the binlog the sender read: written on this
    server alone while it replicated. They are logged, not read; everything after that point is.

    Raises CaptureStop (exit 10) when this server lacks transactions the checkpoint covers (it is behind, or a replica
    without log_slave_updates: no snapshot either, it would send older rows than central has); PositionLost when
    it purged the binlog that follows them or does not hold them at all (not a replica of the site's server)."""
    text = checkpoint.get("gtid_pos")
    flavor = flavor_of(conn) if isinstance(text, str) and text else None
    if flavor is None or not isinstance(text, str):
        return None
    old = Position(checkpoint["file"], int(checkpoint["pos"]))
    target = parse(flavor, text)
    if not executed(conn, flavor).covers_all(target):
        raise CaptureStop(_("this server's binlog lacks transactions the checkpoint covers (GTID position {wanted}, "
                            "the server's {executed}): let it catch up with the server it replicates (with "
                            "log_slave_updates on) and start again, or point the sender back at that server").format(
            wanted=text, executed=executed(conn, flavor)),
                          exitcodes.BINLOG_PURGED)
    file = _first_file(settings, flavor, list(binlog.binary_log_sizes(conn)), target)
    if file is None:
        raise PositionLost(old, f"the server has purged the binlog after GTID position {text}", restarted=False)
    found = _scan(settings, flavor, file, target=target)
    if isinstance(target, MariaDbGtids):  # sequence numbers restart after RESET MASTER: the very GTIDs must be there
        absent = [f"{d}-{s}-{n}" for d, (s, n) in target.domains.items() if found.seen.get((d, s), -1) < n]
        if absent:
            raise PositionLost(old, f"this server's binlog does not hold {', '.join(absent)}, the last "
                                    f"transaction the checkpoint covers: it is not a replica of the site's server",
                               restarted=True)
    if found.foreign:
        log.warning("%d transactions before this server's copy of GTID position %s are of replication domains "
                    "(servers) the sender never read (%s … %s): written on this server alone while it replicated, "
                    "not sent", len(found.foreign), text, found.foreign[0], found.foreign[-1])
    for foreign in found.foreign:
        target.add(foreign)
    if found.first is None:
        return Located(found.end, 0, str(target), found.foreign)
    position, first_gtid = found.first
    same = checkpoint.get("gtid") == first_gtid and not checkpoint.get("snapshot")
    return Located(position, int(checkpoint.get("row", -1)) + 1 if same else 0, str(target), found.foreign)


def _first_file(settings: CaptureSettings, flavor: str, files: list[str], target: Gtids) -> str | None:
    """The binlog file holding this server's copy of `target`'s last transactions: the newest one that starts
    before them and after nothing `target` lacks in its domains; the oldest when it starts exactly at `target`
    (nothing in between was purged); None when the files after `target` were purged."""
    for file in reversed(files):
        start = _scan(settings, flavor, file, header_only=True).state
        if target.covers_known(start) and not start.covers_all(target):
            return file
    if files:
        oldest = _scan(settings, flavor, files[0], header_only=True).state
        if str(oldest) == str(target):
            return files[0]
    return None


def previous_gtids(text: str) -> str:
    """mysql-replication's PreviousGtidsEvent text (``uuid-:['1-101']``: 1.0.17 puts a dash before the colon;
    interval ends exclusive as in the binlog) as a GTID set (``uuid:1-100``)."""
    parts = []
    for sid, intervals in re.findall(r"([0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})-?:\[([^\]]*)\]", text):
        spans = [tuple(int(n) for n in span.split("-")) for span in re.findall(r"\d+-\d+", intervals)]
        parts.append(sid + "".join(f":{a}-{b - 1}" if b - 1 > a else f":{a}" for a, b in spans))
    return ",".join(parts)
