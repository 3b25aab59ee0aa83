"""Mutation phase: the edits, voids, un-voids and deletes a site makes after data entry.

Candidates are drawn from the ground truth (insertion-ordered dicts, never sets), so the choices repeat with the
seed. Deletes remove children before parents, as the foreign keys demand.
"""

from __future__ import annotations

from typing import Any

from devtools.workload import metadata as md
from devtools.workload.create import CITIES, GIVEN_F, GIVEN_M, NOTES, Work, ts

PURGE_ORDER = ["encounter_diagnosis", "conditions", "allergy", "patient_state", "patient_program", "obs", "drug_order",
               "test_order", "orders", "encounter_provider", "encounter", "visit_attribute", "visit", "relationship",
               "patient_identifier", "person_attribute", "person_name", "person_address", "patient", "person"]
_BY_PERSON = {"obs": ["person_id"], "encounter": ["patient_id"], "visit": ["patient_id"], "orders": ["patient_id"],
              "encounter_diagnosis": ["patient_id"], "conditions": ["patient_id"], "allergy": ["patient_id"],
              "patient_program": ["patient_id"], "patient_identifier": ["patient_id"], "person_attribute": ["person_id"],
              "person_name": ["person_id"], "person_address": ["person_id"], "relationship": ["person_a", "person_b"]}
_BY_PARENT = {"encounter_provider": ("encounter_id", "encounter"), "patient_state": ("patient_program_id", "patient_program"),
              "visit_attribute": ("visit_id", "visit")}


class Mutator:
    def __init__(self, w: Work, fraction: float) -> None:
        self.w, self.b, self.rng, self.f = w, w.book, w.rng, fraction
        self.t0 = w.clock_max + 1440
        self.T = self.b.truth.tables

    def when(self) -> str:
        return ts(self.t0 + self.rng.randint(0, 30 * 1440))

    def pick(self, table: str, share: float, pred: Any = None) -> list[str]:
        """A seeded sample of `share·fraction` of the table's current rows matching `pred`."""
        rows = self.T.get(table, {})
        return self.sample([u for u, r in rows.items() if pred is None or pred(r)], share)

    def sample(self, candidates: list[str], share: float) -> list[str]:
        return self.rng.sample(candidates, min(len(candidates), round(len(candidates) * self.f * share)))

    def change(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        self.b.change(table, columns, rows)
        self.b.sink.boundary()

    def void(self, table: str, uuids: list[str], reason: str, *, voided: bool = True) -> None:
        by, when = (self.w.user(), self.when()) if voided else (None, None)
        self.b.change(table, ["voided", "voided_by", "date_voided", "void_reason"],
                      [(u, int(voided), by, when, reason if voided else None) for u in uuids])

    def edited(self) -> tuple[int, str]:
        return self.w.user(), self.when()

    def run(self) -> None:
        if self.f <= 0:
            return
        self.updates()
        self.obs_corrections()
        self.voids()
        self.b.sink.commit()
        self.deletes()
        self.b.sink.commit()

    def updates(self) -> None:
        rng, c = self.rng, self.change
        c("person_name", ["given_name", "changed_by", "date_changed"],
          [(u, rng.choice(GIVEN_F + GIVEN_M), *self.edited()) for u in self.pick("person_name", 1.0)])
        c("person_address", ["city_village", "state_province", "changed_by", "date_changed"],
          [(u, *rng.choice(CITIES), *self.edited()) for u in self.pick("person_address", 0.5)])
        c("visit", ["date_stopped", "changed_by", "date_changed"],
          [(u, self.when(), *self.edited()) for u in self.pick("visit", 0.5)])
        tel = md.UUIDS["person_attribute_type"][md.ATTR_TELEPHONE]
        c("person_attribute", ["value", "changed_by", "date_changed"],
          [(u, f"+2547{rng.randint(0, 99_999_999):08d}", *self.edited())
           for u in self.pick("person_attribute", 0.5, lambda r: r["person_attribute_type_id"]["uuid"] == tel)])
        c("conditions", ["clinical_status", "end_date", "changed_by", "date_changed"],
          [(u, "INACTIVE", self.when(), *self.edited()) for u in self.pick("conditions", 0.5)])
        c("allergy", ["severity_concept_id", "comments", "changed_by", "date_changed"],
          [(u, rng.choice(md.SEVERITIES), "Severity reassessed", *self.edited()) for u in self.pick("allergy", 0.5)])
        drug = md.UUIDS["order_type"][md.ORDER_TYPE_DRUG]
        c("orders", ["date_stopped"],
          [(u, self.when()) for u in self.pick("orders", 0.3, lambda r: r["order_type_id"]["uuid"] == drug)])
        c("relationship", ["end_date", "changed_by", "date_changed"],
          [(u, self.when(), *self.edited()) for u in self.pick("relationship", 0.3)])
        c("person", ["dead", "death_date", "cause_of_death", "changed_by", "date_changed"],
          [(u, 1, self.when(), rng.choice(md.DIAGNOSES), *self.edited())
           for u in self.pick("person", 0.02, lambda r: r["creator"]["uuid"] != md.ADMIN_USER_UUID)])
        self.complete_programs()
        if self.f > 0 and self.T.get("users"):
            retired = list(self.T["users"])[-1]
            c("users", ["retired", "retired_by", "date_retired", "retire_reason"],
              [(retired, 1, md.ADMIN_USER_ID, self.when(), "Left the clinic")])
            external = list(self.T["provider"])[-1]
            c("provider", ["name", "changed_by", "date_changed"], [(external, "Visiting specialist (cardiology)",
                                                                    md.ADMIN_USER_ID, self.when())])
        c("obs", ["value_text"], [(u, self.rng.choice(NOTES) + " (amended)") for u in self.pick(
            "obs", 0.2, lambda r: r["value_text"] is not None)])

    def complete_programs(self) -> None:
        states: dict[str, list[str]] = {}
        for u, r in self.T.get("patient_state", {}).items():
            states.setdefault(r["patient_program_id"]["uuid"], []).append(u)
        done = self.pick("patient_program", 0.3)
        self.change("patient_program", ["date_completed", "outcome_concept_id", "changed_by", "date_changed"],
                    [(u, self.when(), self.rng.choice([md.CONCEPT_COMPLETED, md.CONCEPT_DIED]), *self.edited())
                     for u in done])
        open_states = [s for u in done for s in states.get(u, []) if self.T["patient_state"][s]["end_date"] is None]
        self.change("patient_state", ["end_date", "changed_by", "date_changed"],
                    [(s, self.when()[:10], *self.edited()) for s in open_states])

    def obs_corrections(self) -> None:
        """OpenMRS edits an obs by voiding it and saving a new one that points back through previous_version."""
        b = self.b
        numeric = self.pick("obs", 0.1, lambda r: r["value_numeric"] is not None and not r["voided"])
        self.void("obs", numeric, "Value corrected")
        for u in numeric:
            old = self.T["obs"][u]
            when = self.when()
            b.add("obs", obs_id=b.new_id("obs"), person_id=b.local(old["person_id"]), concept_id=b.local(old["concept_id"]),
                  encounter_id=b.local(old["encounter_id"]), order_id=b.local(old["order_id"]),
                  obs_datetime=old["obs_datetime"], location_id=b.local(old["location_id"]),
                  obs_group_id=b.local(old["obs_group_id"]), value_coded=None, value_datetime=None,
                  value_numeric=round(old["value_numeric"] * self.rng.uniform(0.9, 1.1), 1), value_text=None,
                  comments="corrected", creator=self.w.user(), date_created=when, voided=0, voided_by=None,
                  date_voided=None, void_reason=None, uuid=self.w.uuid(), previous_version=b.id_of["obs"][u],
                  status="AMENDED")
        b.flush()

    def voids(self) -> None:
        """Voids, committed, then some un-voided again (a second change to the same rows)."""
        by_encounter: dict[str, list[str]] = {}
        for u, r in self.T.get("obs", {}).items():
            if r["encounter_id"] is not None and not r["voided"]:
                by_encounter.setdefault(r["encounter_id"]["uuid"], []).append(u)
        encounters = self.pick("encounter", 0.05)
        obs = [o for e in encounters for o in by_encounter.get(e, [])]
        self.void("encounter", encounters, "Entered in error")
        self.void("obs", obs, "Encounter voided")
        attrs = self.pick("person_attribute", 0.2, lambda r: not r["voided"])
        self.void("person_attribute", attrs, "Wrong value")
        national = md.UUIDS["patient_identifier_type"][md.ID_TYPE_NATIONAL_ID]
        self.void("patient_identifier", self.pick(
            "patient_identifier", 0.2, lambda r: r["identifier_type"]["uuid"] == national), "Duplicate identifier")
        self.b.sink.commit()
        back = encounters[: len(encounters) // 2]
        self.void("encounter", back, "", voided=False)
        self.void("obs", [o for e in back for o in by_encounter.get(e, [])], "", voided=False)
        self.void("person_attribute", attrs[: len(attrs) // 3], "", voided=False)
        self.b.sink.boundary()

    def deletes(self) -> None:
        self.purge_patients()
        T, b = self.T, self.b
        obs = T.get("obs", {})
        parents = {r["obs_group_id"]["uuid"] for r in obs.values() if r["obs_group_id"]}
        previous = {r["previous_version"]["uuid"] for r in obs.values() if r["previous_version"]}
        b.remove("obs", self.sample([u for u in obs if u not in parents and u not in previous], 0.03))
        groups = self.sample([u for u in obs if u in parents], 0.02)
        chosen = set(groups)
        b.remove("obs", [u for u, r in obs.items() if r["obs_group_id"] and r["obs_group_id"]["uuid"] in chosen] + groups)
        for table, share in (("person_attribute", 0.1), ("allergy", 0.2), ("relationship", 0.2),
                             ("encounter_diagnosis", 0.1)):
            b.remove(table, self.pick(table, share))
        with_results = {r["order_id"]["uuid"] for r in obs.values() if r["order_id"]}
        tests = self.sample([u for u in T.get("test_order", {}) if u not in with_results], 0.1)
        b.remove("test_order", tests)
        b.remove("orders", tests)
        b.sink.boundary()

    def purge_patients(self) -> None:
        """Delete whole patients with everything that hangs off them, leaves first."""
        patients = list(self.T.get("patient", {}))
        n = max(1, round(len(patients) * self.f * 0.02)) if len(patients) >= 20 else 0
        if not n:
            return
        gone: dict[str, dict[str, None]] = {"person": dict.fromkeys(self.rng.sample(patients, n))}
        gone["patient"] = gone["person"]
        for table, cols in _BY_PERSON.items():
            gone[table] = {u: None for u, r in self.T.get(table, {}).items()
                           if any(r[c] and r[c]["uuid"] in gone["person"] for c in cols)}
        for table, (col, parent) in _BY_PARENT.items():
            gone[table] = {u: None for u, r in self.T.get(table, {}).items() if r[col]["uuid"] in gone[parent]}
        for table in ("drug_order", "test_order"):
            gone[table] = {u: None for u in self.T.get(table, {}) if u in gone["orders"]}
        for table in PURGE_ORDER:
            self.b.remove(table, list(gone[table]))
        self.b.sink.boundary()
