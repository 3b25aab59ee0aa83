"""`dbsync console`: the receiver's web console, its users, and the OpenMRS Open Web App."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.i18n import _

app = typer.Typer(help="The web console of a receiver or a sender: serve it, manage its users, build the OpenMRS app.",
                  no_args_is_help=True)
user_app = typer.Typer(help="Console users (names, roles, argon2 hashes: never a password).", no_args_is_help=True)
app.add_typer(user_app, name="user")


@app.command("serve")
def serve(
    config: common.ConfigOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default console.host, "
                                                            "127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default console.port, 8800).")] = None,
) -> None:
    """Serve the console: with a receiver config the sites, retry queue, conflicts, verify results, REST calls and
    audit log; with a sender config the site's checkpoint, lag, retention and snapshot; /api/… and /metrics."""
    cfg = common.load_config(config)
    from dbsync_cli.console.serve import serve as run
    from dbsync_cli.console.serve import url_of
    from dbsync_cli.console.users import list_users, users_path

    if not list_users(users_path(cfg.home)):
        common.fail(_("no console users in {path}: add one with `dbsync console user add NAME`").format(
            path=users_path(cfg.home)), exitcodes.CONFIG)
    print(_("dbsync console at {url}").format(url=url_of(cfg, host, port)), file=sys.stderr, flush=True)
    run(cfg, host, port)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument()],
    config: common.ConfigOption = None,
    role: Annotated[str, typer.Option("--role", help="readonly (sees) or operator (also acts).")] = "readonly",
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input (scripts) instead of prompting.")] = False,
) -> None:
    """Add a user (or set a user's password and role); the password is asked for, never an argument."""
    cfg = common.load_config(config)
    from dbsync_cli.console.users import UsersError, add_user, users_path

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(_("password for {name}: ").format(name=name))
        if getpass.getpass(_("again: ")) != password:
            common.fail(_("the two passwords differ"), exitcodes.CONFIG)
    try:
        add_user(users_path(cfg.home), name, password, role)
    except UsersError as exc:
        common.fail(str(exc), exitcodes.CONFIG)
    print(_("console user {name!r} ({role}) saved in {path}").format(name=name, role=_(role), path=users_path(cfg.home)))


@user_app.command("list")
def user_list(config: common.ConfigOption = None, json_out: common.JsonOption = False) -> None:
    """The console's users and roles."""
    cfg = common.load_config(config)
    from dbsync_cli.console.users import list_users, users_path

    users = list_users(users_path(cfg.home))
    if json_out:
        sys.stdout.write(orjson.dumps([{"name": u.name, "role": u.role} for u in users]).decode() + "\n")
        return
    for user in users:
        print(f"{user.name}\t{user.role}")


@user_app.command("remove")
def user_remove(name: Annotated[str, typer.Argument()], config: common.ConfigOption = None) -> None:
    """Remove a user (its sessions end with it)."""
    cfg = common.load_config(config)
    from dbsync_cli.console.users import remove_user, users_path

    if not remove_user(users_path(cfg.home), name):
        common.fail(_("no console user {name!r}").format(name=name), exitcodes.CONFIG)
    print(_("console user {name!r} removed").format(name=name))


@app.command("owa")
def owa(
    url: Annotated[str, typer.Option("--url", help="The console's address as OpenMRS users' browsers reach it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The zip to write.")] = Path("dbsync-console.zip"),
) -> None:
    """Build the Open Web App zip an OpenMRS admin uploads in Manage Apps (it opens the console)."""
    from dbsync_cli.console.owa import OwaError, build

    try:
        print(_("wrote {path}").format(path=build(url, out)))
    except OwaError as exc:
        common.fail(str(exc), exitcodes.CONFIG)
