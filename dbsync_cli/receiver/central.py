"""Settings the receiver's parts build from a receiver Config: central DB, state schema, broker, consume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbsync_cli.broker import BrokerSettings, settings_from_config
from dbsync_cli.config import Config
from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state

if TYPE_CHECKING:
    from dbsync_cli.receiver.consume import ConsumeSettings
    from dbsync_cli.receiver.control_service import ControlSettings
    from dbsync_cli.receiver.rest import RestSettings


def central_db(cfg: Config) -> DbParams:
    """The central OpenMRS database (``central_db.*``)."""
    return cfg.db("central_db")


def state_schema(cfg: Config) -> str:
    """The schema holding receiver state on the central server (validated as a plain identifier)."""
    name = cfg["central_db.state_schema"]
    state.schema_name(name)
    return name


def broker_settings(cfg: Config) -> BrokerSettings:
    return settings_from_config(cfg)


def migrate_state(cfg: Config) -> int:
    """Create/upgrade the state schema (and the uuid indexes central needs); returns its version."""
    conn = central_db(cfg).connect(autocommit=False)
    try:
        return state.migrate(conn, state_schema(cfg), openmrs_db=cfg["central_db.database"])
    finally:
        conn.close()


def files_settings(cfg: Config) -> ConsumeSettings:
    """ConsumeSettings of the file lane: ``<destination>.files``, always a queue, a small window."""
    from dbsync_cli import complex_obs
    from dbsync_cli.receiver.file_lane import WINDOW_BYTES

    return consume_settings(cfg, destination=complex_obs.destination(cfg["broker.destination"]),
                            destination_type="queue", consumer_window=WINDOW_BYTES, batch_messages=8)


def consume_settings(cfg: Config, **overrides: Any) -> ConsumeSettings:
    """ConsumeSettings for ``broker.destination`` (queue or durable topic subscription)."""
    from dbsync_cli.receiver.consume import ConsumeSettings

    settings = ConsumeSettings(
        broker=broker_settings(cfg), db=central_db(cfg), state_schema=state_schema(cfg),
        destination=cfg["broker.destination"], destination_type=cfg["broker.destination_type"],
        subscription=cfg["broker.subscription"], client_id=cfg["receiver.site_id"],
        consumer_window=cfg["broker.consumer_window"], batch_messages=cfg["receiver.batch_messages"],
        max_message_bytes=cfg["broker.max_message_bytes"],
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def control_settings(cfg: Config) -> ControlSettings:
    """ControlSettings for answering sites' requests (verify) on ``<broker.destination>.control``."""
    from dbsync_cli.receiver.control_service import ControlSettings

    return ControlSettings(broker=broker_settings(cfg), db=central_db(cfg), state_schema=state_schema(cfg),
                           destination=cfg["broker.destination"], timezone=cfg["receiver.timezone"],
                           complex_obs_dir=cfg["receiver.complex_obs_dir"])


def rest_settings(cfg: Config) -> RestSettings | None:
    """RestSettings for the OpenMRS REST worker, or None when ``openmrs.url`` is not configured."""
    from dbsync_cli.receiver.rest import RestSettings

    if not cfg.get("openmrs.url"):
        return None
    return RestSettings(url=cfg["openmrs.url"], user=cfg.get("openmrs.user"), password=cfg.get("openmrs.password"),
                        db=central_db(cfg), state_schema=state_schema(cfg))
