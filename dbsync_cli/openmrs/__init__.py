"""Schema introspection and the OpenMRS sync model."""

from dbsync_cli.openmrs.introspect import Column, ForeignKey, TableInfo, introspect
from dbsync_cli.openmrs.model import (
    DEFAULT_SYNCED_TABLES,
    Identity,
    Reference,
    SchemaError,
    SchemaModel,
    SyncedTable,
    class_table,
    synced_table_names,
)

__all__ = [
    "Column", "ForeignKey", "TableInfo", "introspect", "DEFAULT_SYNCED_TABLES", "Identity", "Reference",
    "SchemaError", "SchemaModel", "SyncedTable", "class_table", "synced_table_names",
]  # fmt: skip
