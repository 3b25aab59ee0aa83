"""`dbsync verify --repair` at the site: send the differing rows again, then wait until central has them.

1. The missing, different and placeholder rows are sent again as ordinary sync messages (enrich + publish; ids
   `<site>:repair:<run>:<table>:<key>`) and the extra rows deleted by ordinary delete messages, so every receiver
   rule applies: a row edited at central is parked as a conflict (never overwritten), central's own rows are
   refused.
2. Rows added at central that hang off this site's rows are central's own: they are deleted (by central, which
   checks each again) only when `confirm` says so — the operator answered yes, or gave `--delete-added`.
3. The repair then checks the rows it sent again until each is matched, or held at central (a conflict, the retry
   queue), or the timeout passes; the report and the result central stores are these final figures, so a site's
   status no longer says rows differ once the repair has mended them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from dbsync_cli import wire
from dbsync_cli.sender.binlog import current_position
from dbsync_cli.sender.checkpoint import record_dropped
from dbsync_cli.sender.drops import is_dropped
from dbsync_cli.sender.file_lane import queue_files
from dbsync_cli.sender.publish import Publisher
from dbsync_cli.sender.settings import publish_settings
from dbsync_cli.sql import chunks

if TYPE_CHECKING:
    from dbsync_cli.config import Config
    from dbsync_cli.openmrs import SchemaModel
    from dbsync_cli.sender.enrich import Enricher
    from dbsync_cli.verify_report import TableReport, VerifyReport

log = logging.getLogger("dbsync.verify")

#: the kinds a repair sends again as rows; "extra" rows it deletes
RESENT = ("missing", "different", "placeholders")
ADDED = "added_at_central"


class Verifier(Protocol):
    """What a repair needs of the verifier that found the rows (sender/verify.py's Verifier)."""

    cfg: Config
    site: str
    model: SchemaModel
    enricher: Enricher
    rows: Any  # SiteRows
    run_id: str
    timeout: float
    settle: float

    def call(self, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def ask(self, name: str, rows: dict[str, str | None], prefixes: list[str], out: TableReport,
            states: dict[str, tuple[str, str | None, str | None]], *, queued: bool = False) -> dict[str, Any]: ...


class Repair:
    def __init__(self, verifier: Verifier, report: VerifyReport) -> None:
        self.v = verifier
        self.report = report

    def run(self, confirm: Callable[[dict[str, int]], bool] | None) -> dict[str, Any]:
        sent, rows, deletes = self._send()
        outcome: dict[str, Any] = {"rows_sent": rows, "deletes_sent": deletes}
        outcome.update(self._delete_added(confirm))
        outcome.update(self._wait(sent))
        return outcome

    # ---- 1. rows and deletes ---------------------------------------------------------------------------------
    def messages(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The sync messages of the repair: the rows sent again (drop records among them) and the deletes."""
        v = self.v
        position = current_position(v.enricher.conn)
        source = {"snapshot": True, "file": position.file, "pos": position.pos, "row": -1,
                  "repair": v.run_id.split(":", 1)[1]}
        events: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        for name, table_report in self.report.tables.items():
            table = v.model.synced[name]
            again = sorted(u for u, k in table_report.kinds.items() if k in RESENT)
            for key, _digest in v.rows.by_uuid(table, again).values():
                events.append({"op": wire.READ, "db": v.model.database, "table": name, "before": None,
                               "after": {table.key: key}, "source": source})
            for uuid in sorted(u for u, k in table_report.kinds.items() if k == "extra"):
                deletes.append(wire.message(site=v.site, table=name, op=wire.DELETE, uuid=uuid,
                                            source=source, key=uuid, data=None, sent=stamp))
        return list(v.enricher.run(events)), deletes

    def _send(self) -> tuple[dict[str, set[str]], int, int]:
        """Send the rows and deletes; returns (the uuids sent per table, rows sent, deletes sent)."""
        v = self.v
        rows, deletes = self.messages()
        messages = rows + deletes
        publisher = Publisher(publish_settings(v.cfg, threading.Event()), lambda _position: None,
                              on_dropped=lambda found: record_dropped(v.cfg.home, found))
        confirmed = sum(1 for _ in publisher.run(messages))
        messages = [m for m in messages if not is_dropped(m)]  # rows enrich could not send: counted, not sent
        files = queue_files(v.cfg, messages, f"verify:{v.run_id}"[:100])  # their complex obs files go again
        if files:
            log.info("verify --repair: %d complex obs file(s) queued for the sender's file lane", files)
        log.info("verify --repair: %d row(s) sent again, %d delete(s) sent (%d confirmed by the broker)",
                 len(messages) - len(deletes), len(deletes), confirmed)
        sent: dict[str, set[str]] = {}
        for message in messages:
            uuid = wire.canonical_uuid(str(message.get("uuid")))
            if self.report.tables.get(message.get("table", ""), None) is not None and uuid in self.report.tables[
                    message["table"]].kinds:
                sent.setdefault(message["table"], set()).add(uuid)
        return sent, len(messages) - len(deletes), len(deletes)

    # ---- 2. rows added at central ----------------------------------------------------------------------------
    def _delete_added(self, confirm: Callable[[dict[str, int]], bool] | None) -> dict[str, int]:
        added = {name: sorted(u for u, k in t.kinds.items() if k == ADDED) for name, t in self.report.tables.items()}
        counts = {name: len(uuids) for name, uuids in added.items() if uuids}
        if not counts:
            return {}
        if confirm is None or not confirm(counts):
            log.info("verify --repair: %d row(s) added at central kept (not confirmed)", sum(counts.values()))
            return {"added_kept": sum(counts.values())}
        deleted = 0
        for name, uuids in added.items():
            for part in chunks(uuids, 10_000):
                answer = self.v.call("verify-delete", {"tables": {name: {"uuids": part}}})
                gone = {wire.canonical_uuid(u) for u in (answer.get("deleted") or {}).get(name, [])}
                for uuid in gone:
                    self.report.tables[name].kinds.pop(uuid, None)
                deleted += len(gone)
        kept = sum(counts.values()) - deleted
        return {"added_deleted": deleted, **({"added_kept": kept} if kept else {})}

    # ---- 3. until central has them ---------------------------------------------------------------------------
    def _wait(self, sent: dict[str, set[str]]) -> dict[str, int]:
        """Check the rows sent again until each is matched or held at central (or the timeout passes)."""
        v = self.v
        waiting = {name: set(uuids) for name, uuids in sent.items() if uuids}
        held: set[tuple[str, str]] = set()
        total = sum(map(len, waiting.values()))
        deadline = time.monotonic() + v.timeout
        if total:
            log.info("verify --repair: waiting until central has applied the %d row(s) sent", total)
        while any(waiting.values()) and time.monotonic() < deadline:
            time.sleep(max(v.settle, 0.5))
            for name, uuids in waiting.items():
                if not uuids:
                    continue
                table, out = v.model.synced[name], self.report.tables[name]
                states: dict[str, tuple[str, str | None, str | None]] = {}
                queued: set[str] = set()
                for part in chunks(sorted(uuids), 20_000):
                    now = v.rows.by_uuid(table, part)
                    reply = v.ask(name, {u: now[u][1] if u in now else None for u in part}, [], out, states,
                                  queued=True)
                    queued |= {wire.canonical_uuid(u) for u in reply.get("queued") or []}
                for uuid in uuids:
                    if uuid in states:
                        out.kinds[uuid] = states[uuid][0]
                    else:
                        out.kinds.pop(uuid, None)
                held |= {(name, u) for u in uuids & queued if u in states}
                waiting[name] = {u for u in uuids if u in states and u not in queued}
        left = sum(map(len, waiting.values()))
        if left:
            log.warning("verify --repair: %d row(s) sent were not applied at central within %.0f s", left, v.timeout)
        still = sum(1 for name, uuids in sent.items() for u in uuids if u in self.report.tables[name].kinds)
        return {"mended": total - still, "held_at_central": len(held), "not_applied": left}
