"""`dbsync archive list|show`: what was synced, when, from which site, what it said and what central did with it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import pymysql
import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.faults import database_exit_code
from dbsync_cli.i18n import _, ngettext
from dbsync_cli.receiver.archive_query import DEFAULT_LIMIT, OUTCOMES, Filters, parse_when
from dbsync_cli.receiver.run import Receiver
from dbsync_cli.receiver.state import StateError

app = typer.Typer(help="The archive of what was synced: every handled message, its wire form and its outcomes.",
                  no_args_is_help=True)


def _call(config: common.ConfigOption, call: str, *args: Any) -> Any:
    """Receiver(cfg).<call>(*args), a database fault or a missing entry in one line."""
    cfg = common.load_config(config, "receiver")
    try:
        return getattr(Receiver(cfg), call)(*args)
    except StateError as exc:
        common.fail(str(exc))
    except pymysql.MySQLError as exc:
        common.fail(_("central_db {who}: {error}").format(who=cfg.db("central_db").describe(), error=exc.args[-1]),
                    database_exit_code(exc))


@app.command("list")
def archive_list(
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
    uuid: Annotated[str | None, typer.Option("--uuid", help="The history of this row (its uuid).")] = None,
    patient: Annotated[str | None, typer.Option(
        "--patient", help="Everything hanging off this person (their person uuid): their rows, encounters, obs, "
        "orders …")] = None,
    site: Annotated[str | None, typer.Option("--site", help="Only messages of this site.")] = None,
    table: Annotated[str | None, typer.Option("--table", help="Only rows of this table.")] = None,
    outcome: Annotated[str | None, typer.Option(
        "--outcome", help="Only this outcome: " + ", ".join(OUTCOMES) + ".")] = None,
    message: Annotated[str | None, typer.Option("--message", help="Only this message id.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", help="Handled at or after WHEN (UTC): 2026-12-07, '2026-12-07 14:30', or an age "
        "back from now: 30m, 2h, 3d.")] = None,
    until: Annotated[str | None, typer.Option("--until", metavar="WHEN", help="Handled before WHEN.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most the N newest (shown oldest first).")] = DEFAULT_LIMIT,
) -> None:
    """Archive rows oldest first: when, site, table, uuid, the person it hangs off, outcome, why and by whom."""
    if outcome is not None and outcome not in OUTCOMES:
        common.fail(_("--outcome {value!r}: one of {choices}").format(value=outcome, choices=", ".join(OUTCOMES)),
                    exitcodes.CONFIG)
    try:
        filters = Filters(uuid=uuid, patient=patient, site=site, table=table, outcome=outcome, message_id=message,
                          since=parse_when(since) if since else None, until=parse_when(until) if until else None,
                          limit=max(1, limit))
    except StateError as exc:
        common.fail(str(exc), exitcodes.CONFIG)
    found: list[dict[str, Any]] = _call(config, "archive", filters)
    if json_out:
        sys.stdout.write(orjson.dumps(found).decode() + "\n")
        return
    out = Table(title=ngettext("{count} archive row", "{count} archive rows", len(found)).format(count=len(found)))
    for col in ("#", _("when"), _("site"), _("table"), _("op"), _("uuid"), _("patient"), _("outcome"), _("by"),
                _("reason")):
        out.add_column(col, overflow="fold")
    for row in found:
        out.add_row(str(row["id"]), row["date"][:19], row["site"] or "", row["table"] or "", row["op"] or "",
                    row["uuid"] or "", row["patient"] or "", _(row["outcome"]), row["by"], row["reason"] or "")
    Console().print(out)


@app.command("show")
def archive_show(number: int, config: common.ConfigOption = None, json_out: common.JsonOption = False) -> None:
    """One archive row: the message as it came (decoded) and every outcome it had, oldest first."""
    found: dict[str, Any] = _call(config, "archive_entry", number)
    if json_out:
        sys.stdout.write(orjson.dumps(found).decode() + "\n")
        return
    for key in ("id", "date", "message_id", "site", "table", "op", "uuid", "patient", "patient2"):
        if found.get(key) is not None:
            print(f"{key}: {found[key]}")
    print(_("history:"))
    for event in found["history"]:
        print(f"  #{event['id']} {event['date'][:19]} {_(event['outcome'])} ({_('by')} {event['by']})"
              + (f": {event['reason']}" if event["reason"] else ""))
    print(_("message:"))
    if found["message"] is None:
        print("  " + _("(its wire form was pruned, or archived before the archive was on)"))
    else:
        print(orjson.dumps(found["message"], option=orjson.OPT_INDENT_2).decode()
              if not isinstance(found["message"], str) else found["message"])
