"""The `dbsync` command: composable stages plus the supervised sender and receiver."""

from __future__ import annotations

from typing import Annotated

import typer

from dbsync_cli import __version__
from dbsync_cli.cli import (
    common,
    config_cmd,
    receiver_admin,
    receiver_cmds,
    retry_cmd,
    schema_cmd,
    sender_cmds,
    status_cmd,
)

app = typer.Typer(
    name="dbsync",
    help="Keep a central OpenMRS database in sync with the databases of many sites (binlog CDC over Artemis STOMP).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"dbsync {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output on stderr.")] = 0,
    quiet: Annotated[int, typer.Option("--quiet", "-q", count=True, help="Less log output on stderr.")] = 0,
) -> None:
    """Keep a central OpenMRS database in sync with the databases of many sites."""
    common.state["verbosity"] = verbose - quiet


app.add_typer(config_cmd.app, name="config")
app.command("schema")(schema_cmd.schema)
app.command("capture")(sender_cmds.capture)
app.command("enrich")(sender_cmds.enrich)
app.command("publish")(sender_cmds.publish)
app.command("sender")(sender_cmds.sender)
app.command("apply")(receiver_cmds.apply)
app.command("receiver")(receiver_cmds.receiver)
app.add_typer(receiver_cmds.conflicts_app, name="conflicts")
app.add_typer(retry_cmd.app, name="retry")
app.command("consume")(receiver_admin.consume)
app.add_typer(receiver_admin.sites_app, name="sites")
app.command("status")(status_cmd.status)


def main() -> None:
    app()
