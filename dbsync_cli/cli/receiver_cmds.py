"""`dbsync apply`, `dbsync receiver` and `dbsync conflicts list|show|resolve`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import pymysql
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dbsync_cli import exitcodes, records
from dbsync_cli.cli import bulk_opts, common
from dbsync_cli.cli.sender_cmds import stop_on_signals
from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError, SchemaModel
from dbsync_cli.receiver import actions
from dbsync_cli.receiver import conflicts as conflicts_mod
from dbsync_cli.receiver import run as run_mod
from dbsync_cli.receiver.apply import AlreadyApplying, Applier
from dbsync_cli.receiver.apply import apply as apply_stage
from dbsync_cli.receiver.retry import retry_pending
from dbsync_cli.receiver.state import StateError


def _model(cfg: Config) -> SchemaModel:
    try:
        return run_mod.load_model(cfg)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    except pymysql.MySQLError as exc:
        common.fail(_("central_db {who}: {error}").format(who=cfg.db("central_db").describe(), error=exc.args[-1]),
                    exitcodes.UNREACHABLE)


def apply(
    config: common.ConfigOption = None,
    from_inbox: Annotated[bool, typer.Option("--from-inbox", help="Apply the inbox table instead of stdin.")] = False,
    retry: Annotated[bool, typer.Option("--retry", help="Re-apply the retry queue afterwards.")] = False,
) -> None:
    """Apply sync messages (stdin NDJSON, or the inbox) to the central DB; one outcome line per message."""
    cfg = common.load_config(config, "receiver")
    model = _model(cfg)
    settings = run_mod.apply_settings(cfg)
    try:
        if from_inbox or retry:
            applier = Applier(settings, model)
            try:
                applier.claim()
                if from_inbox:
                    run_mod.drain_inbox(applier)
                if retry:
                    records.write(o.record() for o in retry_pending(applier, everything=True))
            finally:
                applier.close()
        else:
            records.write(apply_stage(records.read(sys.stdin.buffer, "stdin"), settings, model))
        run_mod.housekeeping_once(cfg, model)  # the limits `dbsync receiver` keeps, kept by the pipe too
    except AlreadyApplying as exc:
        common.fail(str(exc), exitcodes.ANOTHER_RECEIVER)


def receiver(
    site_id: Annotated[str | None, typer.Option("--receiver-id", "--site-id", help="This receiver's own "
                                                "identifier, not a site's (default: receiver.site_id); names the "
                                                "durable subscription's client id. --site-id is its old name.")] = None,
    config: common.ConfigOption = None,
    idle_exit: Annotated[float | None, typer.Option("--idle-exit", help="Exit after N idle seconds.")] = None,
    worker: Annotated[bool, typer.Option("--worker", help="One of several receivers on this central (each on any "
                                         "machine): each applies the sites whose deliveries the broker gives it "
                                         "(message groups); a site whose worker stops is taken over. Default: "
                                         "receiver.worker.")] = False,
) -> None:
    """consume + apply + retry + OpenMRS REST calls in one supervised process; SIGTERM drains and exits 0."""
    cfg = common.load_config(config, "receiver")
    if site_id:
        cfg.values["receiver.site_id"] = site_id
    if worker:
        cfg.values["receiver.worker"] = True
    stop = stop_on_signals()
    try:
        run_mod.Receiver(cfg).run(stop, idle_exit=idle_exit)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    except StateError as exc:  # MigrationRefused: another receiver applies (13)
        common.fail(str(exc), getattr(exc, "code", exitcodes.CONFIG))
    except AlreadyApplying as exc:
        common.fail(str(exc), exitcodes.ANOTHER_RECEIVER)


conflicts_app = typer.Typer(help="Inspect and resolve rows edited both centrally and at a site.",
                            no_args_is_help=True)


def open_applier(config: Path | None) -> Applier:
    """An Applier on the receiver config's central DB (the caller closes it)."""
    cfg = common.load_config(config, "receiver")
    return Applier(run_mod.apply_settings(cfg), _model(cfg))


WaitOption = Annotated[float, typer.Option(
    "--wait", metavar="SECONDS", help="While a receiver runs, how long to wait for it to carry the action out "
    "(it holds the applier lock); then give up with exit 18, nothing changed.")]


def act(config: Path | None, action: str, args: dict[str, Any], wait: float) -> dict[str, Any]:
    """An action on central state under the applier lock, or through the running receiver (receiver/actions.py);
    one line and its exit code when it cannot be done."""
    applier = open_applier(config)
    try:
        return actions.run(applier, action, args, who=conflicts_mod.who(), wait=wait)
    except actions.ReceiverBusy as exc:
        common.fail(str(exc), exitcodes.RECEIVER_BUSY)
    except (actions.ActionFailed, conflicts_mod.ConflictError, StateError) as exc:
        common.fail(str(exc))
    finally:
        applier.close()


@conflicts_app.command("list")
def conflicts_list(
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved conflicts.")] = False,
    central_owned: Annotated[bool, typer.Option(
        "--central-owned", help="Only the sites' changes to central's own rows left unchanged, per site and table.")
    ] = False,
) -> None:
    """Unresolved conflicts (oldest first), then the changes to central's own rows that were not applied."""
    applier = open_applier(config)
    try:
        found = conflicts_mod.list_conflicts(applier.conn, applier.settings.state_schema, include_resolved=all_)
        owned = conflicts_mod.central_owned_skips(applier.conn, applier.settings.state_schema)
    finally:
        applier.close()
    if json_out:
        listed = owned if central_owned else [c.summary() for c in found]
        sys.stdout.write(orjson.dumps(listed).decode() + "\n")
        return
    if owned:
        kept = Table(title="central's own rows: site changes not applied (receiver.central_rows = skip)")
        for col in ("site", "table", "changes"):
            kept.add_column(col)
        for entry in owned:
            kept.add_row(entry["site"], entry["table"], str(entry["count"]))
        if central_owned:
            Console().print(kept)
            return
    elif central_owned:
        Console().print(_("no site changed central's own rows"))
        return
    table = Table(title=f"{len(found)} {_('conflict(s)')}")
    for col in ("#", _("site"), _("table"), "uuid", _("since"), _("reason"), _("resolution")):
        table.add_column(col, overflow="fold")
    for c in found:
        table.add_row(str(c.id), c.site, c.table, c.uuid, c.date_created.isoformat(sep=" ", timespec="seconds"),
                      c.reason, c.resolution or "")
    Console().print(table)
    if owned:
        Console().print(kept)


@conflicts_app.command("show")
def conflicts_show(number: int, config: common.ConfigOption = None, json_out: common.JsonOption = False) -> None:
    """Column-by-column diff of the central row and the incoming change."""
    applier = open_applier(config)
    try:
        conflict = conflicts_mod.get_conflict(applier.conn, applier.settings.state_schema, number)
        rows = conflicts_mod.diff(applier, conflict)
    except conflicts_mod.ConflictError as exc:
        common.fail(str(exc))
    finally:
        applier.close()
    if json_out:
        out = {**conflict.summary(), "columns": [
            {"column": c, "central": central, "incoming": incoming, "differs": d} for c, central, incoming, d in rows]}
        sys.stdout.write(orjson.dumps(out, default=str).decode() + "\n")
        return
    table = Table(title=f"conflict {number}: {conflict.table} {conflict.uuid} from {conflict.site}",
                  caption=conflict.reason)
    for col in ("column", "central", "incoming"):
        table.add_column(col, overflow="fold")
    for column, central, incoming, differs in rows:
        style = "bold yellow" if differs else None
        table.add_row(column, "[dim]NULL[/]" if central is None else escape(str(central)),
                      "[dim]NULL[/]" if incoming is None else escape(str(incoming)), style=style)
    Console().print(table)


@conflicts_app.command("resolve")
def conflicts_resolve(
    number: Annotated[int | None, typer.Argument(help="The conflict; omit it to resolve what the filters "
                                                      "select.")] = None,
    config: common.ConfigOption = None,
    site: bulk_opts.SiteFilter = None,
    table: bulk_opts.TableFilter = None,
    reason: bulk_opts.ReasonFilter = None,
    kind: bulk_opts.ConflictKindFilter = None,
    older_than: bulk_opts.OlderThanFilter = None,
    keep_central: Annotated[bool, typer.Option("--keep-central", help="Keep central's row, drop the incoming "
                                                                      "change.")] = False,
    take_incoming: Annotated[bool, typer.Option("--take-incoming", help="Apply the incoming change.")] = False,
    merge: Annotated[str | None, typer.Option("--merge", help="Take these incoming columns (col1,col2), keep "
                                                              "the rest.")] = None,
    yes: bulk_opts.YesOption = False,
    wait: WaitOption = actions.CLI_WAIT_SECONDS,
) -> None:
    """Resolve conflict N (or, after a count and a confirmation, every unresolved one the filters select); bare
    `resolve N` records a manual fix. Messages waiting behind them are then applied; each resolution is logged
    with the operator's name."""
    chosen = [m for m, on in (("keep-central", keep_central), ("take-incoming", take_incoming),
                              ("merge", merge is not None)) if on]
    if len(chosen) > 1:
        common.fail(_("choose one of --keep-central, --take-incoming, --merge"), exitcodes.CONFIG)
    mode = chosen[0] if chosen else "manual"
    columns = [c.strip() for c in merge.split(",") if c.strip()] if merge else None
    selected = bulk_opts.build("conflicts", site, table, reason, kind, older_than)
    if (number is None) == (not selected.filtered):
        common.fail(_("give a conflict number, or filters (--site, --table, --reason, --kind, --older-than) for "
                      "several"), exitcodes.CONFIG)
    if number is None and mode == "merge":
        common.fail(_("--merge resolves one conflict at a time"), exitcodes.CONFIG)
    if number is not None:
        done = act(config, "resolve", {"number": number, "mode": mode, "columns": columns}, wait)
    else:
        pinned = bulk_opts.confirm(config, selected, _("Resolve them ({mode})?").format(mode=_(mode)), yes)
        done = act(config, "resolve_many", {"selection": pinned.args(), "mode": mode}, wait)
    print(done["text"])
