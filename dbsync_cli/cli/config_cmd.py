"""`dbsync config check`: validate a config, test that its servers answer, print it with secrets masked."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from dbsync_cli import checks as checks_mod
from dbsync_cli import config as config_mod
from dbsync_cli import exitcodes, i18n
from dbsync_cli.cli import common
from dbsync_cli.i18n import _

app = typer.Typer(help="Inspect and validate configuration.", no_args_is_help=True)


@app.command("check")
def check(
    config: common.ConfigOption = None,
    role: Annotated[str | None, typer.Option(help="sender or receiver (default: from the file's sections).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not test that servers answer.")] = False,
    json_out: common.JsonOption = False,
) -> None:
    """Validate the config and check it against its servers: logins, grants, binlog settings, server id, time zone
    (UTC offsets against the server's), CA and certificate files, the state directory and its free space, the
    broker's certificate and login, and the broker permissions the role needs on every address it uses; one finding
    each, exit code of the first error."""
    if json_out:  # for programs: English whatever the terminal's language
        i18n.use("en")
    path = common.config_path(config)
    role = role or common.detect_role(path)
    result = config_mod.validate(path, role)
    if not isinstance(result, config_mod.Config):
        for problem in result:
            print(f"dbsync: config: {problem}", file=sys.stderr)
        raise typer.Exit(exitcodes.CONFIG)
    if offline:
        findings = checks_mod.offline(result)
    else:
        from dbsync_cli.receiver import checks as receiver_checks
        from dbsync_cli.sender import checks as sender_checks

        if role == "sender":
            findings = checks_mod.check(result, sender_checks.STEPS)
        else:
            findings = checks_mod.check(result, receiver_checks.STEPS, receiver_checks.enabled_sites)
    problems = [f.line() for f in findings if f.state == checks_mod.ERROR]
    warnings = [f.line() for f in findings if f.state == checks_mod.WARNING]
    if json_out:
        sys.stdout.write(orjson.dumps({"role": role, "source": result.source, "config": result.masked(),
                                       "findings": [f.record() for f in findings], "problems": problems,
                                       "warnings": warnings}).decode() + "\n")
    else:
        table = Table(title=_("{role} config from {source}").format(role=_(role), source=result.source))
        table.add_column(_("key"))
        table.add_column(_("value"))
        for key, value in result.masked().items():
            table.add_row(key, "" if value is None else str(value))
        console = Console(stderr=False)
        console.print(table)
        checked = Table(title=_("checks") + (f" ({_('offline')})" if offline else ""))
        for column in (_("check"), _("result"), _("detail")):
            checked.add_column(column, overflow="fold")
        style = {checks_mod.OK: "green", checks_mod.WARNING: "yellow", checks_mod.ERROR: "red",
                 checks_mod.SKIPPED: "dim"}
        for f in findings:
            checked.add_row(f.check, f"[{style[f.state]}]{_(f.state)}[/]", f.message)
        console.print(checked)
    for warning in warnings:
        print("dbsync: config: " + _("warning: {text}").format(text=warning), file=sys.stderr)
    for problem in problems:
        print(f"dbsync: config: {problem}", file=sys.stderr)
    code = checks_mod.exit_code(findings)
    if code:
        raise typer.Exit(code)
