"""Which rows hang off a person, from the schema model: what `resync --patient` follows at a site and what the
receiver's archive indexes each message by, so "everything of this patient" is one indexed look-up."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from dbsync_cli import wire
from dbsync_cli.openmrs.model import SyncedTable
from dbsync_cli.openmrs.rules import AUDIT_COLUMNS, USERS_TABLE

#: the identity table of people (patient is its subclass and shares its uuid)
PERSON_TABLE = "person"
#: rows of these tables belong to a person but are referenced by many patients' rows: never followed through
LEAF_TABLES = (USERS_TABLE, "provider")


def person_uuids(table: SyncedTable, uuid: str, data: dict[str, Any] | None) -> list[str]:
    """The people a row of `table` names directly: itself (person, patient) or its references to a person or
    patient (obs.person_id, encounter.patient_id, relationship.person_a and person_b …), lower case, in column
    order; audit columns (creator …) name users, not the row's person, and are left out."""
    if table.identity.table == PERSON_TABLE:
        return [wire.canonical_uuid(uuid)]
    found: list[str] = []
    for column, ref in table.references.items():
        if column in AUDIT_COLUMNS or ref.identity is None or ref.identity.table != PERSON_TABLE:
            continue
        target = wire.ref_target((data or {}).get(column))
        if target is not None and target[1] and wire.canonical_uuid(target[1]) not in found:
            found.append(wire.canonical_uuid(target[1]))
    return found


def parent_uuids(table: SyncedTable, uuid: str, data: dict[str, Any] | None, synced: Container[str]) -> list[str]:
    """The rows a row of `table` hangs off when it names no person itself, whose person is then its person: its own
    identity (a drug_order is its orders row; a delete carries no data) and then each reference to a row of a
    `synced` table that is not a person, a user or a provider (encounter_provider → encounter, patient_state →
    patient_program …); metadata (concepts, locations …) hangs off nobody."""
    found = [wire.canonical_uuid(uuid)]
    for column, ref in table.references.items():
        if (column in AUDIT_COLUMNS or ref.identity is None or ref.identity.table in (PERSON_TABLE, *LEAF_TABLES)
                or ref.identity.table not in synced):
            continue
        target = wire.ref_target((data or {}).get(column))
        if target is not None and target[1] and wire.canonical_uuid(target[1]) not in found:
            found.append(wire.canonical_uuid(target[1]))
    return found
