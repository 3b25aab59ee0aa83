"""`dbsync status` for the receiver: per-site silence, inbox, retry and conflict queues, REST calls."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pymysql

from dbsync_cli.config import Config
from dbsync_cli.health import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    Report,
    connect,
    duration,
    grade,
    home_problem,
    limits,
    plaintext_problem,
    probe_broker,
    seconds_between,
    utc,
    utcnow,
)
from dbsync_cli.i18n import _
from dbsync_cli.receiver.conflict import FUTURE_DATED
from dbsync_cli.sql import Sql, sql


def _count_oldest(cur: Any, statement: Sql) -> tuple[int, dt.datetime | None]:
    cur.execute(statement)
    count, oldest = cur.fetchone()
    return int(count), oldest


def _fillers(cur: Any, s: Sql) -> int | None:
    """Placeholder fillers still at central (normal while their placeholders wait for the real rows; the receiver
    removes each once nothing references it). None before the receiver upgraded the state schema."""
    try:
        cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_filler", s))
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] != 1146:  # no such table
            raise
        return None
    return int(cur.fetchone()[0])


def _archive(conn: Any, schema: str, cfg: Config) -> dict[str, Any] | None:
    """What the archive holds and what pruning removed (None before the receiver upgraded the state schema)."""
    from dbsync_cli.receiver.archive_prune import stats

    try:
        found = stats(conn, schema)
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] != 1146:  # no such table
            raise
        conn.rollback()
        return None
    return {**found, "days": cfg["receiver.archive_days"], "max_mb": cfg["receiver.archive_max_mb"]}


def receiver_status(cfg: Config, overrides: dict[str, int | None] | None = None,
                    now: dt.datetime | None = None) -> dict[str, Any]:
    from dbsync_cli.receiver import state
    from dbsync_cli.receiver.rest import rest_status

    lim = limits(cfg, overrides)
    now = now or utcnow()
    report = Report("receiver", cfg["receiver.site_id"], cfg)
    home_problem(report, cfg.home)  # its logs: not writable, or space short (a full home stops it: exit 19)
    timeout = lim["timeout_seconds"] or 5
    schema = cfg["central_db.state_schema"]
    data = report.data
    data.update({"state_schema": schema, "sites": [], "inbox": None, "retry_queue": None, "conflicts": None,
                 "rest": None, "fillers": None, "archive": None})
    conn, central = connect(cfg, "central_db", timeout)
    data["central_db"] = central
    silent_max: float | None = None
    if conn is None:
        report.problem(CRITICAL, "central_db", central["error"])
    else:
        try:
            s = state.schema_name(schema)
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (schema,))
                exists = cur.fetchone()[0] > 0
            if not exists and not _may_see(conn, schema):
                report.problem(UNKNOWN, "state_schema", _("the receiver's user has no privilege on state schema "
                                                          "{schema!r} on {address} (GRANT ALL PRIVILEGES ON {schema}.* "
                                                          "TO …)").format(schema=schema, address=central["address"]))
            elif not exists:
                report.problem(UNKNOWN, "state_schema", _("receiver state schema {schema!r} does not exist on "
                                                          "{address} (no receiver or `dbsync sites add` has run "
                                                          "yet)").format(schema=schema, address=central["address"]))
            else:
                silent_max = _sites(report, conn, schema, now, lim)
                with conn.cursor() as cur:
                    cur.execute(sql("SELECT COALESCE(SUM(n_rows), 0), MIN(date_received), COUNT(*), "
                                    "COALESCE(SUM(n_rows * snapshot), 0) FROM {}.inbox", s))
                    size_, oldest, deliveries, initial = cur.fetchone()
                    data["inbox"] = {"size": int(size_), "deliveries": int(deliveries),
                                     "initial_load": int(initial), "oldest": utc(oldest),
                                     "oldest_seconds": seconds_between(now, oldest)}
                    size_, oldest = _count_oldest(
                        cur, sql("SELECT COUNT(*), MIN(date_created) FROM {}.receiver_retry_queue", s))
                    cur.execute(sql("SELECT COALESCE(site, ''), COUNT(*), SUM(reason LIKE %s), "
                                    "SUM(reason LIKE %s OR reason LIKE %s) FROM {}.receiver_retry_queue "
                                    "GROUP BY site ORDER BY 1", s), (UNREGISTERED, UNREGISTERED, WAITING))
                    counts = [(r[0] or "?", int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in cur.fetchall()]
                    by_site = {site: n for site, n, _waiting, _oldest in counts}
                    data["retry_queue"] = {"size": size_, "oldest": utc(oldest), "oldest_seconds": seconds_between(now, oldest),
                                           "by_site": by_site, **_retry_kinds(cur, s)}
                    onboarding = _onboarding(report, conn, schema, now, counts)
                    data["retry_queue"]["onboarding"] = onboarding
                    size_, oldest = _count_oldest(
                        cur, sql("SELECT COUNT(*), MIN(date_created) FROM {}.receiver_conflict_queue "
                                 "WHERE resolved = 0", s))
                    data["conflicts"] = {"unresolved": size_, "oldest": utc(oldest),
                                         "oldest_seconds": seconds_between(now, oldest)}
                    data["fillers"] = _fillers(cur, s)
                data["archive"] = _archive(conn, schema, cfg)
                _complex_obs(report, conn, s, cfg)
                rest = rest_status(conn, schema)
                rest["enabled"] = bool(cfg.get("openmrs.url"))
                rest["last_error_date"] = utc(rest["last_error_date"])
                data["rest"] = rest
                inbox, retry, conflicts = data["inbox"], data["retry_queue"], data["conflicts"]
                # an initial load fills the inbox by design (it is applied behind live changes): graded on the
                # live messages; a stuck apply also shows as site silence
                live = inbox["size"] - inbox["initial_load"]
                report.problem(grade(live, lim["inbox_warning"], lim["inbox_critical"]), "inbox",
                               (_("{size} message(s) in the inbox not applied yet ({initial} of initial loads, "
                                  "applied after live changes)") if inbox["initial_load"]
                                else _("{size} message(s) in the inbox not applied yet")).format(
                                   size=inbox["size"], initial=inbox["initial_load"])
                               + f"(oldest {duration(inbox['oldest_seconds'])})")
                graded = retry["size"] - sum(onboarding.values())
                report.problem(grade(graded, lim["retry_warning"], lim["retry_critical"]), "retry_queue",
                               (_("{count} message(s) in the retry queue (oldest {duration}) besides those of sites "
                                  "being onboarded") if onboarding
                                else _("{count} message(s) in the retry queue (oldest {duration})")).format(
                                   count=graded, duration=duration(retry["oldest_seconds"])))
                report.problem(grade(conflicts["unresolved"], lim["conflict_warning"], lim["conflict_critical"]),
                               "conflicts", _("{count} unresolved conflict(s) (dbsync conflicts list)").format(
                                   count=conflicts["unresolved"]))
                report.problem(grade(rest["failing"], lim["rest_failing_warning"], lim["rest_failing_critical"]),
                               "rest", _("{count} OpenMRS REST call(s) failing: {error}").format(
                                   count=rest["failing"], error=rest["last_error"] or "?"))
        except pymysql.MySQLError as exc:
            report.problem(UNKNOWN, "state_schema", _("reading receiver state {schema!r}: {error}").format(
                schema=schema, error=exc.args[-1]))
        finally:
            conn.close()

    broker = probe_broker(cfg, timeout)
    plaintext_problem(report, cfg)
    data["broker"] = broker
    if not broker["ok"]:
        report.problem(CRITICAL, "broker", broker["error"])
    else:
        _broker_queue(report, cfg, broker, timeout, lim)
        _dead_letters(report, cfg, broker, timeout)

    enabled = [site for site in data["sites"] if not site["disabled"]]
    report.notes.append(f"{len(enabled)} site(s), longest silence {duration(silent_max)}")
    for name, key in (("inbox", "size"), ("retry_queue", "size"), ("conflicts", "unresolved")):
        if data[name] is not None:
            report.notes.append(f"{name.replace('_', ' ')} {data[name][key]}")
    return report.finish({
        "site_silence_max": silent_max,
        "inbox": data["inbox"]["size"] if data["inbox"] else None,
        "retry": data["retry_queue"]["size"] if data["retry_queue"] else None,
        "conflicts": data["conflicts"]["unresolved"] if data["conflicts"] else None,
        "rest_failing": data["rest"]["failing"] if data["rest"] else None,
        "dead_letters": sum((broker.get("dead_letters") or {}).values()) if broker.get("dead_letters") else None,
    })


def consumed_queue(cfg: Config) -> str:
    """The broker queue the receiver consumes: the destination, or the durable subscription's queue."""
    if cfg["broker.destination_type"] == "topic":
        return f"{cfg['receiver.site_id']}.{cfg['broker.subscription']}"
    return str(cfg["broker.destination"])


def _broker_queue(report: Report, cfg: Config, broker: dict[str, Any], timeout: float, lim: dict[str, int]) -> None:
    """Messages waiting at the broker that nobody consumes (a receiver down or stuck): the inbox cannot see them.
    Read the broker's own way (broker_depth); a broker that offers none is noted once, not a warning."""
    from dbsync_cli.broker import BrokerError, settings_from_config
    from dbsync_cli.broker_depth import NotAvailable, depth
    from dbsync_cli.broker_queue import QueueStatsError

    name = consumed_queue(cfg)
    try:
        stats = depth(settings_from_config(cfg), name, server=broker.get("server"), timeout=timeout,
                      topic=cfg["broker.destination_type"] == "topic", management_url=cfg.get("broker.management_url"))
    except NotAvailable as exc:
        broker["queue"] = {"name": name, "available": False, "note": str(exc)}
        report.notes.append(_("broker queue {queue}: {why}").format(queue=name, why=exc))
        return
    except (BrokerError, QueueStatsError) as exc:
        broker["queue"] = {"name": name, "error": str(exc)}
        report.problem(WARNING, "broker_queue", _("cannot read broker queue statistics: {error}").format(error=exc))
        return
    waited = stats.waiting_unconsumed_seconds()
    broker["queue"] = {"name": name, "messages": stats.messages, "delivering": stats.delivering,
                       "consumers": stats.consumers, "first_message_age_seconds":
                           None if stats.first_message_age_ms is None else round(stats.first_message_age_ms / 1000, 1),
                       "unconsumed_seconds": waited}
    if stats.first_message_age_ms is None and stats.messages and not stats.consumers:  # RabbitMQ keeps no age
        report.problem(WARNING, "broker_queue", _("{count} message(s) waiting at the broker in {queue} with no "
                                                  "consumer (is the receiver running?)").format(
            count=stats.messages, queue=name))
        return
    report.problem(grade(waited, lim["unconsumed_warning_seconds"], lim["unconsumed_critical_seconds"]),
                   "broker_queue", _("{count} message(s) waiting at the broker in {queue} with no consumer for "
                                     "{duration} (is the receiver running?)").format(
                       count=stats.messages, queue=name, duration=duration(waited))
                   + ("; " + _("{count} stuck in delivery (restart the broker, see troubleshooting)").format(
                       count=stats.delivering) if stats.delivering else ""))


def _dead_letters(report: Report, cfg: Config, broker: dict[str, Any], timeout: float) -> None:
    """Messages Artemis took off the consumed destination (never acknowledged after max-delivery-attempts, or
    expired): dbsync never applied them and nothing else shows them. A queue that does not exist holds none."""
    from dbsync_cli.broker import BrokerError, settings_from_config
    from dbsync_cli.broker_kind import ARTEMIS, NAMES, kind_of
    from dbsync_cli.broker_queue import QueueStatsError, dead_letter_queues, queue_stats

    kind = kind_of(broker.get("server"))
    if kind != ARTEMIS:  # the queue names are Artemis's (address-settings of the shipped broker.xml)
        broker["dead_letters"] = None
        broker["dead_letters_note"] = _("not counted on {broker}").format(broker=NAMES[kind])
        return
    queues = dead_letter_queues(str(cfg["broker.destination"]))
    broker["dead_letter_queues"] = queues
    try:
        counts = {kind: queue_stats(settings_from_config(cfg), name, timeout).messages
                  for kind, name in queues.items()}
    except (BrokerError, QueueStatsError) as exc:
        broker["dead_letters"] = None
        report.problem(WARNING, "dead_letters", _("cannot count the dead-letter and expiry queues: {error}").format(
            error=" ".join(str(exc).split())))
        return
    broker["dead_letters"] = counts
    if any(counts.values()):
        report.problem(WARNING, "dead_letters", _(
            "{dead} message(s) in dead-letter queue {dead_queue} and {expired} in expiry queue {expiry_queue}, "
            "never applied (see troubleshooting: dead letters)").format(
                dead=counts["dead_letter"], dead_queue=queues["dead_letter"], expired=counts["expiry"],
                expiry_queue=queues["expiry"]))


def _may_see(conn: Any, schema: str) -> bool:
    """Whether the user has any privilege on `schema` (without one, an existing schema looks absent)."""
    from dbsync_cli.checks import privileges

    glob, local = privileges(conn, schema)
    return bool((glob | local) - {"USAGE"})


#: the retry reason of a message that arrived before its site was registered (apply.py)
UNREGISTERED = "site % is not registered%"
#: the reason of a message queued behind an earlier one for the same row (during onboarding: behind the above)
WAITING = "waiting behind an earlier message%"
#: how long after `dbsync sites add` a site's queued messages count as its onboarding, not as trouble
ONBOARDING_MINUTES = 60


def _onboarding(report: Report, conn: Any, schema: str, now: dt.datetime,
                counts: list[tuple[str, int, int, int]]) -> dict[str, int]:
    """Sites whose messages arrived before `sites add`. Registered within ONBOARDING_MINUTES: their queue is the
    normal onboarding the receiver's retry pass is applying (a note, not graded). Not registered: one WARNING per
    site naming the command, instead of a CRITICAL retry queue."""
    from dbsync_cli.receiver import state

    sites = state.sites(conn, schema)
    onboarding: dict[str, int] = {}
    for identifier, total, unregistered, queued in counts:
        if not unregistered:
            continue
        site = sites.get(identifier)
        if site is None:
            report.problem(WARNING, "unregistered_site", _("{count} message(s) from site {site!r}, which is not "
                                                           "registered, wait in the retry queue: dbsync sites add "
                                                           "{site}").format(count=total, site=identifier))
            onboarding[identifier] = queued  # only these: the site's other trouble is graded as ever
        elif not site.disabled and (seconds_between(now, site.date_created) or 0) < ONBOARDING_MINUTES * 60:
            report.notes.append(f"site {identifier}: onboarding, {queued:,} message(s) queued before `sites add` "
                                "being applied")
            onboarding[identifier] = queued
    return onboarding


def _retry_kinds(cur: Any, s: Sql) -> dict[str, Any]:
    """Retry entries by kind (transient | permanent | waiting), how many are due now (the rest back off, their own
    schedule or their cause's) and how many wait for a cause whose representative failed (receiver/retry.py)."""
    cur.execute(sql("SELECT q.kind, COUNT(*), COALESCE(SUM(CASE WHEN c.cause IS NOT NULL THEN c.next_attempt IS NULL "
                    "OR c.next_attempt <= UTC_TIMESTAMP(3) ELSE q.next_attempt IS NULL OR q.next_attempt <= "
                    "UTC_TIMESTAMP(3) OR q.cause IS NOT NULL END), 0), COALESCE(SUM(c.next_attempt > "
                    "UTC_TIMESTAMP(3)), 0) FROM {}.receiver_retry_queue q LEFT JOIN {}.receiver_retry_cause c ON "
                    "c.cause = q.cause GROUP BY q.kind ORDER BY q.kind", s, s))
    rows = [(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]
    cur.execute(sql("SELECT COUNT(*) FROM {}.receiver_retry_cause WHERE next_attempt > UTC_TIMESTAMP(3)", s))
    (backed_off,) = cur.fetchone() or (0,)
    return {"by_kind": {kind: n for kind, n, *_ in rows}, "due": sum(r[2] for r in rows),
            "waiting_for_cause": sum(r[3] for r in rows), "causes_backed_off": int(backed_off)}


def _complex_obs(report: Report, conn: Any, s: Sql, cfg: Config) -> None:
    """Complex obs files per site (receiver/complex_files.py): written, in flight, obs waiting, refused, conflicts;
    a WARNING while any was refused or is in conflict."""
    from dbsync_cli.receiver import complex_files

    per_site = complex_files.counts(conn, s)
    keys = ("received", "removed", "gone", "in_flight", "waiting_obs", "refused", "conflicts")
    totals = {key: sum(int(entry.get(key, 0)) for entry in per_site.values()) for key in keys}
    report.data["complex_obs"] = {"enabled": bool(cfg["receiver.complex_obs_dir"]), **totals, "by_site": per_site}
    if not report.data["complex_obs"]["enabled"] and not any(totals.values()):
        return
    for site, entry in sorted(per_site.items()):
        if entry["refused"] or entry["conflicts"]:
            report.problem(WARNING, "complex_obs", _(
                "site {site}: {refused} complex obs file(s) refused, {conflicts} in conflict; the last: {last}").format(
                site=site, refused=entry["refused"], conflicts=entry["conflicts"],
                last=entry.get("last_conflict") or entry.get("last_refused") or "?"))
    report.notes.append(_("complex obs files: {received} written, {in_flight} arriving, {waiting_obs} obs waiting "
                          "for theirs, {refused} refused, {conflicts} in conflict").format(
        received=totals["received"], in_flight=totals["in_flight"], waiting_obs=totals["waiting_obs"],
        refused=totals["refused"], conflicts=totals["conflicts"]))


def _sites(report: Report, conn: Any, schema: str, now: dt.datetime, lim: dict[str, int]) -> float | None:
    """Per site: last sync (or registration, for a site that never synced) and how long it has been silent."""
    from dbsync_cli.receiver import state

    with conn.cursor() as cur:
        cur.execute(sql("SELECT site_id, last_sync_date, messages, last_message_id FROM {}.receiver_sync_status",
                        state.schema_name(schema)))
        status = {int(r[0]): r[1:] for r in cur.fetchall()}
    silent_max = None
    from dbsync_cli.receiver.verify import latest_runs

    verified = {run["site"]: run for run in latest_runs(conn, schema)}
    skipped = state.skipped(conn, schema)
    future_last = _future_dated(conn, schema)
    bundles = _last_bundles(conn, schema)
    sites = sorted(state.sites(conn, schema).values(), key=lambda site: site.identifier)
    for site in sites:
        last, messages, last_id = status.get(site.id, (None, 0, None))
        silence = seconds_between(now, last or site.date_created)
        counts = dict(skipped.get(site.identifier, {}))
        future = counts.pop(FUTURE_DATED, 0)  # counted whether applied or parked: not under "not applied"
        row = {"identifier": site.identifier, "name": site.name, "disabled": site.disabled,
               "date_created": utc(site.date_created), "last_sync_date": utc(last),
               "age_seconds": seconds_between(now, last), "silent_seconds": silence, "messages": int(messages or 0),
               "last_message_id": last_id, "skipped": counts, "future_dated": future,
               "state": "DISABLED" if site.disabled else OK, "verify": _verify_summary(verified.get(site.identifier)),
               "last_bundle": bundles.get(site.identifier)}
        if row["last_bundle"]:
            carried = row["last_bundle"]
            report.notes.append(f"site {site.identifier}: last bundle {carried['file']} imported {carried['imported']} "
                                f"({carried['rows']:,} rows, {carried['times']} time(s))")
        latest = future_last.get(site.identifier)
        if future and latest is not None and (seconds_between(now, latest) or 0) < FUTURE_RECENT_HOURS * 3600:
            report.problem(WARNING, "clock", _("site {site}: {count} change(s) dated in central's future, the last "
                                               "{duration} ago (site clock ahead? see `dbsync status` at the site); "
                                               "they never overwrite central's edits").format(
                site=site.identifier, count=future, duration=duration(seconds_between(now, latest))))
        if not site.disabled:
            row["state"] = grade(silence, lim["site_silent_warning_minutes"] * 60,
                                 lim["site_silent_critical_minutes"] * 60)
            silent = _("site {site} silent for {duration} since its last sync") if last \
                else _("site {site} silent for {duration} and never synced since it was registered")
            report.problem(row["state"], "site", silent.format(site=site.identifier, duration=duration(silence)))
            if silence is not None and (silent_max is None or silence > silent_max):
                silent_max = silence
        if row["verify"] and row["verify"]["differences"] and not site.disabled:
            report.problem(WARNING, "verify", _("site {site}: the last verify found {count} row(s) that differ from "
                                                "central (dbsync verify --status; mend them with dbsync verify "
                                                "--repair)").format(site=site.identifier,
                                                                    count=row["verify"]["differences"]))
        report.data["sites"].append(row)
    if not sites:
        report.problem(WARNING, "site", _("no sites registered (dbsync sites add)"))
    return silent_max




#: a site's change dated in central's future keeps `status` at WARNING this long (the counts stay in the report)
FUTURE_RECENT_HOURS = 24


def _last_bundles(conn: Any, schema: str) -> dict[str, dict[str, Any]]:
    """Per site, the bundle it last carried by file (`dbsync import`): which, when, how often it came."""
    from dbsync_cli.receiver import state

    with conn.cursor() as cur:
        cur.execute(sql("SELECT b.site, b.bundle_id, b.file_name, b.n_rows, b.times, b.date_last FROM {s}.bundle_import b "
                        "JOIN (SELECT site, MAX(date_last) AS last FROM {s}.bundle_import GROUP BY site) l "
                        "ON l.site = b.site AND l.last = b.date_last", s=state.schema_name(schema)))
        return {site: {"bundle": bundle, "file": name, "rows": int(rows), "times": int(times), "imported": utc(last)}
                for site, bundle, name, rows, times, last in cur.fetchall()}


def _future_dated(conn: Any, schema: str) -> dict[str, dt.datetime]:
    """When each site last sent a change dated in central's future (receiver_skipped, reason future_dated)."""
    from dbsync_cli.receiver import state

    with conn.cursor() as cur:
        cur.execute(sql("SELECT site, MAX(last_date) FROM {}.receiver_skipped WHERE reason = %s GROUP BY site",
                        state.schema_name(schema)), (FUTURE_DATED,))
        return {str(row[0]): row[1] for row in cur.fetchall()}


def _verify_summary(run: dict[str, Any] | None) -> dict[str, Any] | None:
    """The latest verify of a site, as `status` shows it (`dbsync verify --status` has the tables)."""
    if run is None:
        return None
    return {"run": run["run"], "state": run["state"], "finished": utc(run["finished"]),
            "differences": run["differences"], "site_rows": run["totals"]["site_rows"],
            "matched": run["totals"]["matched"], "added_at_central": run["totals"]["added_at_central"]}
