"""Which rows hang off a person, from the schema model: what `resync --patient` follows at a site and what the
receiver's archive indexes each message by, so "everything of this patient" is one indexed look-up."""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from dbsync_cli import wire
from dbsync_cli.openmrs.model import SyncedTable
from dbsync_cli.openmrs.rules import AUDIT_COLUMNS, USERS_TABLE

#: the identity table of people (patient is its subclass and shares its uuid)
PERSON_TABLE = "person"
#: rows of these tables belong to a person but are referenced by many patients' rows: never followed through
LEAF_TABLES = (USERS_TABLE, "provider")


def person_columns(table: SyncedTable) -> tuple[str, ...]:
    """The columns of `table` that name a person or patient (obs.person_id, encounter.patient_id, relationship.person_a
    and person_b …); audit columns (creator …) name users, not the row's person, and are left out."""
    return tuple(column for column, ref in table.references.items() if column not in AUDIT_COLUMNS
                 and ref.identity is not None and ref.identity.table == PERSON_TABLE)


def parent_columns(table: SyncedTable, synced: Container[str]) -> tuple[str, ...]:
    """The columns of `table` that name a row it hangs off when it names no person itself: references to a row of a
    `synced` table that is not a person, a user or a provider (encounter_provider → encounter, patient_state →
    patient_program …); metadata (concepts, locations …) hangs off nobody."""
    return tuple(column for column, ref in table.references.items() if column not in AUDIT_COLUMNS
                 and ref.identity is not None and ref.identity.table not in (PERSON_TABLE, *LEAF_TABLES)
                 and ref.identity.table in synced)


def _uuids(first: list[str], columns: tuple[str, ...], data: dict[str, Any] | None) -> list[str]:
    found = first
    for column in columns:
        target = wire.ref_target((data or {}).get(column))
        if target is not None and target[1] and wire.canonical_uuid(target[1]) not in found:
            found.append(wire.canonical_uuid(target[1]))
    return found


class Links:
    """Who the rows of a schema model hang off, the columns worked out once per table."""

    def __init__(self, synced: Mapping[str, SyncedTable]) -> None:
        self.synced = synced
        self._columns: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def _of(self, table: SyncedTable) -> tuple[tuple[str, ...], tuple[str, ...]]:
        found = self._columns.get(table.name)
        if found is None:
            found = self._columns[table.name] = (person_columns(table), parent_columns(table, self.synced))
        return found

    def people(self, table: SyncedTable, uuid: str, data: dict[str, Any] | None) -> list[str]:
        """The people a row names directly, lower case, in column order: itself (person, patient: their identity is
        a person) or its person columns."""
        if table.identity.table == PERSON_TABLE:
            return [wire.canonical_uuid(uuid)]
        return _uuids([], self._of(table)[0], data)

    def parents(self, table: SyncedTable, uuid: str, data: dict[str, Any] | None) -> list[str]:
        """The rows a row hangs off when it names no person, whose person is then its person: its own identity (a
        drug_order is its orders row; a delete carries no data), then its parent columns' rows."""
        return _uuids([wire.canonical_uuid(uuid)], self._of(table)[1], data)
