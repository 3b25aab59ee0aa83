"""dbsync: change-data-capture sync of OpenMRS site databases into a central OpenMRS database.

The public Python API (docs/api.md): every CLI command is a thin call of one of these names. They are imported
on first use, so `import dbsync_cli.wire` (say) does not load the broker and database clients.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API: dict[str, str] = {
    # configuration and the schema model
    "Config": "dbsync_cli.config", "load_config": "dbsync_cli.config:load", "SchemaModel": "dbsync_cli.openmrs",
    # the sender: its stages (iterators of records in, iterators out) and the composed, supervised chain
    "capture": "dbsync_cli.sender.capture", "CaptureSettings": "dbsync_cli.sender.capture",
    "enrich": "dbsync_cli.sender.enrich", "EnrichSettings": "dbsync_cli.sender.enrich",
    "publish": "dbsync_cli.sender.publish", "PublishSettings": "dbsync_cli.sender.publish",
    "Sender": "dbsync_cli.sender.run",
    # the receiver: its stages, the applier behind apply/retry/conflicts, and the supervised process
    "consume": "dbsync_cli.receiver.consume", "ConsumeSettings": "dbsync_cli.receiver.consume",
    "apply": "dbsync_cli.receiver.apply", "ApplySettings": "dbsync_cli.receiver.apply",
    "Applier": "dbsync_cli.receiver.apply", "retry_pending": "dbsync_cli.receiver.retry",
    "list_conflicts": "dbsync_cli.receiver.conflicts", "resolve_conflict": "dbsync_cli.receiver.conflicts:resolve",
    "Receiver": "dbsync_cli.receiver.run",
}  # fmt: skip

__all__ = ["__version__", *sorted(_API)]  # noqa: PLE0604 - the names _API lists, all strings


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'dbsync_cli' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value
