"""`dbsync retry list|show|drop|again`: the receiver's retry queue, without SQL."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import records
from dbsync_cli.cli import common
from dbsync_cli.cli.receiver_cmds import WaitOption, act, open_applier
from dbsync_cli.i18n import _, ngettext
from dbsync_cli.receiver import actions, retry
from dbsync_cli.receiver.state import StateError

app = typer.Typer(help="The retry queue: messages that could not be applied yet, and why.", no_args_is_help=True)


@app.command("list")
def retry_list(
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
    site: Annotated[str | None, typer.Option("--site", help="Only this site's entries.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N entries (oldest first).")] = 1000,
) -> None:
    """Entries oldest first: site, table, entity, attempts and the one-line reason."""
    applier = open_applier(config)
    try:
        found = retry.list_entries(applier.conn, applier.settings.state_schema, site=site, limit=limit)
    finally:
        applier.close()
    if json_out:
        sys.stdout.write(orjson.dumps([e.summary() for e in found]).decode() + "\n")
        return
    table = Table(title=ngettext("{count} retry entry", "{count} retry entries", len(found)).format(count=len(found)))
    for col in ("#", _("site"), _("table"), _("entity"), _("attempts"), _("since"), _("reason")):
        table.add_column(col, overflow="fold")
    for e in found:
        table.add_row(str(e.id), e.site or "?", e.table or "?", e.entity or _("(error)"), str(e.attempts),
                      e.date_created.isoformat(sep=" ", timespec="seconds"), e.reason)
    Console().print(table)


@app.command("show")
def retry_show(number: int, config: common.ConfigOption = None, json_out: common.JsonOption = False) -> None:
    """One entry with the message it holds."""
    applier = open_applier(config)
    try:
        entry = retry.get_entry(applier.conn, applier.settings.state_schema, number)
    except StateError as exc:
        common.fail(str(exc))
    finally:
        applier.close()
    body = entry.body.decode("utf-8", "replace")
    if json_out:
        sys.stdout.write(orjson.dumps({**entry.summary(), "body": body}).decode() + "\n")
        return
    for key, value in entry.summary().items():
        print(f"{key}: {value}")
    print(f"body: {body}")


@app.command("drop")
def retry_drop(number: int, config: common.ConfigOption = None, wait: WaitOption = actions.CLI_WAIT_SECONDS) -> None:
    """Remove entry N for good (it will never apply); messages of the same entity waiting behind it follow."""
    print(act(config, "retry_drop", {"number": number}, wait)["text"])


@app.command("again")
def retry_again(
    number: Annotated[int | None, typer.Argument(help="Only this entry (default: the whole queue).")] = None,
    config: common.ConfigOption = None,
    wait: WaitOption = actions.CLI_WAIT_SECONDS,
) -> None:
    """Retry now (after fixing the cause, e.g. creating missing metadata); one outcome line per entry tried."""
    records.write(act(config, "retry_again", {"number": number}, wait)["records"])
