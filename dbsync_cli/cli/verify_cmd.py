"""`dbsync verify`: at a site, compare its rows with central's over the broker (and `--repair`); with a receiver
config, `--status` shows the latest result of every site."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.control import ControlError
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError

_COLUMNS = ("site_rows", "central_rows", "matched", "missing", "different", "extra", "placeholders", "not_owned",
            "edited_at_central", "changing", "added_at_central")


def verify(
    config: common.ConfigOption = None,
    table: Annotated[list[str] | None, typer.Option(
        "--table", "-t", help="Verify only this synced table (repeatable; default: all).")] = None,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Send the missing and different rows again and delete the extra ones at central, as "
                         "ordinary sync messages (conflicts and central's rows are reported, never overwritten), "
                         "then wait until central has applied them and check them again.")
    ] = False,
    delete_added: Annotated[bool, typer.Option(
        "--delete-added", help="With --repair: delete the rows added at central that hang off this site's rows "
                               "without asking (asked on a terminal, kept otherwise).")] = False,
    status: Annotated[bool, typer.Option(
        "--status", help="With a receiver config: the latest verify result of each site (stored at central).")
    ] = False,
    site: Annotated[str | None, typer.Option("--site", help="With --status: only this site.")] = None,
    rounds: Annotated[int, typer.Option(
        "--rounds", min=0, help="Times a differing row is checked again before it is reported.")] = 3,
    settle: Annotated[float, typer.Option(
        "--settle", min=0, help="Seconds between two checks of a differing row (sync goes on meanwhile).")] = 5,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1, help="Seconds to wait for each answer from central.")] = 1800,
    to: Annotated[Path | None, typer.Option(
        "--to", help="By file (no network): write the question for central (dbsync import FILE --answer-to …); "
                     "with --from and --repair: the bundle of the repair.")] = None,
    from_: Annotated[Path | None, typer.Option(
        "--from", help="By file: read central's answer to this site's last question.")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Start over instead of resuming an interrupted run of the same tables.")] = False,
    json_out: common.JsonOption = False,
) -> None:
    """Prove that central holds this site's rows, row by row; exit 1 when they differ, 2+ when it could not run."""
    if to is not None or from_ is not None:
        from dbsync_cli.cli import verify_file_cmd

        result = verify_file_cmd.by_file(config, to, from_, repair=repair, json_out=json_out)
        if result is not None and not json_out:
            _print_tables(f"verify {result.run}", result.as_json()["tables"])
            _print_columns(result.as_json()["tables"])
            verify_file_cmd.summary(result)
        if result is not None and result.differences:
            raise typer.Exit(exitcodes.FAILURE)
        return
    if status:
        cfg = common.load_config(config, "receiver")
        from dbsync_cli.receiver.run import Receiver

        _print_status(Receiver(cfg).verify_status(site), json_out)
        return
    cfg = common.load_config(config, "sender")
    from dbsync_cli.sender.run import Sender

    try:
        report = Sender(cfg).verify(table, repair=repair, progress=sys.stderr.isatty() and not json_out,
                                    timeout=timeout, rounds=rounds, settle_seconds=settle, restart=restart,
                                    confirm=lambda counts: delete_added or _ask_to_delete(counts, json_out))
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    except ControlError as exc:
        common.fail(str(exc), exitcodes.NO_ANSWER)
    result = report.as_json()
    if json_out:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_tables(f"verify {report.run}", report.found or {n: t for n, t in result["tables"].items()})
        _print_columns(result["tables"])
        line = (_("{count} row(s) differ").format(count=report.differences) if report.differences
                else _("no differences")) + "; " + _("{sent:,} bytes sent, {received:,} received, {seconds:.1f} s").format(
            sent=report.bytes_sent, received=report.bytes_received, seconds=report.seconds)
        if repair:
            done = report.repaired
            line = _("repair sent {rows} row(s) and {deletes} delete(s); central applied them: {mended} mended, "
                     "{held} held at central (dbsync conflicts / retry list there), {waiting} not applied yet").format(
                rows=done.get("rows_sent", 0), deletes=done.get("deletes_sent", 0), mended=done.get("mended", 0),
                held=done.get("held_at_central", 0), waiting=done.get("not_applied", 0)) + "; " + line
        Console().print(line)
    if report.repaired.get("added_kept"):
        print("dbsync: " + _("not deleted: {count} row(s) added at central that hang off this site's rows; to delete them, "
                      "run dbsync verify --repair --delete-added").format(count=report.repaired["added_kept"]),
              file=sys.stderr)
    if report.differences:
        raise typer.Exit(exitcodes.FAILURE)


def _ask_to_delete(counts: dict[str, int], json_out: bool) -> bool:
    """On a terminal: whether to delete the rows added at central (central's own by the rules)."""
    if json_out or not sys.stdin.isatty():
        return False
    shown = ", ".join(f"{name} {count:,}" for name, count in sorted(counts.items()))
    return typer.confirm(_("Delete {count} row(s) at central that hang off this site's rows but no site sent ({tables})? "
                           "They are central's own rows").format(count=sum(counts.values()), tables=shown),
                         default=False, err=True)


def _print_columns(tables: dict[str, dict[str, Any]]) -> None:
    """Once per table: the columns only one side has, which verify left out of the comparison."""
    for name, counts in tables.items():
        parts = [_("{column} only at the site").format(column=c) for c in counts.get("columns_only_at_site") or []]
        parts += [_("{column} only at central").format(column=c) for c in counts.get("columns_only_at_central") or []]
        if parts:
            Console().print(_("{table}: compared without {columns}").format(table=name, columns=", ".join(parts)))


def _print_tables(title: str, tables: dict[str, dict[str, Any]]) -> None:
    """One row per table, with only the counters some table has; when even that is wider than the terminal (80
    columns), one line per table naming its counters, so no header or number is cut in the middle of a word."""
    shown = {n: t for n, t in tables.items() if t.get("site_rows") or t.get("central_rows")}
    columns = [c for c in _COLUMNS if c in ("site_rows", "central_rows") or any(t.get(c) for t in shown.values())]
    console = Console()
    view = Table(title=title)
    view.add_column(_("table"), no_wrap=True)
    for column in columns:
        view.add_column(_(column.replace("_", " ")), justify="right", no_wrap=True)
    for name, counts in shown.items():
        view.add_row(name, *(f"{counts.get(c, 0):,}" for c in columns))
    if Measurement.get(console, console.options.update_width(10_000), view).maximum <= console.width:
        console.print(view)
        return
    console.print(title)
    for name, counts in shown.items():
        parts = [f"{_(c.replace('_', ' '))} {counts.get(c, 0):,}" for c in columns if counts.get(c)
                 or c in ("site_rows", "central_rows")]
        console.print(f"  {name}: " + " · ".join(parts))


def _print_status(runs: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        sys.stdout.write(orjson.dumps(runs, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")
        return
    if not runs:
        Console().print(_("no verify run on record"))
        return
    for run in runs:
        _print_tables(_("{site}: verify {run} ({state}, finished {finished})").format(
            site=run["site"], run=run["run"], state=_(run["state"]), finished=run["finished"] or "-"), run["tables"])
        _print_columns(run["tables"])
        Console().print(_("{count} difference(s)").format(count=run["differences"]))
