"""OpenMRS knowledge in one package: schema introspection, the sync model built from it, and the EIP rules."""

from dbsync_cli.openmrs.introspect import Column, ForeignKey, TableInfo, introspect
from dbsync_cli.openmrs.model import (
    Identity,
    Reference,
    SchemaError,
    SchemaModel,
    SyncedTable,
    synced_table_names,
)
from dbsync_cli.openmrs.rules import DEFAULT_SYNCED_TABLES, class_table

__all__ = [
    "Column", "ForeignKey", "TableInfo", "introspect", "DEFAULT_SYNCED_TABLES", "Identity", "Reference",
    "SchemaError", "SchemaModel", "SyncedTable", "class_table", "synced_table_names",
]  # fmt: skip
