"""What the console's pages show and do, through the receiver's public API; every action is written to the audit
log (`console_audit` in the state schema): who, when, what."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from dbsync_cli.config import Config
from dbsync_cli.console import charts
from dbsync_cli.console.worker import Worker
from dbsync_cli.i18n import _
from dbsync_cli.receiver import actions, archive_query, conflicts, selection, state
from dbsync_cli.receiver.rest import rest_status
from dbsync_cli.receiver.run import Receiver
from dbsync_cli.receiver.selection import Selection
from dbsync_cli.receiver.verify import differences, latest_runs
from dbsync_cli.sql import sql


class Console:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.receiver = Receiver(cfg)
        self.schema = cfg["central_db.state_schema"]
        self.worker = Worker(self._conn, self.schema, self.receiver.applier)

    def _conn(self) -> Any:
        return self.cfg.db("central_db").connect()

    # ---- reading -------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """`dbsync status` of the receiver, each site with its inbox rows, unresolved conflicts and rows/s (from
        its samples of the last 10 minutes)."""
        report = self.receiver.status()
        s = state.schema_name(self.schema)
        try:
            with self._conn() as conn, conn.cursor() as cur:
                cur.execute(sql("SELECT site, COALESCE(SUM(n_rows), 0) FROM {}.inbox GROUP BY site", s))
                inbox = {site: int(n) for site, n in cur.fetchall()}
                cur.execute(sql("SELECT site, COUNT(*) FROM {}.receiver_conflict_queue WHERE resolved = 0 "
                                "GROUP BY site", s))
                parked = {site: int(n) for site, n in cur.fetchall()}
                cur.execute(sql("SELECT site, MIN(date_sampled), MAX(date_sampled), MIN(messages), MAX(messages) "
                                "FROM {}.receiver_sample WHERE date_sampled >= UTC_TIMESTAMP() - INTERVAL 10 MINUTE "
                                "GROUP BY site", s))
                rates = {site: (hi - lo) / max(60.0, (last - first).total_seconds())
                         for site, first, last, lo, hi in cur.fetchall()}
        except Exception:  # noqa: BLE001 - the report says why central cannot be read; the extras stay empty
            inbox, parked, rates = {}, {}, {}
        for site in report.get("sites", []):
            name = site["identifier"]
            site.update({"inbox": inbox.get(name, 0), "conflicts": parked.get(name, 0),
                         "rows_per_second": round(rates[name], 1) if name in rates else None})
        return report

    def retry_entries(self, chosen: Selection | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Retry entries the filters select (all by default), oldest first, without their bodies."""
        with self._conn() as conn:
            return selection.retry_rows(conn, self.schema, chosen or Selection("retry"), limit)

    def conflicts(self, chosen: Selection | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Unresolved conflicts the filters select (all by default), oldest first."""
        with self._conn() as conn:
            return selection.conflict_rows(conn, self.schema, chosen or Selection("conflicts"), limit)

    def count(self, chosen: Selection) -> tuple[int, Selection]:
        """How many entries the filters select, and the selection bounded to them (for a confirmed bulk action)."""
        with self._conn() as conn:
            return selection.pinned(conn, self.schema, chosen)

    def requests(self, limit: int = 15) -> list[dict[str, Any]]:
        """The latest operators' actions with their progress or outcome; pending ones nobody serves are served."""
        with self._conn() as conn:
            found = actions.requests(conn, self.schema, limit=limit)
        if any(r["state"] == "pending" for r in found):
            self.worker.poke()
        return found

    def conflict(self, number: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A conflict and its columns side by side: central's value, the incoming one, whether they differ."""
        applier = self.receiver.applier()
        try:
            found = conflicts.get_conflict(applier.conn, self.schema, number)
            rows = [{"column": c, "central": _text(a), "incoming": _text(b), "differs": d}
                    for c, a, b, d in conflicts.diff(applier, found)]
            return found.summary(), rows
        finally:
            applier.close()

    def archive(self, filters: archive_query.Filters) -> list[dict[str, Any]]:
        """Archive rows matching `filters` (the search page), oldest first."""
        return self.receiver.archive(filters)

    def archive_entry(self, number: int) -> dict[str, Any]:
        """One archive row, its message as it came and every outcome of it."""
        return self.receiver.archive_entry(number)

    def history(self, *, uuid: str | None = None, message_id: str | None = None, limit: int = 50
                ) -> list[dict[str, Any]]:
        """The "history of this row" panel: what the archive holds of a row (its uuid), or of one message when the
        row is unknown (a message that could not be parsed)."""
        if not uuid and not message_id:
            return []
        return self.receiver.archive(archive_query.Filters(uuid=uuid, message_id=None if uuid else message_id,
                                                           limit=limit))

    def charts(self, site: str, label: Callable[[str], str]) -> list[dict[str, str]]:
        """The site's throughput and backlog over the last 24 hours (per 5 minutes) and 30 days (per hour)."""
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        found = []
        with self._conn() as conn:
            for title, days, step in (("last 24 hours", 1, dt.timedelta(minutes=5)),
                                      ("last 30 days", 30, dt.timedelta(hours=1))):
                start = now - dt.timedelta(days=days)
                rows, backlog = charts.series(state.samples(conn, self.schema, site, start), step)
                start = charts.first_time(rows, start, now, step)
                found.append({"title": title, "step": "5 min" if days == 1 else "hour",
                              "throughput": charts.svg(rows, start, now, label("rows applied"), "#1f6feb"),
                              "backlog": charts.svg(backlog, start, now, label("backlog"), "#d1242f")})
        return found

    def samples(self, site: str, days: int) -> list[dict[str, Any]]:
        """The site's per-minute samples of the last `days` days (what its charts are drawn from)."""
        since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)
        with self._conn() as conn:
            return [{"date": d.isoformat(sep=" "), "messages": m, "inbox": i, "retry": r}
                    for d, m, i, r in state.samples(conn, self.schema, site, since)]

    def rest_calls(self) -> dict[str, Any]:
        with self._conn() as conn:
            summary = rest_status(conn, self.schema)
            with conn.cursor() as cur:
                cur.execute(sql("SELECT id, resource, sub_resource, entity_uuid, attempts, last_error, date_created "
                                "FROM {}.rest_call ORDER BY id LIMIT 200", state.schema_name(self.schema)))
                calls = [{"id": i, "resource": r, "sub_resource": sr, "uuid": u, "attempts": a, "last_error": e,
                          "date_created": d.isoformat(sep=" ", timespec="seconds")}
                         for i, r, sr, u, a, e, d in cur.fetchall()]
        summary["last_error_date"] = str(summary["last_error_date"] or "") or None
        return {**summary, "calls": calls}

    def verify_runs(self) -> list[dict[str, Any]]:
        with self._conn() as conn:
            runs = latest_runs(conn, self.schema)
            for run in runs:
                run["rows"] = differences(conn, self.schema, run["run"], limit=200)
            return runs

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(sql("SELECT id, user, date_created, action, detail FROM {}.console_audit ORDER BY id DESC "
                            "LIMIT %s", state.schema_name(self.schema)), (limit,))
            return [{"id": i, "user": u, "date": d.isoformat(sep=" ", timespec="seconds"), "action": a,
                     "detail": t} for i, u, d, a, t in cur.fetchall()]

    # ---- acting (operators) ---------------------------------------------------------------------------------
    def _audit(self, user: str, action: str, detail: str) -> None:
        with self._conn() as conn, conn.cursor() as cur:
            cur.execute(sql("INSERT INTO {}.console_audit (user, date_created, action, detail) VALUES "
                            "(%s, %s, %s, %s)", state.schema_name(self.schema)),
                        (user, dt.datetime.now(dt.UTC).replace(tzinfo=None), action, detail[:2000]))
            conn.commit()

    def submit(self, user: str, action: str, args: dict[str, Any], audit_action: str) -> str:
        """Queue an action and return at once (the running receiver, or else this console's worker, carries it
        out; the pages show its progress and outcome); audited now, its outcome kept with the request."""
        with self._conn() as conn:
            request = actions.submit(conn, self.schema, action, args, f"console:{user}")
        what = actions.describe(action, args)
        self._audit(user, audit_action, f"request {request}: {what}")
        self.worker.poke()
        return _("request {request} queued: {what}").format(request=request, what=what)

    def resolve(self, user: str, number: int, mode: str, columns: list[str] | None = None) -> str:
        return self.submit(user, "resolve", {"number": number, "mode": mode, "columns": columns},
                           f"conflict {mode}")

    def retry_again(self, user: str, number: int) -> str:
        return self.submit(user, "retry_again", {"number": number}, "retry again")

    def retry_drop(self, user: str, number: int) -> str:
        return self.submit(user, "retry_drop", {"number": number}, "retry drop")

    def bulk(self, user: str, action: str, pinned: Selection, mode: str | None = None) -> str:
        """A confirmed bulk action on `pinned` (a selection bounded to what the operator counted)."""
        args: dict[str, Any] = {"selection": pinned.args()}
        if mode is not None:
            args["mode"] = mode
        audit_action = {"retry_again_many": "retry again (bulk)", "retry_drop_many": "retry drop (bulk)"}.get(
            action, f"conflict {mode} (bulk)")
        return self.submit(user, action, args, audit_action)

    def login_audit(self, user: str, ok: bool, address: str) -> None:
        self._audit(user, "login" if ok else "login refused", f"from {address}")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class SenderConsole:
    """The sender's page: what `dbsync status` reports at the site (checkpoint, lag, retention, snapshot)."""

    def __init__(self, cfg: Config) -> None:
        from dbsync_cli.sender.run import Sender

        self.sender = Sender(cfg)

    def status(self) -> dict[str, Any]:
        return self.sender.status()
