"""Adoption: onboarding a site whose data central already has (central loaded from the site's dump, or the site
rebuilt from central). Without it every row of the site's initial snapshot is central's own (no site ever wrote it)
and the site's later changes to them are skipped.

For a site registered with `sites add --adopt`, a snapshot row (op "r") that central has, that dbsync never wrote
and that is not one of OpenMRS's own (the admin and daemon users and their persons) is
- equal to central's (after uuid resolution and time-zone conversion): recorded as synced and owned by the site,
  without a write; counted as skipped for the reason "adopted";
- different: parked as a conflict naming the columns, for an operator (`dbsync conflicts`).
Changes streamed after the snapshot then apply as for any row the site owns.
"""

from __future__ import annotations

from typing import Any

from dbsync_cli.openmrs import SyncedTable
from dbsync_cli.openmrs.rules import BUILT_IN_USERS
from dbsync_cli.receiver.conflict import canonical
from dbsync_cli.receiver.placeholder import is_placeholder
from dbsync_cli.sql import placeholders, quote, sql
from dbsync_cli.wire import canonical_uuid

ADOPTED = "adopted"


def built_in_uuids(cur: Any) -> set[str]:
    """The uuids of central's OpenMRS users (admin, daemon) and of their persons, canonical (daemon's is upper case
    in the dump, a message's uuid is compared in lower case)."""
    cur.execute(sql("SELECT u.uuid, p.uuid FROM {} u LEFT JOIN {} p ON p.person_id = u.person_id "
                    "WHERE u.system_id IN ({})", quote("users"), quote("person"), placeholders(len(BUILT_IN_USERS))),
                list(BUILT_IN_USERS))
    return {canonical_uuid(str(uuid)) for row in cur.fetchall() for uuid in row if uuid is not None}


def candidate(table: SyncedTable, uuid: str, current: dict[str, Any], *, written_before: bool,
              built_in: set[str]) -> bool:
    """Whether a snapshot row may be adopted: dbsync never wrote it, it is no placeholder, not OpenMRS's own."""
    del table
    return not written_before and not is_placeholder(current) and uuid not in built_in


def differences(table: SyncedTable, current: dict[str, Any], values: dict[str, Any], site: str) -> list[str]:
    """The columns whose incoming value differs from central's. A dump carries a username or provider identifier
    as the site has it, the wire with the site's suffix (`admin|site1`): either is the same value."""
    def same(column: str, value: Any) -> bool:
        mine = canonical(current.get(column))
        if mine == canonical(value):
            return True
        return column in table.site_suffix_columns and isinstance(value, str) and mine == value.removesuffix(
            f"|{site}")

    return sorted(c for c, v in values.items() if not same(c, v))


def central_form(table: SyncedTable, current: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The site-suffixed columns (`|site` on usernames, provider identifiers) whose incoming value is central's form
    of a value central holds without it: written at adoption, as for every other site's rows."""
    return {c: values[c] for c in table.site_suffix_columns
            if c in values and canonical(current.get(c)) != canonical(values[c])}
