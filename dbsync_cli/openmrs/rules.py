"""OpenMRS knowledge that the schema cannot tell: the EIP table set and the EIP rules, in one place.

Everything else about a table (columns, keys, references, uuid indexes) is read from information_schema.
"""

from __future__ import annotations

import re

#: The OpenMRS EIP set of synced (patient/clinical) tables, in an order where parents come before children.
DEFAULT_SYNCED_TABLES: tuple[str, ...] = (
    "person", "patient", "users", "provider", "person_name", "person_address", "person_attribute",
    "patient_identifier", "relationship", "visit", "visit_attribute", "encounter", "encounter_provider",
    "obs", "encounter_diagnosis", "conditions", "allergy", "patient_program", "patient_state",
    "patient_program_attribute", "order_group", "order_group_attribute", "orders", "drug_order", "test_order",
    "referral_order", "order_attribute", "diagnosis_attribute",
)  # fmt: skip

#: Columns of `users` that never leave the site (credentials and reset secrets).
SECRET_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("password", "salt", "secret_question", "secret_answer", "activation_key"),
}

#: Columns that central suffixes with `|<site>` so that usernames and provider identifiers of sites cannot collide.
SITE_SUFFIX_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("username", "system_id"),
    "provider": ("identifier",),
}

def with_site_suffix(value: str, site: str) -> str:
    """`admin` from site `s1` is `admin|s1` at central (applied once: an already suffixed value is kept)."""
    return value if value.endswith(f"|{site}") else f"{value}|{site}"


#: Attribute tables whose value column holds a local id when the attribute type's format is an org.openmrs class.
ATTRIBUTE_ID_VALUES: dict[str, tuple[str, str, str]] = {
    # table: (value column, attribute type reference column, format column of the type table)
    "person_attribute": ("value", "person_attribute_type_id", "format"),
}

#: Columns that reference users by OpenMRS convention even where the schema declares no foreign key
#: (e.g. person_name.changed_by in 2.5): a local id must never cross the wire unconverted.
AUDIT_COLUMNS = ("creator", "changed_by", "voided_by", "retired_by")

#: Other references the 2.5 schema leaves undeclared.
UNDECLARED_REFERENCES: dict[tuple[str, str], str] = {("orders", "concept_id"): "concept"}

#: Tables whose changes OpenMRS must hear about (cleardbcache + searchindexupdate): (resource, subResource).
REST_RESOURCES: dict[str, tuple[str, str | None]] = {
    "person": ("person", None),
    "patient": ("patient", None),
    "person_name": ("person", "name"),
    "patient_identifier": ("patient", "identifier"),
    "person_attribute": ("person", "attribute"),
}

#: OpenMRS REST endpoints (under /ws/rest/v1/) called after a change, in this order: evict the DB cache, then
#: update the search index.
REST_ENDPOINTS = ("cleardbcache", "searchindexupdate")
REST_BASE_PATH = "/ws/rest/v1/"

PLACEHOLDER_REASON = "[placeholder]"
#: the reason of a "filler": a row a placeholder's required reference needed in a table empty at central (a random
#: uuid no site has); the receiver removes it once nothing references it (placeholder.remove_fillers)
PLACEHOLDER_FILLER_REASON = "[placeholder filler]"
#: what marks a row dbsync made up (a placeholder or a filler): never a conflict, never a site's row
PLACEHOLDER_REASONS = (PLACEHOLDER_REASON, PLACEHOLDER_FILLER_REASON)

#: A row's "last changed" is the latest of these (the conflict rule compares them).
CHANGE_DATE_COLUMNS = ("date_changed", "date_voided", "date_retired")

#: How a placeholder row marks itself (and is recognised): flag, reason and date, voided or retired.
PLACEHOLDER_FLAG_COLUMNS = ("voided", "retired")
PLACEHOLDER_REASON_COLUMNS = ("void_reason", "retire_reason")
PLACEHOLDER_DATE_COLUMNS = ("date_voided", "date_retired")
PLACEHOLDER_USER_COLUMNS = ("voided_by", "retired_by", "creator")

#: Synced tables that have no index on uuid in 2.5: the receiver adds one, or every lookup is a full scan.
UUID_INDEX_TABLES = ("users", "allergy")

#: The table AUDIT_COLUMNS reference, whose lowest id (admin) placeholders and required audit columns default to.
USERS_TABLE = "users"

_CLASS_TABLE_EXCEPTIONS = {"User": "users", "Order": "orders"}



def class_table(java_class: str) -> str | None:
    """`org.openmrs.ProgramWorkflow` → `program_workflow`: the table an attribute format class is stored in."""
    if not java_class.startswith("org.openmrs.") or java_class.count(".") != 2:
        return None
    simple = java_class.rsplit(".", 1)[1]
    if simple in _CLASS_TABLE_EXCEPTIONS:
        return _CLASS_TABLE_EXCEPTIONS[simple]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", simple).lower()

#: OpenMRS's own users (users.system_id): every installation has them, with the same uuids, as have their persons;
#: never a site's, not even when a site adopts the rows central has (receiver/adopt.py)
BUILT_IN_USERS = ("admin", "daemon")
