"""`dbsync resync` at a site: send a patient, or one row, again (as EIP's sync request)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError

PatientOption = Annotated[str | None, typer.Option(
    "--patient", help="The patient's (person's) uuid: they and every row that hangs off them.")]
TableOption = Annotated[str | None, typer.Option("--table", "-t", help="A synced table (with --uuid).")]
UuidOption = Annotated[str | None, typer.Option("--uuid", help="The row's uuid (with --table).")]


def check_what(patient: str | None, table: str | None, uuid: str | None) -> None:
    if (patient is None) == (table is None or uuid is None) or (table is None) != (uuid is None):
        common.fail(_("resync needs --patient UUID, or --table T with --uuid UUID"), exitcodes.CONFIG)


def resync(
    config: common.ConfigOption = None,
    patient: PatientOption = None,
    table: TableOption = None,
    uuid: UuidOption = None,
    json_out: common.JsonOption = False,
) -> None:
    """Send rows again as ordinary sync messages (through enrich and publish; every receiver rule applies)."""
    check_what(patient, table, uuid)
    cfg = common.load_config(config, "sender")
    from dbsync_cli.sender.resync import ResyncError
    from dbsync_cli.sender.run import Sender

    try:
        sent = Sender(cfg).resync(patient=patient, table=table, uuid=uuid)
    except (ResyncError, SchemaError) as exc:
        common.fail(str(exc), exitcodes.CONFIG)
    if json_out:
        sys.stdout.write(orjson.dumps({"sent": sent, "messages": sum(sent.values())}).decode() + "\n")
    else:
        print(_("{count} message(s) sent: {tables}").format(
            count=sum(sent.values()), tables=", ".join(f"{t} {n}" for t, n in sent.items()) or _("none")))
