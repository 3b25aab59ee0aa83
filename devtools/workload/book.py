"""Bookkeeping shared by the create and mutation phases: table layouts, local id ↔ uuid maps, the ground truth, and
the sinks that receive the SQL operations (a database, or a list for tests without one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from devtools.workload import metadata as md
from devtools.workload.truth import GroundTruth, ref

U = "users"
_AUDIT = {"creator": U, "changed_by": U, "voided_by": U}
_RETIRE = {"creator": U, "changed_by": U, "retired_by": U}
_VOID = ["creator", "date_created", "changed_by", "date_changed", "voided", "voided_by", "date_voided", "void_reason"]

# table -> (primary key, columns written at creation, foreign-key column -> referenced table)
TABLES: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "person": ("person_id", ["person_id", "gender", "birthdate", "birthdate_estimated", "dead", "death_date",
                             "cause_of_death", *_VOID, "uuid"], {**_AUDIT, "cause_of_death": "concept"}),
    "person_name": ("person_name_id", ["person_name_id", "preferred", "person_id", "given_name", "middle_name",
                                       "family_name", *_VOID, "uuid"], {**_AUDIT, "person_id": "person"}),
    "person_address": ("person_address_id", ["person_address_id", "person_id", "preferred", "address1", "city_village",
                                             "state_province", "postal_code", "country", *_VOID, "uuid"],
                       {**_AUDIT, "person_id": "person"}),
    "users": ("user_id", ["user_id", "system_id", "username", "password", "salt", "person_id", "creator",
                          "date_created", "changed_by", "date_changed", "retired", "retired_by", "date_retired",
                          "retire_reason", "email", "uuid"], {**_RETIRE, "person_id": "person"}),
    "provider": ("provider_id", ["provider_id", "person_id", "name", "identifier", "creator", "date_created",
                                 "changed_by", "date_changed", "retired", "retired_by", "date_retired", "retire_reason",
                                 "uuid"], {**_RETIRE, "person_id": "person"}),
    "patient": ("patient_id", ["patient_id", *_VOID, "allergy_status"], {**_AUDIT, "patient_id": "person"}),
    "patient_identifier": ("patient_identifier_id", ["patient_identifier_id", "patient_id", "identifier",
                                                     "identifier_type", "preferred", "location_id", *_VOID, "uuid"],
                           {**_AUDIT, "patient_id": "patient", "identifier_type": "patient_identifier_type",
                            "location_id": "location"}),
    "person_attribute": ("person_attribute_id", ["person_attribute_id", "person_id", "value",
                                                 "person_attribute_type_id", *_VOID, "uuid"],
                         {**_AUDIT, "person_id": "person", "person_attribute_type_id": "person_attribute_type"}),
    "relationship": ("relationship_id", ["relationship_id", "person_a", "relationship", "person_b", "start_date",
                                         "end_date", *_VOID, "uuid"],
                     {**_AUDIT, "person_a": "person", "person_b": "person", "relationship": "relationship_type"}),
    "visit": ("visit_id", ["visit_id", "patient_id", "visit_type_id", "date_started", "date_stopped", "location_id",
                           *_VOID, "uuid"],
              {**_AUDIT, "patient_id": "patient", "visit_type_id": "visit_type", "location_id": "location"}),
    "visit_attribute": ("visit_attribute_id", ["visit_attribute_id", "visit_id", "attribute_type_id", "value_reference",
                                               *_VOID, "uuid"],
                        {**_AUDIT, "visit_id": "visit", "attribute_type_id": "visit_attribute_type"}),
    "encounter": ("encounter_id", ["encounter_id", "encounter_type", "patient_id", "location_id", "encounter_datetime",
                                   "visit_id", *_VOID, "uuid"],
                  {**_AUDIT, "encounter_type": "encounter_type", "patient_id": "patient", "location_id": "location",
                   "visit_id": "visit"}),
    "encounter_provider": ("encounter_provider_id", ["encounter_provider_id", "encounter_id", "provider_id",
                                                     "encounter_role_id", *_VOID, "uuid"],
                           {**_AUDIT, "encounter_id": "encounter", "provider_id": "provider",
                            "encounter_role_id": "encounter_role"}),
    "orders": ("order_id", ["order_id", "order_type_id", "concept_id", "orderer", "encounter_id", "instructions",
                            "date_activated", "auto_expire_date", "date_stopped", "creator", "date_created", "voided",
                            "voided_by", "date_voided", "void_reason", "patient_id", "uuid", "urgency", "order_number",
                            "order_action", "care_setting"],
               {"creator": U, "voided_by": U, "order_type_id": "order_type", "concept_id": "concept",
                "orderer": "provider", "encounter_id": "encounter", "patient_id": "patient",
                "care_setting": "care_setting"}),
    "drug_order": ("order_id", ["order_id", "drug_inventory_id", "dose", "as_needed", "dosing_type", "quantity",
                                "num_refills", "duration", "duration_units", "quantity_units", "route", "dose_units",
                                "frequency", "dispense_as_written"],
                   {"order_id": "orders", "drug_inventory_id": "drug", "duration_units": "concept",
                    "quantity_units": "concept", "route": "concept", "dose_units": "concept",
                    "frequency": "order_frequency"}),
    "test_order": ("order_id", ["order_id", "specimen_source", "laterality", "clinical_history", "number_of_repeats"],
                   {"order_id": "orders", "specimen_source": "concept"}),
    "obs": ("obs_id", ["obs_id", "person_id", "concept_id", "encounter_id", "order_id", "obs_datetime", "location_id",
                       "obs_group_id", "value_coded", "value_datetime", "value_numeric", "value_text", "comments",
                       "creator", "date_created", "voided", "voided_by", "date_voided", "void_reason", "uuid",
                       "previous_version", "status"],
            {"creator": U, "voided_by": U, "person_id": "person", "concept_id": "concept", "encounter_id": "encounter",
             "order_id": "orders", "location_id": "location", "obs_group_id": "obs", "value_coded": "concept",
             "previous_version": "obs"}),
    "patient_program": ("patient_program_id", ["patient_program_id", "patient_id", "program_id", "date_enrolled",
                                               "date_completed", "location_id", "outcome_concept_id", *_VOID, "uuid"],
                        {**_AUDIT, "patient_id": "patient", "program_id": "program", "location_id": "location",
                         "outcome_concept_id": "concept"}),
    "patient_state": ("patient_state_id", ["patient_state_id", "patient_program_id", "state", "start_date", "end_date",
                                           *_VOID, "uuid", "encounter_id"],
                      {**_AUDIT, "patient_program_id": "patient_program", "state": "program_workflow_state",
                       "encounter_id": "encounter"}),
    "allergy": ("allergy_id", ["allergy_id", "patient_id", "severity_concept_id", "coded_allergen", "allergen_type",
                               "comments", *_VOID, "uuid", "encounter_id"],
                {**_AUDIT, "patient_id": "patient", "severity_concept_id": "concept", "coded_allergen": "concept",
                 "encounter_id": "encounter"}),
    "conditions": ("condition_id", ["condition_id", "condition_coded", "clinical_status", "verification_status",
                                    "onset_date", "end_date", "patient_id", "encounter_id", *_VOID, "uuid"],
                   {**_AUDIT, "condition_coded": "concept", "patient_id": "patient", "encounter_id": "encounter"}),
    "encounter_diagnosis": ("diagnosis_id", ["diagnosis_id", "diagnosis_coded", "encounter_id", "patient_id",
                                             "condition_id", "certainty", "dx_rank", *_VOID, "uuid"],
                            {**_AUDIT, "diagnosis_coded": "concept", "encounter_id": "encounter",
                             "patient_id": "patient", "condition_id": "conditions"}),
}
INSERT_ORDER = list(TABLES)
"""Parents before children: a flush inserts the tables in this order."""
IDENTITY_PARENT = {"patient": "person", "drug_order": "orders", "test_order": "orders"}
NOT_SYNCED = {("users", "password"), ("users", "salt")}
"""Written at the site, never carried by sync: not part of the truth."""


class Sink(Protocol):
    """Receives the generator's operations in order."""

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None: ...
    def update(self, table: str, key: str, columns: Sequence[str], rows: list[tuple]) -> None: ...
    def delete(self, table: str, key: str, ids: list[int]) -> None: ...
    def boundary(self) -> None: ...
    def commit(self) -> None: ...


class ListSink:
    """Records operations instead of executing them: repeatability tests without a database."""

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        self.ops.append(("insert", table, tuple(columns), tuple(rows)))

    def update(self, table: str, key: str, columns: Sequence[str], rows: list[tuple]) -> None:
        self.ops.append(("update", table, key, tuple(columns), tuple(rows)))

    def delete(self, table: str, key: str, ids: list[int]) -> None:
        self.ops.append(("delete", table, key, tuple(ids)))

    def boundary(self) -> None:
        pass

    def commit(self) -> None:
        self.ops.append(("commit",))


class Book:
    """Assigns local ids, remembers id ↔ uuid, records the truth and buffers inserts until a flush."""

    def __init__(self, truth: GroundTruth, next_ids: dict[str, int], sink: Sink) -> None:
        self.truth = truth
        self.sink = sink
        self.next_ids = dict(next_ids)
        self.uuid_of: dict[str, dict[int, str]] = {t: dict(m) for t, m in md.UUIDS.items()}
        self.id_of: dict[str, dict[str, int]] = {}
        self.pending: dict[str, list[tuple]] = {}
        self.pending_rows = 0
        self.rows_written = 0
        self._refs: dict[tuple[str, str], dict[str, str] | None] = {}

    def new_id(self, table: str) -> int:
        i = self.next_ids.get(table, 1)
        self.next_ids[table] = i + 1
        return i

    def ref(self, table: str, local_id: int | None) -> dict[str, str] | None:
        """Canonical reference for a local id; shared objects keep a 200k-row truth small."""
        if local_id is None:
            return None
        uuid = self.uuid_of[IDENTITY_PARENT.get(table, table)][local_id]
        key = (table, uuid)
        if key not in self._refs:
            self._refs[key] = ref(table, uuid)
        return self._refs[key]

    def local(self, reference: dict[str, str] | None) -> int | None:
        """Local id of a canonical reference (generated rows and metadata)."""
        if reference is None:
            return None
        table = IDENTITY_PARENT.get(reference["$ref"], reference["$ref"])
        found = self.id_of.get(table, {}).get(reference["uuid"])
        if found is None:
            found = next(i for i, u in self.uuid_of[table].items() if u == reference["uuid"])
        return found

    def identity(self, table: str, row: dict[str, Any]) -> str:
        pk = TABLES[table][0]
        parent = IDENTITY_PARENT.get(table)
        return self.uuid_of[parent][row[pk]] if parent else row["uuid"]

    def to_truth(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        pk, _cols, refs = TABLES[table]
        out: dict[str, Any] = {}
        for col, value in row.items():
            if col in (pk, "uuid") or (table, col) in NOT_SYNCED:
                continue
            if col in refs:
                value = self.ref(refs[col], value)
            elif table == "person_attribute" and col == "value":
                value = self._attribute_value(row, value)
            out[col] = value
        return out

    def _attribute_value(self, row: dict[str, Any], value: Any) -> Any:
        """Attribute types of format org.openmrs.<Class> hold a local id: the truth holds the target's uuid."""
        fmt = md.ATTR_FORMATS.get(row.get("person_attribute_type_id") or self._attr_type(row), "")
        target = {"org.openmrs.Location": "location", "org.openmrs.Concept": "concept"}.get(fmt)
        return self.ref(target, int(value)) if target and value is not None else value

    def _attr_type(self, row: dict[str, Any]) -> int:
        uuid = self.uuid_of["person_attribute"][row["person_attribute_id"]]
        type_ref = self.truth.tables["person_attribute"][uuid]["person_attribute_type_id"]
        return next(i for i, u in self.uuid_of["person_attribute_type"].items() if u == type_ref["uuid"])

    def add(self, table: str, **row: Any) -> int:
        """Buffer one new row (every creation column must be given) and record it in the truth; returns its id."""
        pk, cols, _refs = TABLES[table]
        if len(row) != len(cols):
            raise ValueError(f"{table}: columns {sorted(set(cols) ^ set(row))} missing or unknown")
        if "uuid" in row:
            self.uuid_of.setdefault(table, {})[row[pk]] = row["uuid"]
            self.id_of.setdefault(table, {})[row["uuid"]] = row[pk]
        self.truth.put(table, self.identity(table, row), self.to_truth(table, row))
        self.pending.setdefault(table, []).append(tuple(row[c] for c in cols))
        self.pending_rows += 1
        return row[pk]

    def flush(self) -> None:
        """Insert everything buffered, parents first, then let the sink commit if the transaction is big enough."""
        for table in INSERT_ORDER:
            rows = self.pending.pop(table, None)
            if rows:
                self.sink.insert(table, TABLES[table][1], rows)
                self.rows_written += len(rows)
        self.pending_rows = 0
        self.sink.boundary()

    def change(self, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """Update existing rows: `rows` are (uuid, *values); truth and database both follow."""
        if not rows:
            return
        pk = TABLES[table][0]
        ids = self.id_of[table] if table not in IDENTITY_PARENT else self.id_of[IDENTITY_PARENT[table]]
        db_rows = []
        for uuid, *values in rows:
            local = ids[uuid]
            changes = dict(zip(columns, values, strict=True))
            changes[pk] = local
            self.truth.update(table, uuid, self.to_truth(table, changes))
            db_rows.append((local, *values))
        self.sink.update(table, pk, list(columns), db_rows)
        self.rows_written += len(db_rows)

    def remove(self, table: str, uuids: list[str]) -> None:
        """Delete rows from the database and the truth."""
        if not uuids:
            return
        pk = TABLES[table][0]
        ids = self.id_of[table] if table not in IDENTITY_PARENT else self.id_of[IDENTITY_PARENT[table]]
        for u in uuids:
            self.truth.delete(table, u)
        self.sink.delete(table, pk, sorted((ids[u] for u in uuids), reverse=True))
        self.rows_written += len(uuids)
