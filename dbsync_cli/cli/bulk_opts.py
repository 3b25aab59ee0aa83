"""The filter options of bulk actions (`retry again|drop`, `conflicts resolve`) and their count + confirmation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import pymysql
import typer

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.faults import database_exit_code
from dbsync_cli.i18n import _, ngettext
from dbsync_cli.receiver import selection
from dbsync_cli.receiver.selection import Selection, SelectionError

SiteFilter = Annotated[str | None, typer.Option("--site", help="Only entries of this site.")]
TableFilter = Annotated[str | None, typer.Option("--table", help="Only entries of this table.")]
ReasonFilter = Annotated[str | None, typer.Option(
    "--reason", help="Only entries whose reason contains this text (any letter case).")]
RetryKindFilter = Annotated[str | None, typer.Option(
    "--kind", help="Only entries of this kind: transient, permanent or waiting.")]
ConflictKindFilter = Annotated[str | None, typer.Option(
    "--kind", help="Only conflicts of this kind: edited (central edited the row since its sync), future (dated in "
    "central's future), central (central's own row), adopting (a site being adopted), recreated.")]
OlderThanFilter = Annotated[str | None, typer.Option(
    "--older-than", metavar="AGE", help="Only entries parked longer ago than AGE: 30m, 2h, 3d, 1w.")]
YesOption = Annotated[bool, typer.Option(
    "--yes", "-y", help="Do not ask for confirmation (for scripts; without it a bulk action asks, and refuses "
    "when stdin is not a terminal).")]


def build(queue: str, site: str | None, table: str | None, reason: str | None, kind: str | None,
          older_than: str | None) -> Selection:
    """The selection the options name; a filter that cannot be used is one line, exit 2."""
    try:
        return Selection(queue=queue, site=site or None, table=table or None, reason=reason or None,
                         kind=kind or None, older_than=selection.parse_age(older_than) if older_than else None)
    except SelectionError as exc:
        common.fail(str(exc), exitcodes.CONFIG)


def confirm(config: Path | None, chosen: Selection, question: str, yes: bool) -> Selection:
    """Count the selection, say how many match, ask (unless --yes); the selection pinned to what was counted.
    Nothing matching ends the command here (exit 0); a refusal changes nothing."""
    cfg = common.load_config(config, "receiver")
    params = cfg.db("central_db")
    try:
        with params.connect() as conn:
            found, pinned = selection.pinned(conn, cfg["central_db.state_schema"], chosen)
    except pymysql.MySQLError as exc:
        common.fail(_("central_db {who}: {error}").format(who=params.describe(), error=exc.args[-1]),
                    database_exit_code(exc))
    what = (ngettext("{count} retry entry matches: {filters}", "{count} retry entries match: {filters}", found)
            if chosen.queue == "retry" else
            ngettext("{count} unresolved conflict matches: {filters}", "{count} unresolved conflicts match: {filters}",
                     found)).format(count=found, filters=chosen.describe())
    print(what, file=sys.stderr)
    if found == 0:
        raise typer.Exit(exitcodes.OK)
    if yes:
        return pinned
    if not sys.stdin.isatty():
        _refuse()
    if not typer.confirm(question, default=False, err=True):
        common.fail(_("not confirmed; nothing changed"))
    return pinned


def _refuse() -> NoReturn:
    common.fail(_("a bulk action needs a confirmation and stdin is not a terminal: add --yes to confirm; nothing "
                  "changed"), exitcodes.CONFIG)
