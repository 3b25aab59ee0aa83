"""The receiver: consume (into the inbox) + apply (from the inbox) + retry + OpenMRS REST calls, supervised.

Consume and the REST worker run in threads with their own connections; apply reads the inbox live changes first,
then the rows of initial loads, each in the broker's delivery order. SIGTERM sets `stop`: consume commits and
acknowledges its batch, apply finishes its batch, and everything returns.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

from dbsync_cli.config import Config
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError, SchemaModel, synced_table_names
from dbsync_cli.receiver import archive_prune, archive_query, complex_files, placeholder, state
from dbsync_cli.receiver.action_lane import ActionLane
from dbsync_cli.receiver.apply import AlreadyApplying, Applier, ApplySettings
from dbsync_cli.receiver.inbox_reader import InboxReader
from dbsync_cli.receiver.retry import RetryLane
from dbsync_cli.receiver.worker_locks import WorkerSlot, rest_lock
from dbsync_cli.receiver.worker_sites import WorkerSites
from dbsync_cli.supervise import supervise

log = logging.getLogger("dbsync.receiver")
SAMPLE_SECONDS = 60


def apply_settings(cfg: Config) -> ApplySettings:
    return ApplySettings(
        central=cfg.db("central_db"), state_schema=cfg["central_db.state_schema"], timezone=cfg["receiver.timezone"],
        conflict_policy=cfg["receiver.conflict_policy"], central_rows=cfg["receiver.central_rows"],
        cross_site_changes=cfg["receiver.cross_site_changes"],
        future_tolerance_seconds=cfg["receiver.future_tolerance_seconds"],
        row_lock_wait_seconds=cfg["receiver.row_lock_wait_seconds"], set_apply=cfg["receiver.set_apply"],
        batch_messages=cfg["receiver.batch_messages"], archive_days=cfg["receiver.archive_days"],
        max_message_bytes=cfg["broker.max_message_bytes"], rest_enabled=bool(cfg.get("openmrs.url")),
        complex_obs=bool(cfg["receiver.complex_obs_dir"]),
    )


def load_model(cfg: Config) -> SchemaModel:
    params = cfg.db("central_db")
    with params.connect() as conn:
        return SchemaModel.load(conn, params.database or "", synced_table_names(
            cfg.get("receiver.tables"), cfg.get("receiver.extra_tables")))


def drain_inbox(applier: Applier, stop: threading.Event | None = None) -> int:
    """Apply inbox rows until the inbox is empty; returns messages handled."""
    total = 0
    reader = InboxReader(applier, applier.settings.batch_messages)
    try:
        while stop is None or not stop.is_set():
            batch = reader.take()
            if not batch:
                break
            total += len(applier.apply_batch([r for r, _ in batch], [items for _, items in batch]))
    finally:
        reader.close()
    return total


def _claim_again(applier: Applier, stop: threading.Event) -> None:
    while True:
        try:
            applier.claim(wait=5)
            return
        except AlreadyApplying as exc:
            if stop.is_set():
                raise
            log.info("apply: waiting for the applier lock (%s)", exc)


def run_apply_loop(cfg: Config, stop: threading.Event, model: SchemaModel, idle_exit: float | None = None, *,
                   restart: bool = False, files_arrived: threading.Event | None = None,
                   slot: WorkerSlot | None = None) -> None:
    """The apply loop. At the receiver's start another applier holding the lock is fatal (exit 13: one receiver per
    central); on a `restart` after a failure the lock may be held for a while by an operator's action (`dbsync
    retry`, `conflicts resolve`, the console), which took it while this loop was down: wait for it. A receiver
    worker (`slot`: --worker) takes no such lock: it applies the sites whose locks it holds (worker_sites.py)."""
    applier = Applier(apply_settings(cfg), model)
    try:
        if slot is None and restart:
            _claim_again(applier, stop)
        elif slot is None:
            applier.claim()
    except AlreadyApplying:
        applier.close()
        raise
    sites = WorkerSites(applier, slot) if slot is not None else None
    interval = cfg["receiver.retry_interval_seconds"]
    # the retry queue's own lane: a pass every interval, in short rounds between live batches (never in their way)
    lane = RetryLane(applier, interval)
    requests = ActionLane(applier)  # operators' retry/conflict actions handed over under our lock, in rounds too
    if sites is not None:  # a worker retries its own sites' entries; its requests wait for every site's lock
        lane.sites, requests.ready = sites.held, sites.hold_all
    central_changed(applier, cfg)
    folder = Path(cfg["receiver.complex_obs_dir"]).expanduser() if cfg["receiver.complex_obs_dir"] else None
    last_housekeeping = last_sample = 0.0
    last_work = time.monotonic()
    # the next batch read while one is applied (a worker's: of the sites it holds)
    reader = InboxReader(applier, applier.settings.batch_messages, sites.held if sites is not None else None)
    records: list[dict[str, Any]] = []
    try:
        while not stop.is_set():
            if sites is not None and not sites.round(idle=not records):  # another worker's operator request runs
                records = []
                stop.wait(0.2)
                continue
            lead = sites is None or sites.lead  # one worker does what one process at a time does
            batch = reader.take()
            records = [r for r, _ in batch]
            if records:
                outcomes = applier.apply_batch(records, [items for _, items in batch])
                lane.note_applied(o.uuid for o in outcomes if o.outcome == "applied")
                last_work = time.monotonic()
            if lead and requests.round():
                last_work = time.monotonic()
            if sites is not None and not requests.busy():
                sites.request_done()
            if files_arrived is not None and files_arrived.is_set():  # obs rows waiting for a file are due now
                files_arrived.clear()
                lane.again = True
            lane.round()
            if lead and time.monotonic() - last_housekeeping >= interval:
                housekeeping(applier, cfg, folder)
                last_housekeeping = time.monotonic()
            if lead and time.monotonic() - last_sample >= SAMPLE_SECONDS:  # the console's charts
                state.record_samples(applier.conn, applier.settings.state_schema)
                last_sample = time.monotonic()
            if not records and not lane.busy() and not requests.busy():
                if idle_exit is not None and time.monotonic() - last_work >= idle_exit:
                    return
                stop.wait(0.2)
    finally:
        reader.close()
        applier.close()


def housekeeping(applier: Applier, cfg: Config, folder: Path | None) -> None:
    """What the apply loop does every receiver.retry_interval_seconds, and `dbsync apply` once when it finishes (so
    the pipe keeps the same limits): files of obs a site deleted removed (OpenMRS's purgeObs removes them), fillers
    nothing references any more, handled message ids past applied_ids_days, the archive within its limits."""
    if folder is not None:
        complex_files.sweep(applier.conn, applier.s, folder)
    placeholder.remove_fillers(applier.conn, applier.model, applier.s)  # a bounded number
    state.prune_applied(applier.conn, applier.settings.state_schema, cfg["receiver.applied_ids_days"])
    prune_archive(applier, cfg)


def housekeeping_once(cfg: Config, model: SchemaModel) -> None:
    """`housekeeping` under the applier lock, for `dbsync apply`."""
    applier = Applier(apply_settings(cfg), model)
    try:
        applier.claim()
        folder = Path(cfg["receiver.complex_obs_dir"]).expanduser() if cfg["receiver.complex_obs_dir"] else None
        housekeeping(applier, cfg, folder)
    finally:
        applier.close()


def prune_archive(applier: Applier, cfg: Config) -> None:
    """The archive within receiver.archive_days and archive_max_mb (archive_prune.py), on a connection of its own
    (its DDL waits a few seconds at most for the tables' metadata lock: the applier's must hold none, so commit). A
    failure is logged and tried again at the next pass: it never stops applying."""
    applier.conn.commit()
    try:
        with cfg.db("central_db").connect(autocommit=False) as conn:
            archive_prune.prune(conn, applier.settings.state_schema, cfg["receiver.archive_days"],
                                int(cfg["receiver.archive_max_mb"] * 1024 * 1024))
    except pymysql.MySQLError as exc:
        log.warning("archive: pruning failed (%s); the next housekeeping pass tries again", exc)


def central_changed(applier: Applier, cfg: Config) -> int:
    """Central's schema or the settings that judge messages changed since the last start: the entries they can
    fix (malformed here, another site's row) become due now. Returns how many."""
    fingerprint = hashlib.sha256(repr((sorted((t.name, tuple(t.columns)) for t in applier.model.tables.values()),
                                       cfg["receiver.cross_site_changes"], cfg["broker.max_message_bytes"]))
                                 .encode()).hexdigest()[:64]
    due = state.fingerprint_changed(applier.conn, applier.settings.state_schema, state.CENTRAL_CAUSE, fingerprint)
    if due:
        log.info("central's schema or settings changed: %d retry entries are due now", due)
    return due


def _start_up(cfg: Config, stop: threading.Event) -> SchemaModel | None:
    """State schema in place and the schema model read, retried with backoff while central is unreachable (an
    outage at start-up is survived like one later); a schema problem is for the operator and propagates."""
    found: list[SchemaModel] = []

    def attempt() -> None:
        params = cfg.db("central_db")
        with params.connect(autocommit=False) as conn:
            state.migrate(conn, cfg["central_db.state_schema"], params.database)
        found.append(load_model(cfg))

    supervise("start-up (central DB)", attempt, stop, once=True, fatal=(SchemaError, state.StateError))
    return found[0] if found else None


def run_receiver(cfg: Config, stop: threading.Event, idle_exit: float | None = None) -> None:
    """Supervise: each part restarts with exponential backoff after a failure."""
    model = _start_up(cfg, stop)
    if model is None:  # stopped while central was still unreachable
        return
    slot = worker_slot(cfg)
    try:
        _run_parts(cfg, stop, model, idle_exit, slot)
    finally:
        if slot is not None:
            slot.close()


def worker_slot(cfg: Config) -> WorkerSlot | None:
    """A receiver worker's slot (receiver.worker, --worker), taken before anything runs; None without --worker.
    Workers share a queue (message groups pin each site to one): a durable topic subscription is one client's."""
    if not cfg["receiver.worker"]:
        return None
    if cfg["broker.destination_type"] != "queue":
        raise state.StateError(_("receiver workers (--worker) need broker.destination_type = \"queue\": a durable "
                                 "topic subscription belongs to one client"))
    slot = WorkerSlot(cfg.db("central_db"), cfg["central_db.state_schema"])
    slot.take()
    return slot


def _run_parts(cfg: Config, stop: threading.Event, model: SchemaModel, idle_exit: float | None,
               slot: WorkerSlot | None) -> None:
    from dbsync_cli.receiver import central, consume, control_service, rest

    faults: list[BaseException] = []

    def part(name: str, target: Callable[[], object]) -> threading.Thread:
        """A supervised thread; a fault only an operator can fix stops the whole receiver and is raised below."""
        def run() -> None:
            try:
                supervise(name, target, stop)
            except Exception as exc:  # noqa: BLE001 - handed to the main thread
                faults.append(exc)
                stop.set()
        return threading.Thread(target=run, name=name, daemon=True)

    worker = None if slot is None else slot.number
    threads = [part("consume", lambda: consume.run_into_inbox(central.consume_settings(cfg, worker=worker), stop)),
               part("control", lambda: control_service.serve(central.control_settings(cfg), model, stop))]
    files_arrived: threading.Event | None = None
    if cfg["receiver.complex_obs_dir"]:  # complex obs files, on their own lane
        files_arrived = threading.Event()
        threads.append(part("files", files_lane(cfg, stop, files_arrived)))
    rest_settings = central.rest_settings(cfg)
    if rest_settings is not None:
        if slot is not None:  # one worker's REST thread makes the calls
            rest_settings.lock = rest_lock(cfg["central_db.state_schema"])
        threads.append(part("rest", lambda: rest.RestWorker(rest_settings, stop).run()))
    for thread in threads:
        thread.start()
    starts = [0]

    def apply_loop() -> None:
        starts[0] += 1
        run_apply_loop(cfg, stop, model, idle_exit, restart=starts[0] > 1, files_arrived=files_arrived, slot=slot)

    try:
        supervise("apply", apply_loop, stop, once=idle_exit is not None, fatal=(AlreadyApplying,))
    finally:
        stop.set()
    for thread in threads:
        thread.join(timeout=30)
    if faults:
        raise faults[0]


def files_lane(cfg: Config, stop: threading.Event, arrived: threading.Event | None = None) -> Callable[[], object]:
    """The complex obs file lane (receiver.complex_obs_dir is set): `dbsync receiver` runs it beside apply, and
    `dbsync consume` beside itself, so the pipe receives the same files."""
    from dbsync_cli.receiver import central, file_lane

    folder, limit = Path(cfg["receiver.complex_obs_dir"]).expanduser(), cfg["receiver.complex_obs_max_bytes"]
    return lambda: file_lane.run_files(central.files_settings(cfg), stop, folder, limit, arrived)


class Receiver:
    """The central receiver, built from its config: what `dbsync receiver`, `conflicts` and `status` call."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def run(self, stop: threading.Event, idle_exit: float | None = None) -> None:
        """consume + apply + retry + REST calls, supervised, until `stop` (or `idle_exit` idle seconds)."""
        run_receiver(self.cfg, stop, idle_exit)

    def applier(self) -> Applier:
        """An Applier on the central DB (the caller closes it): apply, retry and conflict resolution."""
        return Applier(apply_settings(self.cfg), load_model(self.cfg))

    def archive(self, filters: archive_query.Filters) -> list[dict[str, Any]]:
        """Archive rows matching `filters`, oldest first (`dbsync archive list`)."""
        with self.cfg.db("central_db").connect() as conn:
            return archive_query.list_rows(conn, self.cfg["central_db.state_schema"], filters)

    def archive_entry(self, number: int) -> dict[str, Any]:
        """Archive row `number` with its message's wire form and every outcome of it (`dbsync archive show`)."""
        with self.cfg.db("central_db").connect() as conn:
            return archive_query.show(conn, self.cfg["central_db.state_schema"], number)

    def verify_status(self, site: str | None = None) -> list[dict[str, Any]]:
        """The latest verify result of each site (or of one), as stored at central."""
        from dbsync_cli.receiver.verify import latest_runs

        with self.cfg.db("central_db").connect() as conn:
            return latest_runs(conn, self.cfg["central_db.state_schema"], site)

    def request_resync(self, site: str, *, patient: str | None = None, table: str | None = None,
                       uuid: str | None = None) -> str:
        """Ask a site's running sender to send a patient (or one row) again; returns the request id."""
        import datetime as dt
        import uuid as uuidlib

        from dbsync_cli import control
        from dbsync_cli.broker import settings_from_config

        with self.cfg.db("central_db").connect() as conn:
            if site not in state.sites(conn, self.cfg["central_db.state_schema"]):
                raise state.StateError(_("site {site!r} is not registered (dbsync sites list)").format(site=site))
        request = uuidlib.uuid4().hex[:16]
        control.send_confirmed(settings_from_config(self.cfg), control.site_request_destination(
            self.cfg["broker.destination"], site), {"kind": "resync", "id": request, "patient": patient,
                                                    "table": table, "uuid": uuid,
                                                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        return request

    def status(self, overrides: dict[str, int | None] | None = None) -> dict[str, Any]:
        from dbsync_cli.receiver.status import receiver_status

        return receiver_status(self.cfg, overrides)
