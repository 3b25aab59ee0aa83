"""The sender's stage settings from its config: what `dbsync sender`, the pipe's stages and `verify` share."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from dbsync_cli.config import Config
from dbsync_cli.openmrs import SchemaModel, synced_table_names
from dbsync_cli.sender.binlog import CaptureSettings

if TYPE_CHECKING:  # imported where used: `dbsync capture` alone loads neither enrich nor publish (nor stomp)
    from dbsync_cli.sender.enrich import EnrichSettings
    from dbsync_cli.sender.publish import PublishSettings


def load_model(cfg: Config) -> SchemaModel:
    params = cfg.db("site_db")
    with params.connect() as conn:
        return SchemaModel.load(conn, params.database or "",
                                synced_table_names(cfg.get("sender.tables"), cfg.get("sender.extra_tables")))


def capture_settings(cfg: Config, model: SchemaModel, stop: threading.Event, **overrides: Any) -> CaptureSettings:
    settings = CaptureSettings(
        db=cfg.db("site_db"), server_id=cfg["sender.server_id"], tables=list(model.synced),
        snapshot=cfg["sender.snapshot"], snapshot_method=cfg["sender.snapshot_method"], home=cfg.home,
        min_retention_hours=cfg["sender.min_binlog_retention_hours"], stop=stop,
        secret_columns={t.name: t.secret_columns for t in model.synced.values() if t.secret_columns},
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def enrich_settings(cfg: Config) -> EnrichSettings:
    from dbsync_cli.sender.enrich import EnrichSettings

    return EnrichSettings(db=cfg.db("site_db"), site=cfg["sender.id"], timezone=cfg["sender.timezone"],
                          batch_events=cfg["broker.batch_messages"],
                          max_transaction_events=cfg["sender.max_transaction_events"], home=cfg.home)


def publish_settings(cfg: Config, stop: threading.Event) -> PublishSettings:
    from dbsync_cli.broker import settings_from_config
    from dbsync_cli.sender.publish import PublishSettings

    return PublishSettings(
        broker=settings_from_config(cfg), destination=cfg["broker.destination"],
        destination_type=cfg["broker.destination_type"], batch_messages=cfg["broker.batch_messages"],
        batch_bytes=cfg["broker.batch_bytes"], compress_over=cfg["broker.compress_over"],
        wire_version=cfg["broker.wire_version"], rows_per_message=cfg["broker.rows_per_message"],
        message_bytes=cfg["broker.message_bytes"],
        max_message_bytes=cfg["broker.max_message_bytes"], reject_dir=cfg.home / "rejected", stop=stop,
    )
