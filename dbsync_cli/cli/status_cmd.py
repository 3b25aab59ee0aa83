"""`dbsync status`: the health report of a sender or a receiver, for people (table) and scripts (--json, exit code)."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import config as config_mod
from dbsync_cli import health, i18n, logs
from dbsync_cli.cli import common
from dbsync_cli.i18n import _
from dbsync_cli.receiver.status import receiver_status
from dbsync_cli.sender.status import sender_status

_STYLE = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red", "UNKNOWN": "magenta", "DISABLED": "dim"}


def _opt(name: str, help_text: str) -> Any:
    default = config_mod.KEYS[f"status.{name}"].default
    return typer.Option(f"--{name.replace('_', '-')}", help=f"{help_text} (default: status.{name}, {default}).",
                        show_default=False, metavar="N")


def status(
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
    timeout_seconds: Annotated[int | None, _opt("timeout_seconds", "Connect timeout of each probe, seconds")] = None,
    lag_warning_seconds: Annotated[int | None, _opt("lag_warning_seconds", "Sender: WARNING when this many "
                                                                           "seconds behind the binlog")] = None,
    lag_critical_seconds: Annotated[int | None, _opt("lag_critical_seconds", "Sender: CRITICAL when this many "
                                                                             "seconds behind")] = None,
    lag_warning_bytes: Annotated[int | None, _opt("lag_warning_bytes", "Sender: WARNING when this many binlog "
                                                                       "bytes are not published")] = None,
    lag_critical_bytes: Annotated[int | None, _opt("lag_critical_bytes", "Sender: CRITICAL at this many "
                                                                         "unpublished binlog bytes")] = None,
    checkpoint_warning_minutes: Annotated[int | None, _opt("checkpoint_warning_minutes", "Sender: WARNING when "
                                                           "the checkpoint has not moved for this many "
                                                           "minutes")] = None,
    checkpoint_critical_minutes: Annotated[int | None, _opt("checkpoint_critical_minutes", "Sender: CRITICAL "
                                                            "when it has not moved for this many minutes")] = None,
    clock_skew_warning_seconds: Annotated[int | None, _opt("clock_skew_warning_seconds", "Sender: WARNING when the "
                                                           "site server's clock is this many seconds off the "
                                                           "sender host's")] = None,
    site_silent_warning_minutes: Annotated[int | None, _opt("site_silent_warning_minutes", "Receiver: WARNING "
                                                            "when an enabled site sent nothing for this many "
                                                            "minutes")] = None,
    site_silent_critical_minutes: Annotated[int | None, _opt("site_silent_critical_minutes", "Receiver: CRITICAL "
                                                             "when a site is silent this long")] = None,
    retry_warning: Annotated[int | None, _opt("retry_warning", "Receiver: WARNING at this many retry queue "
                                                               "entries")] = None,
    retry_critical: Annotated[int | None, _opt("retry_critical", "Receiver: CRITICAL at this many retry queue "
                                                                 "entries")] = None,
    conflict_warning: Annotated[int | None, _opt("conflict_warning", "Receiver: WARNING at this many unresolved "
                                                                     "conflicts")] = None,
    conflict_critical: Annotated[int | None, _opt("conflict_critical", "Receiver: CRITICAL at this many "
                                                                       "unresolved conflicts")] = None,
    inbox_warning: Annotated[int | None, _opt("inbox_warning", "Receiver: WARNING at this many inbox messages "
                                                               "not applied")] = None,
    inbox_critical: Annotated[int | None, _opt("inbox_critical", "Receiver: CRITICAL at this many inbox "
                                                                 "messages")] = None,
    unconsumed_warning_seconds: Annotated[int | None, _opt("unconsumed_warning_seconds", "Receiver: WARNING when "
                                                           "messages wait at the broker with no consumer for "
                                                           "this many seconds")] = None,
    unconsumed_critical_seconds: Annotated[int | None, _opt("unconsumed_critical_seconds", "Receiver: CRITICAL "
                                                            "when they wait this long")] = None,
    rest_failing_warning: Annotated[int | None, _opt("rest_failing_warning", "Receiver: WARNING at this many "
                                                                             "failing OpenMRS REST calls")] = None,
    rest_failing_critical: Annotated[int | None, _opt("rest_failing_critical", "Receiver: CRITICAL at this many "
                                                                               "failing REST calls")] = None,
) -> None:
    """Health of this sender or receiver: checkpoint, lag and rate, or per-site sync, queues and REST calls.

    Probes the broker (one STOMP CONNECT) and the site or central database.

    Exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the Nagios plugin convention).

    A threshold of 0 is off; threshold options of the other role are ignored.
    """
    params = dict(locals())
    overrides = {k: v for k, v in params.items() if k not in ("config", "json_out")}
    if json_out:  # for programs: English whatever the terminal's language
        i18n.use("en")
    path = common.config_path(config)
    role = common.detect_role(path)
    result = config_mod.validate(path, role)
    if not isinstance(result, config_mod.Config):
        problem = result[0] if path is not None else f"no config file given (--config FILE or DBSYNC_CONFIG): {result[0]}"
        report = health.unknown(role, problem, str(path) if path else None)
    else:
        # stderr only: a monitoring user may not be allowed to write the service's log file
        logs.setup(result["log_level"], common.state["verbosity"] - 1, None, result.secrets())
        if common.state["verbosity"] <= 0:  # the report names an unreachable broker already
            logging.getLogger("stomp.py").setLevel(logging.ERROR)
        report = (sender_status if result.role == "sender" else receiver_status)(result, overrides)
    if json_out:
        sys.stdout.write(health.to_json(report).decode() + "\n")
    else:
        _print(report)
    raise typer.Exit(report["exit_code"])


def _cell(state: str) -> str:
    return f"[{_STYLE.get(state, '')}]{_(state)}[/]"


def _print(report: dict[str, Any]) -> None:
    console = Console()
    console.print(f"dbsync {report['role']} {report['id'] or ''}: {_cell(report['state'])}  "
                  f"[dim]({report['config']}, {report['checked_at']})[/]")
    by_check: dict[str, str] = {}
    for problem in report["problems"]:
        by_check[problem["check"]] = health.worst([by_check.get(problem["check"], "OK"), problem["state"]])
    table = Table(_("check"), _("value"), _("state"))
    rows = _sender_rows(report) if report["role"] == "sender" else _receiver_rows(report)
    for check, value, key in rows:
        table.add_row(check, value, _cell(by_check[key]) if key in by_check else "-" if value == "?" else _cell("OK"))
    if rows:
        console.print(table)
    if report["role"] == "receiver" and report.get("sites"):
        sites = Table(_("site"), _("name"), _("last sync (UTC)"), _("silent for"), _("messages"), _("not applied"),
                      _("last verify"), _("state"))
        for site in report["sites"]:
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(site.get("skipped", {}).items())) or "0"
            verified = site.get("verify")
            verify_text = _("never") if not verified else f"{verified['differences']} {_('differ')}" + (
                f", {verified['added_at_central']} {_('added at central')}" if verified.get("added_at_central")
                else "") + f" ({verified['finished'] or verified['state']})"
            sites.add_row(site["identifier"], site["name"], site["last_sync_date"] or _("never"),
                          health.duration(site["silent_seconds"]), str(site["messages"]), skipped, verify_text,
                          _cell(site["state"]))
        console.print(sites)
    for problem in report["problems"]:
        console.print(f"{_cell(problem['state'])} {problem['check']}: {problem['message']}", markup=True,
                      highlight=False)


def _probe(info: dict[str, Any] | None, what: str) -> str:
    if not info:
        return "?"
    return f"{what}: ok" if info.get("ok") else f"{what}: {info.get('error')}"


def _sender_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    cp, lag, rate = report.get("checkpoint"), report.get("lag") or {}, report.get("rate")
    checkpoint = "none"
    if cp:
        checkpoint = (f"{cp['file']}:{cp['pos']} row {cp['row']}, updated {health.duration(cp['age_seconds'])} "
                      f"ago" + (f" (snapshot of {cp['snapshot_table']})" if cp["snapshot"] else ""))
    end = lag.get("binlog_end")
    rows = [(_("checkpoint"), checkpoint, "checkpoint")]
    if cp and cp["snapshot"] and cp.get("snapshot_total") is not None:
        rows.append((_("snapshot"), f"{cp['snapshot_percent']:.1f} % ({cp['snapshot_done']:,} of "
                                 f"{cp['snapshot_total']:,} rows confirmed)", "checkpoint"))
    return rows + [
        (_("binlog end"), f"{end['file']}:{end['pos']}" if end else "?", "binlog"),
        (_("lag"), f"{health.size(lag.get('bytes'))}, {health.duration(lag.get('seconds'))} behind"
         if lag.get("bytes") is not None else "?", "lag"),
        (_("rate"), f"{rate['rows_per_second']:g} rows/s (1 min), {rate['rows_per_second_5m']:g} rows/s (5 min), "
                 f"{rate['rows_last_hour']} in the last hour" if rate else "?", "rate"),
        (_("clock"), _clock(report.get("clock_skew_seconds")), "clock"),
        (_("not sent"), _dropped(report), "dropped"),
        (_("site db"), _probe(report.get("site_db"), report.get("site_db", {}).get("address", "")), "site_db"),
        (_("broker"), _probe(report.get("broker"), report.get("broker", {}).get("url", "")), "broker"),
    ]


def _dropped(report: dict[str, Any]) -> str:
    """What the sender read and did not send, per reason, with the last one of each."""
    counts, last = report.get("dropped"), report.get("dropped_last") or {}
    if counts is None:
        return "?"
    parts = []
    for reason, count in counts.items():
        if count:
            seen = last.get(reason) or {}
            what = " ".join(str(seen[k]) for k in ("table", "uuid") if seen.get(k)) or str(seen.get("key", "?"))
            parts.append(_("{count} {reason} (last {what} at {at})").format(count=count, reason=reason, what=what,
                                                                           at=seen.get("at", "?")))
    return "; ".join(parts) or "0"


def _clock(skew: float | None) -> str:
    """The site server's clock against this host's."""
    if skew is None:
        return "?"
    amount = health.duration(round(abs(skew)))
    return _("{duration} ahead").format(duration=amount) if skew >= 0 else _("{duration} behind").format(
        duration=amount)


def _receiver_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    def queue(name: str, key: str) -> str:
        q = report.get(name)
        return "?" if q is None else f"{q[key]} (oldest {health.duration(q['oldest_seconds'])})" if q[key] else "0"

    rest = report.get("rest")
    rest_text = "?"
    if rest is not None:
        rest_text = (f"{rest['pending']} pending, {rest['failing']} failing"
                     + (f": {rest['last_error']}" if rest["failing"] and rest["last_error"] else "")
                     + ("" if rest["enabled"] else " (openmrs.url not set)"))
    return [
        (_("inbox"), queue("inbox", "size"), "inbox"),
        (_("retry queue"), queue("retry_queue", "size") + _retry_kinds(report.get("retry_queue")), "retry_queue"),
        (_("conflicts"), queue("conflicts", "unresolved"), "conflicts"),
        (_("placeholder fillers"), "?" if report.get("fillers") is None else str(report["fillers"]), "fillers"),
        (_("archive"), _archive(report.get("archive")), "archive"),
        ("OpenMRS REST", rest_text, "rest"),
        (_("central db"), _probe(report.get("central_db"), report.get("central_db", {}).get("address", "")),
         "central_db"),
        (_("broker"), _probe(report.get("broker"), report.get("broker", {}).get("url", "")), "broker"),
        (_("dead letters"), _dead_letters(report.get("broker") or {}), "dead_letters"),
    ]


def _archive(archive: dict[str, Any] | None) -> str:
    """`12,345 rows, 3.2 MB since 2026-11-07 (30 days); pruned 9,000 by age, 0 by size`, or off."""
    if archive is None:
        return "?"
    text = _("off (receiver.archive_days = 0)") if not archive["days"] else _(
        "{rows:,} rows, {mb:.1f} MB since {oldest} (keeps {days} days{cap})").format(
        rows=archive["rows"], mb=archive["bytes"] / 1048576, oldest=archive["oldest_day"] or "-",
        days=archive["days"], cap=_(", at most {mb:g} MB").format(mb=archive["max_mb"]) if archive["max_mb"] else "")
    pruned = archive.get("pruned") or {}
    if pruned:
        text += "; " + _("pruned {age:,} rows by age, {size:,} by size").format(
            age=pruned.get("age", {}).get("rows", 0), size=pruned.get("size", {}).get("rows", 0))
    return text


def _retry_kinds(retry: dict[str, Any] | None) -> str:
    """The retry queue's entries by kind, e.g. `: 12 transient, 3 permanent (5 due, 9 waiting for 2 causes)`."""
    kinds = (retry or {}).get("by_kind") or {}
    if not kinds:
        return ""
    waiting = int((retry or {}).get("waiting_for_cause") or 0)
    causes = _(", {count} waiting for {causes} cause(s)").format(
        count=waiting, causes=(retry or {}).get("causes_backed_off", 0)) if waiting else ""
    return ": " + ", ".join(f"{n} {kind}" for kind, n in kinds.items()) + f" ({(retry or {}).get('due', 0)} due" + \
        causes + ")"


def _dead_letters(broker: dict[str, Any]) -> str:
    """The dead-letter and expiry queues' counts, each with its queue name ("?" when they could not be read)."""
    counts, queues = broker.get("dead_letters"), broker.get("dead_letter_queues") or {}
    if not counts:
        return str(broker.get("dead_letters_note") or "?")
    return ", ".join(f"{counts[kind]} ({queues.get(kind, kind)})" for kind in ("dead_letter", "expiry"))
