"""`dbsync capture | enrich | publish` (each alone, NDJSON between them) and the combined `dbsync sender`."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from dbsync_cli import exitcodes
from dbsync_cli.cli import common
from dbsync_cli.i18n import _

if TYPE_CHECKING:
    from dbsync_cli.config import Config
    from dbsync_cli.openmrs import SchemaModel

# Each command imports its stages itself: `dbsync capture` loads neither enrich nor publish (nor stomp), so a stage
# started alone in a pipe costs little more CPU than the binlog decoder it runs (issue 29).

log = logging.getLogger("dbsync")

SnapshotOption = Annotated[
    str | None, typer.Option("--snapshot", help="initial | never | when_needed (default: sender.snapshot).")
]
UntilIdleOption = Annotated[bool, typer.Option("--until-idle", help="Stop at the end of the binlog.")]
MaxEventsOption = Annotated[int | None, typer.Option("--max-events", help="Stop after N change events.")]


def stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT ask for a clean stop: finish (or, while the broker is down, abandon) the batch, exit 0; the
    waits between retries end at once (retrying.py). A second signal exits at once."""
    from dbsync_cli import retrying

    return retrying.on_signals()


def _model(cfg: Config) -> SchemaModel:
    from dbsync_cli.openmrs import SchemaError
    from dbsync_cli.sender.settings import load_model

    try:
        return load_model(cfg)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)


def capture(
    config: common.ConfigOption = None,
    snapshot: SnapshotOption = None,
    until_idle: UntilIdleOption = False,
    max_events: MaxEventsOption = None,
) -> None:
    """Stream the site's binlog as NDJSON change events, resuming after the published checkpoint."""
    from dbsync_cli import records, wire
    from dbsync_cli.sender.binlog import CaptureStop, reader_id
    from dbsync_cli.sender.capture import capture as capture_stage
    from dbsync_cli.sender.checkpoint import CheckpointStore
    from dbsync_cli.sender.settings import capture_settings

    cfg = common.load_config(config, "sender")
    stop = stop_on_signals()
    model = _model(cfg)
    store = CheckpointStore(cfg.home)
    checkpoint = store.load()
    store.close()
    try:
        with reader_id(cfg.home, cfg["sender.server_id"]) as server_id:  # never the running sender's id
            settings = capture_settings(cfg, model, stop, snapshot=snapshot, until_idle=until_idle,
                                                   max_events=max_events, progress=sys.stderr.isatty(),
                                                   server_id=server_id)
            count = records.write(capture_stage(settings, checkpoint), encode=wire.dumps_event)
    except CaptureStop as exc:
        common.fail(str(exc), exc.code)
    except BrokenPipeError:
        raise typer.Exit(exitcodes.OK) from None
    log.info("capture: %d records", count)


def enrich(config: common.ConfigOption = None) -> None:
    """Turn change events (stdin) into sync messages (stdout): the row from its after image or read now, uuid references, wire types."""
    from dbsync_cli import records
    from dbsync_cli.sender.binlog import CaptureStop
    from dbsync_cli.sender.enrich import enrich as enrich_stage
    from dbsync_cli.sender.settings import enrich_settings

    cfg = common.load_config(config, "sender")
    model = _model(cfg)
    events = records.read(sys.stdin.buffer, "stdin")
    try:
        count = records.write(enrich_stage(events, enrich_settings(cfg), model))
    except CaptureStop as exc:  # e.g. a dangling reference at the site: nothing after it may be sent
        common.fail(str(exc), exc.code)
    except BrokenPipeError:
        raise typer.Exit(exitcodes.OK) from None
    log.info("enrich: %d messages", count)


def publish(
    config: common.ConfigOption = None,
    echo: Annotated[bool, typer.Option("--echo", help="Write confirmed messages to stdout.")] = False,
) -> None:
    """Send sync messages (stdin) to Artemis; move the checkpoint only after the broker's receipt."""
    from dbsync_cli import records
    from dbsync_cli.sender import run as sender_mod
    from dbsync_cli.sender.binlog import CaptureStop
    from dbsync_cli.sender.checkpoint import CheckpointStore
    from dbsync_cli.sender.publish import publish as publish_stage

    cfg = common.load_config(config, "sender")
    stop = stop_on_signals()
    store = CheckpointStore(cfg.home)
    messages = records.read(sys.stdin.buffer, "stdin", max_bytes=None)
    confirmed = publish_stage(messages, sender_mod.publish_settings(cfg, stop), sender_mod.on_confirmed(cfg, store),
                              on_sent=store.count_sent, on_dropped=store.count_dropped,
                              on_refused=store.note_refusal, on_batch=sender_mod.files_of(cfg, store))
    try:
        with sender_mod.FilesBeside(cfg, stop):  # complex obs files travel as they do with `dbsync sender`
            count = records.write(confirmed) if echo else sum(1 for _message in confirmed)
    except CaptureStop as exc:  # e.g. the broker's certificate is not trusted: retrying cannot help
        common.fail(str(exc), exc.code)
    finally:
        store.close()
    log.info("publish: %d messages confirmed", count)


def sender(
    config: common.ConfigOption = None,
    snapshot: SnapshotOption = None,
    until_idle: UntilIdleOption = False,
    max_events: MaxEventsOption = None,
) -> None:
    """capture → enrich → publish, supervised (capture in a child process; restart with backoff; SIGTERM drains
    and exits 0)."""
    from dbsync_cli.openmrs import SchemaError
    from dbsync_cli.sender import run as sender_mod
    from dbsync_cli.sender.binlog import CaptureStop

    cfg = common.load_config(config, "sender")
    stop = stop_on_signals()
    try:
        total = sender_mod.run_supervised(cfg, stop, snapshot=snapshot, until_idle=until_idle or None,
                                          max_events=max_events, progress=sys.stderr.isatty() or None)
    except CaptureStop as exc:
        common.fail(str(exc), exc.code)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    log.info("sender: %d messages confirmed", total)
