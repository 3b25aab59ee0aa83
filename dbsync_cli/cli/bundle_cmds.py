"""`dbsync export` (at a site) and `dbsync import` (at central): sync by file for a clinic with no network."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from dbsync_cli import bundle, exitcodes
from dbsync_cli.cli import common
from dbsync_cli.cli.sender_cmds import stop_on_signals
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError
from dbsync_cli.sender.binlog import CaptureStop


def export(
    to: Annotated[Path | None, typer.Option(
        "--to", help="The bundle file to write (FILE.part while it is written; the same --to resumes an export "
                     "that was interrupted).")] = None,
    public_key: Annotated[bool, typer.Option(
        "--public-key", help="Print this site's public key (made at its first use) for dbsync sites add "
                             "--public-key at central, and exit.")] = False,
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
) -> None:
    """Write the site's changes since its checkpoint to a signed bundle for central (dbsync import), and move the
    checkpoint past them: the sender, started later, continues after them. Run it with the sender stopped."""
    cfg = common.load_config(config, "sender")
    from dbsync_cli.sender import export as export_mod

    if public_key:
        print(export_mod.public_key(cfg))
        return
    if to is None:
        common.fail(_("export: --to FILE is needed (or --public-key)"), exitcodes.CONFIG)
    try:
        report = export_mod.export(cfg, to, stop=stop_on_signals())
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    except CaptureStop as exc:
        common.fail(str(exc), exc.code)
    except (bundle.BundleError, OSError) as exc:
        common.fail(_("export: {error}").format(error=exc), exitcodes.FAILURE)
    if json_out:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    print(_("{rows} row(s) in {envelopes} envelope(s) written to {file}{resumed}; the checkpoint moved past them. "
            "Carry the file to central: dbsync import {name}").format(
        rows=report.rows, envelopes=report.frames, file=report.path, name=report.path.name,
        resumed=_(" (resumed)") if report.resumed else ""))


def import_(
    file: Annotated[Path, typer.Argument(help="A bundle made by dbsync export at a site.")],
    wait: Annotated[float, typer.Option(
        "--wait", min=0, help="Seconds to wait for the running receiver to apply it (0: do not wait).")] = 0,
    answer_to: Annotated[Path | None, typer.Option(
        "--answer-to", help="FILE is a site's verify question (dbsync verify --to): write central's answer here.")
    ] = None,
    config: common.ConfigOption = None,
    json_out: common.JsonOption = False,
) -> None:
    """Check a site's bundle against the public key recorded for the site and hand its changes to the receiver
    (through the inbox: the running receiver applies them; importing a bundle again applies nothing twice)."""
    if answer_to is not None:
        from dbsync_cli.cli import verify_file_cmd

        verify_file_cmd.answer(config, file, answer_to, json_out)
        return
    cfg = common.load_config(config, "receiver")
    from dbsync_cli.receiver.bundle_import import import_bundle

    try:
        report = import_bundle(cfg, file, wait_seconds=wait or None)
    except bundle.BundleError as exc:
        common.fail(str(exc), exitcodes.BUNDLE_REFUSED)
    if json_out:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        line = _("{file}: site {site}, {rows} row(s) in {envelopes} envelope(s); {stored} new in the inbox").format(
            file=file, site=report.site, rows=report.rows, envelopes=report.envelopes, stored=report.stored)
        if report.times > 1:
            line += "; " + _("imported {times} times (nothing is applied twice)").format(times=report.times)
        if report.refused:
            line += "; " + _("{refused} refused for their size (dbsync retry list)").format(refused=report.refused)
        if report.waiting:
            line += "; " + _("{waiting} still waiting for the receiver").format(waiting=report.waiting)
        elif report.waiting == 0:
            line += "; " + _("handled by the receiver")
        if report.parked:
            line += "; " + _("{parked} of the site's messages parked since (dbsync retry list, dbsync conflicts "
                             "list)").format(parked=report.parked)
        print(line)
    if report.waiting or report.parked:
        raise typer.Exit(exitcodes.FAILURE)
