"""`dbsync retry list|show|drop|again`: the receiver's retry queue, without SQL."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import pymysql
import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import exitcodes, records
from dbsync_cli.cli import bulk_opts, common
from dbsync_cli.cli.receiver_cmds import WaitOption, act, open_applier
from dbsync_cli.faults import database_exit_code
from dbsync_cli.i18n import _, ngettext
from dbsync_cli.receiver import actions, retry, selection
from dbsync_cli.receiver.state import StateError

app = typer.Typer(help="The retry queue: messages that could not be applied yet, and why.", no_args_is_help=True)


@app.command("list")
def retry_list(
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
    site: bulk_opts.SiteFilter = None,
    table: bulk_opts.TableFilter = None,
    reason: bulk_opts.ReasonFilter = None,
    kind: bulk_opts.RetryKindFilter = None,
    older_than: bulk_opts.OlderThanFilter = None,
    limit: Annotated[int, typer.Option("--limit", help="At most N entries (oldest first).")] = 1000,
) -> None:
    """Entries oldest first: site, table, entity, kind, attempts and the one-line reason; the title says how many
    match in all. The same filters select what `retry again|drop` act on."""
    chosen = bulk_opts.build("retry", site, table, reason, kind, older_than)
    cfg = common.load_config(config, "receiver")
    params = cfg.db("central_db")
    try:
        with params.connect() as conn:
            total, _highest = selection.count(conn, cfg["central_db.state_schema"], chosen)
            found = selection.retry_rows(conn, cfg["central_db.state_schema"], chosen, limit=max(0, limit))
    except pymysql.MySQLError as exc:
        common.fail(_("central_db {who}: {error}").format(who=params.describe(), error=exc.args[-1]),
                    database_exit_code(exc))
    if json_out:
        sys.stdout.write(orjson.dumps(found).decode() + "\n")
        return
    title = ngettext("{count} retry entry", "{count} retry entries", total).format(count=total)
    if len(found) < total:
        title += " " + _("({shown} shown: --limit)").format(shown=len(found))
    table_out = Table(title=title)
    for col in ("#", _("site"), _("table"), _("entity"), _("kind"), _("attempts"), _("since"), _("reason")):
        table_out.add_column(col, overflow="fold")
    for e in found:
        table_out.add_row(str(e["id"]), e["site"] or "?", e["table"] or "?", e["entity"] or _("(error)"),
                          _(e["kind"]) if e["kind"] else "", str(e["attempts"]), e["date_created"][:19],
                          f'{e["waiting"]}: {e["reason"]}' if e.get("waiting") else e["reason"])
    Console().print(table_out)


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
def retry_drop(
    number: Annotated[int | None, typer.Argument(help="The entry; omit it to drop what the filters select.")] = None,
    config: common.ConfigOption = None,
    site: bulk_opts.SiteFilter = None,
    table: bulk_opts.TableFilter = None,
    reason: bulk_opts.ReasonFilter = None,
    kind: bulk_opts.RetryKindFilter = None,
    older_than: bulk_opts.OlderThanFilter = None,
    yes: bulk_opts.YesOption = False,
    wait: WaitOption = actions.CLI_WAIT_SECONDS,
) -> None:
    """Remove entry N (or every entry the filters select, after a count and a confirmation) for good: they will
    never apply; messages of the same entities waiting behind them follow."""
    chosen = bulk_opts.build("retry", site, table, reason, kind, older_than)
    if (number is None) == (not chosen.filtered):
        common.fail(_("give an entry number, or filters (--site, --table, --reason, --kind, --older-than) for "
                      "several"), exitcodes.CONFIG)
    if number is not None:
        print(act(config, "retry_drop", {"number": number}, wait)["text"])
        return
    pinned = bulk_opts.confirm(config, chosen, _("Drop them for good?"), yes)
    print(act(config, "retry_drop_many", {"selection": pinned.args()}, wait)["text"])


@app.command("again")
def retry_again(
    number: Annotated[int | None, typer.Argument(help="Only this entry (default: the whole queue, or what the "
                                                      "filters select).")] = None,
    config: common.ConfigOption = None,
    site: bulk_opts.SiteFilter = None,
    table: bulk_opts.TableFilter = None,
    reason: bulk_opts.ReasonFilter = None,
    kind: bulk_opts.RetryKindFilter = None,
    older_than: bulk_opts.OlderThanFilter = None,
    yes: bulk_opts.YesOption = False,
    wait: WaitOption = actions.CLI_WAIT_SECONDS,
) -> None:
    """Retry now (after fixing the cause, e.g. creating missing metadata); one outcome line per entry tried. With
    filters: the selected entries become due now (after a count and a confirmation) and are retried."""
    chosen = bulk_opts.build("retry", site, table, reason, kind, older_than)
    if number is not None and chosen.filtered:
        common.fail(_("give an entry number or filters, not both"), exitcodes.CONFIG)
    if not chosen.filtered:
        records.write(act(config, "retry_again", {"number": number}, wait)["records"])
        return
    pinned = bulk_opts.confirm(config, chosen, _("Retry them now?"), yes)
    done = act(config, "retry_again_many", {"selection": pinned.args()}, wait)
    records.write(done["records"])
    print(done["text"], file=sys.stderr)
