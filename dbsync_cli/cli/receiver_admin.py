"""`dbsync consume` (broker → inbox, NDJSON out) and `dbsync sites add|list|disable|enable|remove`."""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Annotated, Any

import pymysql
import typer

from dbsync_cli import exitcodes, records, signing
from dbsync_cli.broker import BrokerError
from dbsync_cli.cli import common, resync_cmd
from dbsync_cli.cli.sender_cmds import stop_on_signals
from dbsync_cli.config import Config
from dbsync_cli.faults import database_exit_code
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError
from dbsync_cli.receiver import adopt_held, central, state
from dbsync_cli.receiver import run as run_mod
from dbsync_cli.receiver.consume import consume as consume_stage
from dbsync_cli.supervise import supervise

log = logging.getLogger("dbsync")


def _state_conn(cfg: Config, *, migrate: bool = True) -> Any:
    """A connection to the central server with the state schema in place (created/migrated when asked)."""
    params = central.central_db(cfg)
    try:
        conn = params.connect(autocommit=False)
    except pymysql.err.OperationalError as exc:
        common.fail(_("cannot connect to central database {who}: {error}").format(who=params.describe(), error=exc.args[-1]),
                    exitcodes.UNREACHABLE)
    try:
        if migrate:
            state.migrate(conn, central.state_schema(cfg), openmrs_db=cfg["central_db.database"])
    except state.StateError as exc:
        conn.close()
        common.fail(str(exc), getattr(exc, "code", exitcodes.CONFIG))
    except pymysql.err.MySQLError as exc:
        conn.close()
        code = database_exit_code(exc) if isinstance(exc, pymysql.err.OperationalError) else exitcodes.FAILURE
        text = _("receiver state schema {schema}: {error} (the receiver's user needs ALL PRIVILEGES ON {schema}.*)") \
            if code == exitcodes.PRIVILEGES else _("receiver state schema {schema}: {error}")
        common.fail(text.format(schema=cfg["central_db.state_schema"], error=exc.args[-1]), code)
    return conn


def consume(
    config: common.ConfigOption = None,
    max_messages: Annotated[int | None, typer.Option("--max-messages", help="Stop after N messages (an envelope counts its rows).")] = None,
    idle_exit: Annotated[float | None, typer.Option(
        "--idle-exit", help="Stop when nothing was delivered for SECONDS.", metavar="SECONDS")] = None,
) -> None:
    """Store deliveries in the central inbox (ACK after COMMIT) and write the inbox records as NDJSON.

    Rows already in the inbox and not applied yet are written first, so a restart re-emits them.
    """
    cfg = common.load_config(config, "receiver")
    stop = stop_on_signals()
    _state_conn(cfg).close()
    settings = central.consume_settings(cfg)
    lane_stop = threading.Event()
    if cfg["receiver.complex_obs_dir"]:  # complex obs files arrive as they do with `dbsync receiver`
        threading.Thread(target=supervise, args=("files", run_mod.files_lane(cfg, lane_stop), lane_stop),
                         name="files", daemon=True).start()
    try:
        count = records.write(consume_stage(settings, stop, max_messages=max_messages, idle_seconds=idle_exit))
    except BrokerError as exc:  # a refused subscription (broker_refusals) carries its own operator-fault code
        common.fail(" ".join(str(exc).split()), getattr(exc, "code", exitcodes.UNREACHABLE))
    except BrokenPipeError:
        raise typer.Exit(exitcodes.OK) from None
    finally:
        lane_stop.set()
    log.info("consume: %d records", count)


sites_app = typer.Typer(help="Register, list, disable and remove the sites this receiver accepts.",
                        no_args_is_help=True)


def _run(config: Any, action: Any) -> Any:
    return _run_with(config, lambda conn, schema, _cfg: action(conn, schema))


def _run_with(config: Any, action: Any) -> Any:
    """`action(conn, schema, cfg)` on the state schema; a StateError is the operator's one line."""
    cfg = common.load_config(config, "receiver")
    conn = _state_conn(cfg)
    try:
        return action(conn, central.state_schema(cfg), cfg)
    except state.StateError as exc:
        common.fail(str(exc))
    finally:
        conn.close()


def _record_held(conn: Any, schema: str, cfg: Config, site: state.Site) -> str:
    """Record what central holds now for the adopting `site` (adopt_held.py); the line that tells the operator."""
    try:
        done = adopt_held.record(conn, schema, site, run_mod.load_model(cfg))
    except (SchemaError, pymysql.err.MySQLError) as exc:
        raise state.StateError(_("site {site!r} adopts, but central's rows could not be recorded ({error}): nothing "
                                 "is adopted until `dbsync sites update {site} --adopt` records them").format(
            site=site.identifier, error=exc.args[-1] if exc.args else exc)) from None
    return _("central's rows recorded for site {site!r}: {rows} rows in {tables} tables, at {date} UTC. Load the "
             "site's data into central now: its snapshot adopts only rows loaded from now on, never these.").format(
        site=site.identifier, rows=f"{done.rows:,}", tables=done.tables, date=_minute(done.date))


def _held_already(conn: Any, schema: str, site: state.Site) -> str:
    """The line that says what was recorded for an adopting site before (nothing is recorded again)."""
    found = adopt_held.recorded(conn, schema, site)
    if found is None:
        return ""
    return _("central's rows were recorded for site {site!r} at {date} UTC ({rows} rows in {tables} tables) and "
             "stay so: its snapshot adopts only rows loaded after that (to record them again before a new load: "
             "dbsync sites update {site} --no-adopt, then --adopt)").format(
        site=site.identifier, date=_minute(found.date), rows=f"{found.rows:,}", tables=found.tables)


@sites_app.command("add")
def sites_add(
    identifier: Annotated[str, typer.Argument(help="The site's sender.id.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name (default: the identifier).")] = None,
    broker_user: Annotated[str | None, typer.Option(
        "--broker-user", help="The broker user the site sends as (default: the identifier); messages for the site "
                              "from any other broker user go to the error queue.")] = None,
    any_broker_user: Annotated[bool, typer.Option(
        "--any-broker-user", help="Accept the site's messages from any broker user (one shared broker user).")
    ] = False,
    adopt: Annotated[bool, typer.Option(
        "--adopt", help="Central gets the site's data loaded after this (from its dump): records the rows central "
                        "holds now, which stay central's; the site's initial snapshot takes over the loaded rows "
                        "central has unchanged, and parks those that differ as conflicts.")] = False,
    public_key: PublicKeyOption = None,
    config: common.ConfigOption = None,
) -> None:
    """Register a site and the broker user it sends as."""
    if broker_user is not None and any_broker_user:
        common.fail(_("--broker-user and --any-broker-user exclude each other"), exitcodes.CONFIG)
    user = None if any_broker_user else (broker_user or identifier)
    key = _public_key(public_key)

    def add(conn: Any, schema: str, cfg: Config) -> tuple[state.Site, bool, str]:
        existing = state.sites(conn, schema).get(identifier)
        if existing is None:
            added = state.add_site(conn, schema, identifier, name, broker_user=user, adopt=adopt, public_key=key)
            return added, True, _record_held(conn, schema, cfg, added) if adopt else ""
        if existing.broker_user != user:  # the same command twice is fine; a different registration is not
            raise state.StateError(_("site {site!r} is already registered with broker user {registered!r}, not "
                                     "{wanted!r} (to change it: dbsync sites update {site} --{option})").format(
                site=identifier, registered=existing.broker_user or "(any)", wanted=user or "(any)",
                option="broker-user " + user if user else "any-broker-user"))
        if adopt and not existing.adopt:
            raise state.StateError(_("site {site!r} is already registered, without --adopt (to adopt central's "
                                     "rows with its next snapshot: dbsync sites update {site} --adopt)").format(
                site=identifier))
        if key is not None and existing.public_key != key:
            raise state.StateError(_("site {site!r} is already registered with another public key (to change it: "
                                     "dbsync sites update {site} --public-key …)").format(site=identifier))
        return existing, False, _held_already(conn, schema, existing) if existing.adopt else ""

    site, added, held = _run_with(config, add)
    text = _("site {site!r} registered ({name}; {sender}{adopting})") if added \
        else _("site {site!r} is already registered ({name}; {sender}{adopting})")
    print(text.format(site=site.identifier, name=site.name, sender=_sender(site), adopting=_adopting(site)))
    if held:
        print(held)


PublicKeyOption = Annotated[str | None, typer.Option(
    "--public-key", help="The key the site signs its bundles with (sync by file: dbsync export --public-key prints "
                         "it at the site); dbsync import refuses a bundle signed by any other.")]


def _public_key(text: str | None) -> str | None:
    """The key as `signing.public_text` writes it, or one line and exit 2."""
    if text is None:
        return None
    try:
        return signing.public_text(signing.parse_public(text))
    except signing.BadPublicKey as exc:
        common.fail(_("--public-key: {error}").format(error=exc), exitcodes.CONFIG)


def _sender(site: state.Site) -> str:
    return _("sends as broker user {user!r}").format(user=site.broker_user) if site.broker_user \
        else _("any broker user")


def _adopting(site: state.Site) -> str:
    return _("; its snapshot adopts central's equal rows") if site.adopt else ""


@sites_app.command("update")
def sites_update(
    identifier: Annotated[str, typer.Argument(help="The site's sender.id.")],
    name: Annotated[str | None, typer.Option("--name", help="New display name.")] = None,
    broker_user: Annotated[str | None, typer.Option(
        "--broker-user", help="The broker user the site sends as from now on.")] = None,
    any_broker_user: Annotated[bool, typer.Option(
        "--any-broker-user", help="Accept the site's messages from any broker user again.")] = False,
    adopt: Annotated[bool | None, typer.Option(
        "--adopt/--no-adopt", help="Whether the site's snapshot adopts central's equal rows (see sites add): --adopt "
                                   "records the rows central holds now unless already recorded, --no-adopt forgets "
                                   "them.")
    ] = None,
    public_key: PublicKeyOption = None,
    config: common.ConfigOption = None,
) -> None:
    """Change a registered site's name or broker user (e.g. a site registered before broker users existed)."""
    if broker_user is not None and any_broker_user:
        common.fail(_("--broker-user and --any-broker-user exclude each other"), exitcodes.CONFIG)
    if name is None and broker_user is None and not any_broker_user and adopt is None and public_key is None:
        common.fail(_("sites update: nothing to change (--name, --broker-user, --any-broker-user, --adopt or "
                      "--public-key)"), exitcodes.CONFIG)
    key = _public_key(public_key)

    def update(conn: Any, schema: str, cfg: Config) -> tuple[state.Site, str]:
        site = state.update_site(conn, schema, identifier, name=name, broker_user=broker_user,
                                 any_broker_user=any_broker_user, adopt=adopt, public_key=key)
        if adopt is False and site.adopt_recorded is not None:
            adopt_held.forget(conn, schema, site)
            return site, _("the record of central's rows for site {site!r} is forgotten").format(site=identifier)
        if adopt and site.adopt_recorded is None:  # turned on, or on without a record: record now
            return site, _record_held(conn, schema, cfg, site)
        return site, _held_already(conn, schema, site) if adopt else ""

    site, held = _run_with(config, update)
    print(_("site {site!r} updated ({name}; {sender}{adopting})").format(
        site=site.identifier, name=site.name, sender=_sender(site), adopting=_adopting(site)))
    if held:
        print(held)


@sites_app.command("central-key")
def sites_central_key(config: common.ConfigOption = None) -> None:
    """Print central's public key (made at its first use, kept in the receiver's home): the sites' sender.central_public_key,
    with which they check central's answers to verify by file."""
    cfg = common.load_config(config, "receiver")
    print(signing.public_text(signing.site_key(cfg.home)))


def _listing(conn: Any, schema: str) -> list[dict[str, Any]]:
    last = state.last_sync_dates(conn, schema)
    return [
        {"name": site.name, "identifier": site.identifier, "date_created": site.date_created,
         "disabled": site.disabled, "last_sync_date": last.get(site.id), "broker_user": site.broker_user,
         "adopt": site.adopt, "adopt_recorded": site.adopt_recorded, "public_key": site.public_key}
        for site in sorted(state.sites(conn, schema).values(), key=lambda s: s.identifier)
    ]


def _when(value: Any) -> str | None:
    return None if value is None else value.isoformat(sep=" ")


@sites_app.command("list")
def sites_list(config: common.ConfigOption = None, as_json: common.JsonOption = False) -> None:
    """List registered sites with their last sync date."""
    rows = _run(config, _listing)
    if as_json:
        out = [{**row, "date_created": _when(row["date_created"]), "last_sync_date": _when(row["last_sync_date"]),
                "adopt_recorded": _when(row["adopt_recorded"])}
               for row in rows]
        print(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    narrow = console.width < 100  # 80 columns: no `created`, dates to the minute; identifiers are never cut
    headers = (_("identifier"), _("name"), _("broker user"), *(() if narrow else (_("created"),)), _("status"),
               _("last sync"))
    cells = [(row["identifier"], row["name"], row["broker_user"] or _("(any)"),
              *(() if narrow else (_minute(row["date_created"]),)), _("disabled") if row["disabled"] else _("enabled"),
              _minute(row["last_sync_date"]) or _("never")) for row in rows]
    if not rows:
        console.print(_("no sites registered"))
        return
    # every column but the name is kept whole (a header may wrap between its words): the name gets the rest
    widths = [max(len(str(c[i])) for c in cells) if i != 1 else 12 for i in range(len(headers))]
    widths = [max(w, *(len(word) for word in h.split())) for w, h in zip(widths, headers, strict=True)]
    if sum(widths) + 3 * len(widths) + 1 > console.width:  # too narrow even so: one block per site
        for identifier, name, broker, *rest in cells:
            console.print(f"[bold]{escape(identifier)}[/]  {escape(name)}")
            console.print("  " + " · ".join(f"{escape(h)}: {escape(str(v))}" for h, v in
                                            zip(headers[2:], [broker, *rest], strict=True)))
        return
    table = Table()
    for index, header in enumerate(headers):
        table.add_column(header, overflow="fold", min_width=widths[index], no_wrap=index != 1)
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(table)


def _minute(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M")


@sites_app.command("resync")
def sites_resync(
    identifier: Annotated[str, typer.Argument()],
    config: common.ConfigOption = None,
    patient: resync_cmd.PatientOption = None,
    table: resync_cmd.TableOption = None,
    uuid: resync_cmd.UuidOption = None,
) -> None:
    """Ask a site's running sender, over the broker, to send a patient (or one row) again."""
    resync_cmd.check_what(patient, table, uuid)
    cfg = common.load_config(config, "receiver")
    from dbsync_cli.receiver.run import Receiver

    try:
        request = Receiver(cfg).request_resync(identifier, patient=patient, table=table, uuid=uuid)
    except state.StateError as exc:
        common.fail(str(exc), exitcodes.CONFIG)
    print(_("resync request {request} sent to site {site!r} (its sender sends the rows when it runs)").format(
        request=request, site=identifier))


@sites_app.command("disable")
def sites_disable(identifier: Annotated[str, typer.Argument()], config: common.ConfigOption = None) -> None:
    """Stop applying a site's messages."""
    _run(config, lambda conn, schema: state.set_disabled(conn, schema, identifier, True))
    print(_("site {site!r} disabled").format(site=identifier))


@sites_app.command("enable")
def sites_enable(identifier: Annotated[str, typer.Argument()], config: common.ConfigOption = None) -> None:
    """Apply a disabled site's messages again."""
    _run(config, lambda conn, schema: state.set_disabled(conn, schema, identifier, False))
    print(_("site {site!r} enabled").format(site=identifier))


@sites_app.command("remove")
def sites_remove(
    identifier: Annotated[str, typer.Argument()],
    config: common.ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Unregister a site (its sync status goes with it; synced data stays in central). Asks first."""
    if not yes:
        if not sys.stdin.isatty():
            common.fail(_("sites remove {site}: its registration and sync status are deleted; confirm with "
                          "--yes").format(site=identifier), exitcodes.CONFIG)
        if not typer.confirm(_("Remove site {site!r} (its messages are refused from now on)?").format(site=identifier)):
            raise typer.Exit(exitcodes.FAILURE)
    _run(config, lambda conn, schema: state.remove_site(conn, schema, identifier))
    print(_("site {site!r} removed").format(site=identifier))
