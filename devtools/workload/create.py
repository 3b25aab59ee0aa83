"""Create phase: staff (users, providers) and patients with their clinical history, seeded and repeatable.

Every choice comes from one `random.Random`, uuids included, and every datetime is BASE plus a seeded offset, so the
same seed and parameters give the same rows in the same order.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import uuid
from dataclasses import dataclass, field

from devtools.workload import metadata as md
from devtools.workload.book import Book

BASE = dt.datetime(2023, 1, 2, 8, 0, 0)
GIVEN_F = ["Amina", "Grace", "Mary", "Wanjiru", "Achieng", "Fatuma", "Joy", "Esther", "Zawadi", "Halima", "Ruth", "Neema"]
GIVEN_M = ["John", "Peter", "Otieno", "Kamau", "Juma", "David", "Samuel", "Musa", "Brian", "Kevin", "Hassan", "Paul"]
FAMILY = ["Odhiambo", "Mwangi", "Kariuki", "Njoroge", "Ochieng", "Wafula", "Mutua", "Kiptoo", "Chebet", "Omondi",
          "Wekesa", "Barasa", "Nyambura", "Achola", "Kilonzo", "Ruto"]
CITIES = [("Kisumu", "Nyanza"), ("Nairobi", "Nairobi"), ("Eldoret", "Rift Valley"), ("Mombasa", "Coast"),
          ("Nakuru", "Rift Valley"), ("Kakamega", "Western")]
NOTES = ["Patient doing well.", "Complains of headache, advised fluids.", "Adherence counselling given.",
         "Referred to nutritionist.", "Cough for two weeks, sputum requested.", "No complaints today.",
         "Patient reports improved appetite.", "Follow up in one month."]


@functools.lru_cache(maxsize=1 << 18)
def ts(minutes: int) -> str:
    """BASE + minutes as a DATETIME literal (never now(): runs must repeat)."""
    return (BASE + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")


def day(minutes: int) -> str:
    return (BASE + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%d")


def around(rng: random.Random, mean: float) -> int:
    """A count whose average is `mean` (uniform on 1..2·mean−1), 0 when mean is 0."""
    if mean <= 0:
        return 0
    hi = max(1, round(2 * mean) - 1)
    return rng.randint(1, hi)


@dataclass
class Work:
    """State of one run shared by both phases."""

    rng: random.Random
    book: Book
    site: str
    location: int
    visits: float
    encounters: float
    obs: float
    users: list[int] = field(default_factory=list)
    providers: list[int] = field(default_factory=list)
    patients: list[int] = field(default_factory=list)
    clock_max: int = 0

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def user(self) -> int:
        """Creator of a clinical row: mostly site staff, sometimes admin."""
        return md.ADMIN_USER_ID if not self.users or self.rng.random() < 0.1 else self.rng.choice(self.users)

    def audit(self, minutes: int, creator: int | None = None) -> dict:
        self.clock_max = max(self.clock_max, minutes)
        return {"creator": creator or self.user(), "date_created": ts(minutes), "changed_by": None, "date_changed": None,
                "voided": 0, "voided_by": None, "date_voided": None, "void_reason": None}


def _person(w: Work, t: int, gender: str, age: int, creator: int) -> tuple[int, str, str]:
    b = w.book
    given = w.rng.choice(GIVEN_F if gender == "F" else GIVEN_M)
    family = w.rng.choice(FAMILY)
    pid = b.add("person", person_id=b.new_id("person"), gender=gender,
                birthdate=day(t - age * 525960 - w.rng.randint(0, 525000)), birthdate_estimated=int(w.rng.random() < 0.1),
                dead=0, death_date=None, cause_of_death=None, **w.audit(t, creator), uuid=w.uuid())
    b.add("person_name", person_name_id=b.new_id("person_name"), preferred=1, person_id=pid, given_name=given,
          middle_name=w.rng.choice([None, "N.", "K."]), family_name=family, **w.audit(t, creator), uuid=w.uuid())
    return pid, given, family


def create_staff(w: Work, count: int) -> None:
    """Site users (with person and name) and providers; one provider has no person, as OpenMRS allows."""
    b = w.book
    for k in range(1, count + 1):
        t = w.rng.randint(0, 60 * 24)
        pid, given, family = _person(w, t, w.rng.choice("MF"), w.rng.randint(25, 60), md.ADMIN_USER_ID)
        uid = b.add("users", user_id=b.new_id("users"), system_id=f"{w.site}-{k}", username=f"{given.lower()}{k}",
                    password=f"{w.rng.getrandbits(512):0128x}", salt=f"{w.rng.getrandbits(512):0128x}", person_id=pid,
                    creator=md.ADMIN_USER_ID, date_created=ts(t), changed_by=None, date_changed=None, retired=0,
                    retired_by=None, date_retired=None, retire_reason=None,
                    email=f"{given.lower()}.{family.lower()}{k}@{w.site}.example", uuid=w.uuid())
        w.users.append(uid)
        w.providers.append(_provider(w, t, pid, f"{given} {family}", f"PRV-{k}"))
    w.providers.append(_provider(w, 60, None, "Visiting specialist", "PRV-EXT"))
    b.flush()


def _provider(w: Work, t: int, person_id: int | None, name: str, identifier: str) -> int:
    b = w.book
    return b.add("provider", provider_id=b.new_id("provider"), person_id=person_id, name=name, identifier=identifier,
                 creator=md.ADMIN_USER_ID, date_created=ts(t), changed_by=None, date_changed=None, retired=0,
                 retired_by=None, date_retired=None, retire_reason=None, uuid=w.uuid())


def create_patient(w: Work) -> None:
    """One patient: demographics, identifiers, attributes, relationships, visits with encounters, obs and orders,
    programs, allergies and conditions."""
    b, rng = w.book, w.rng
    t = rng.randint(0, 365 * 1440)
    gender = rng.choice("MF")
    pid, _given, _family = _person(w, t, gender, rng.randint(1, 85), w.user())
    b.add("patient", patient_id=pid, **w.audit(t), allergy_status=rng.choice(["Unknown", "No known allergies"]))
    city, province = rng.choice(CITIES)
    b.add("person_address", person_address_id=b.new_id("person_address"), person_id=pid, preferred=1,
          address1=f"{rng.randint(1, 999)} {rng.choice(FAMILY)} Road", city_village=city, state_province=province,
          postal_code=f"{rng.randint(10000, 99999)}", country="Kenya", **w.audit(t), uuid=w.uuid())
    b.add("patient_identifier", patient_identifier_id=b.new_id("patient_identifier"), patient_id=pid,
          identifier=f"{w.site.upper()}-{pid:07d}", identifier_type=md.ID_TYPE_OPENMRS_ID, preferred=1,
          location_id=w.location, **w.audit(t), uuid=w.uuid())
    if rng.random() < 0.5:
        b.add("patient_identifier", patient_identifier_id=b.new_id("patient_identifier"), patient_id=pid,
              identifier=f"{rng.randint(10_000_000, 39_999_999)}", identifier_type=md.ID_TYPE_NATIONAL_ID, preferred=0,
              location_id=w.location, **w.audit(t), uuid=w.uuid())
    attrs = [(md.ATTR_TELEPHONE, f"+2547{rng.randint(0, 99_999_999):08d}"), (md.ATTR_HEALTH_CENTER, str(w.location))]
    if rng.random() < 0.5:
        attrs.append((md.ATTR_CIVIL_STATUS, str(rng.choice(md.ANSWERS[md.CONCEPT_CIVIL_STATUS]))))
    for type_id, value in attrs:
        b.add("person_attribute", person_attribute_id=b.new_id("person_attribute"), person_id=pid, value=value,
              person_attribute_type_id=type_id, **w.audit(t), uuid=w.uuid())
    if w.patients and rng.random() < 0.1:
        b.add("relationship", relationship_id=b.new_id("relationship"), person_a=rng.choice(w.patients),
              relationship=rng.choice([2, 3, 4]), person_b=pid, start_date=ts(t), end_date=None, **w.audit(t),
              uuid=w.uuid())
    w.patients.append(pid)
    _clinical(w, pid, t)


def _clinical(w: Work, pid: int, t: int) -> None:
    b, rng = w.book, w.rng
    encounters: list[int] = []
    condition = None
    for v in range(around(rng, w.visits)):
        t += rng.randint(7, 90) * 1440 if v else rng.randint(0, 120)
        inpatient = rng.random() < 0.1
        stop = t + (rng.randint(1, 5) * 1440 if inpatient else rng.randint(60, 360))
        vid = b.add("visit", visit_id=b.new_id("visit"), patient_id=pid,
                    visit_type_id=md.VISIT_INPATIENT if inpatient else md.VISIT_OUTPATIENT, date_started=ts(t),
                    date_stopped=ts(stop), location_id=w.location, **w.audit(t), uuid=w.uuid())
        if rng.random() < 0.3:
            b.add("visit_attribute", visit_attribute_id=b.new_id("visit_attribute"), visit_id=vid,
                  attribute_type_id=md.VISIT_ATTR_PAYMENT, value_reference=rng.choice(["Cash", "Insurance", "Waiver"]),
                  **w.audit(t), uuid=w.uuid())
        for e in range(around(rng, w.encounters)):
            te = t + e * rng.randint(5, 40)
            etype = md.ENC_ADULT_INITIAL if not encounters else rng.choice(
                [md.ENC_ADULT_RETURN, md.ENC_VITALS, md.ENC_LAB_RESULTS])
            eid = b.add("encounter", encounter_id=b.new_id("encounter"), encounter_type=etype, patient_id=pid,
                        location_id=w.location, encounter_datetime=ts(te), visit_id=vid, **w.audit(te), uuid=w.uuid())
            encounters.append(eid)
            b.add("encounter_provider", encounter_provider_id=b.new_id("encounter_provider"), encounter_id=eid,
                  provider_id=rng.choice(w.providers), encounter_role_id=rng.choice([md.ROLE_CLINICIAN, md.ROLE_UNKNOWN]),
                  **w.audit(te), uuid=w.uuid())
            _obs(w, pid, eid, te)
            _orders(w, pid, eid, te)
            if rng.random() < 0.2:
                for rank in range(1, rng.randint(1, 2) + 1):
                    b.add("encounter_diagnosis", diagnosis_id=b.new_id("encounter_diagnosis"),
                          diagnosis_coded=rng.choice(md.DIAGNOSES), encounter_id=eid, patient_id=pid,
                          condition_id=condition if rank == 1 else None,
                          certainty=rng.choice(["CONFIRMED", "PROVISIONAL"]), dx_rank=rank, **w.audit(te), uuid=w.uuid())
            if condition is None and rng.random() < 0.15:
                condition = b.add("conditions", condition_id=b.new_id("conditions"),
                                  condition_coded=rng.choice(md.DIAGNOSES), clinical_status="ACTIVE",
                                  verification_status=rng.choice(["CONFIRMED", "PROVISIONAL"]),
                                  onset_date=ts(te - rng.randint(0, 400) * 1440), end_date=None, patient_id=pid,
                                  encounter_id=eid, **w.audit(te), uuid=w.uuid())
        if v == 0 and encounters:
            _programs(w, pid, encounters[0], t)
    if encounters and rng.random() < 0.2:
        allergen, kind = rng.choice(md.ALLERGENS)
        b.add("allergy", allergy_id=b.new_id("allergy"), patient_id=pid, severity_concept_id=rng.choice(md.SEVERITIES),
              coded_allergen=allergen, allergen_type=kind, comments=rng.choice([None, "Reported by patient"]),
              **w.audit(t), uuid=w.uuid(), encounter_id=encounters[-1])


def _obs_row(w: Work, pid: int, eid: int, t: int, concept: int, group: int | None = None, order: int | None = None,
             **values) -> int:
    b = w.book
    row = {"value_coded": None, "value_datetime": None, "value_numeric": None, "value_text": None, "comments": None}
    row.update(values)
    return b.add("obs", obs_id=b.new_id("obs"), person_id=pid, concept_id=concept, encounter_id=eid, order_id=order,
                 obs_datetime=ts(t), location_id=w.location, obs_group_id=group, **row, creator=w.user(),
                 date_created=ts(t), voided=0, voided_by=None, date_voided=None, void_reason=None, uuid=w.uuid(),
                 previous_version=None, status="FINAL")


def _numeric(w: Work, concept: int) -> float:
    units, lo, hi, allow_decimal = md.NUMERIC[concept]
    mid = {md.CONCEPT_WEIGHT: (40, 95), md.CONCEPT_HEIGHT: (140, 190), md.CONCEPT_TEMPERATURE: (36, 39.5),
           md.CONCEPT_SYSTOLIC: (95, 165), md.CONCEPT_DIASTOLIC: (55, 105), md.CONCEPT_PULSE: (55, 120),
           md.CONCEPT_CD4: (50, 1200), md.CONCEPT_VIRAL_LOAD: (0, 200000)}[concept]
    value = w.rng.uniform(*mid)
    return round(value, 1) if allow_decimal else float(round(value))


def _obs(w: Work, pid: int, eid: int, t: int) -> None:
    """Obs of every kind until the encounter's share is reached: vitals groups, numeric, coded, text, datetime."""
    rng = w.rng
    target, n = around(rng, w.obs), 0
    while n < target:
        kind = rng.random()
        if kind < 0.35:
            group = _obs_row(w, pid, eid, t, md.CONCEPT_VITALS)
            members = md.SET_MEMBERS[md.CONCEPT_VITALS]
            for concept in rng.sample(members, rng.randint(2, len(members))):
                _obs_row(w, pid, eid, t, concept, group=group, value_numeric=_numeric(w, concept))
                n += 1
        elif kind < 0.6:
            concept = rng.choice([md.CONCEPT_WEIGHT, md.CONCEPT_TEMPERATURE, md.CONCEPT_CD4, md.CONCEPT_VIRAL_LOAD])
            _obs_row(w, pid, eid, t, concept, value_numeric=_numeric(w, concept))
        elif kind < 0.75:
            _obs_row(w, pid, eid, t, md.CONCEPT_HIV_TEST, value_coded=rng.choice(md.ANSWERS[md.CONCEPT_HIV_TEST]))
        elif kind < 0.9:
            _obs_row(w, pid, eid, t, md.CONCEPT_CLINICAL_NOTES, value_text=rng.choice(NOTES),
                     comments=rng.choice([None, "entered on paper first"]))
        else:
            _obs_row(w, pid, eid, t, md.CONCEPT_RETURN_VISIT, value_datetime=ts(t + rng.randint(14, 90) * 1440))
        n += 1


def _orders(w: Work, pid: int, eid: int, t: int) -> None:
    b, rng = w.book, w.rng
    for is_drug, p in ((True, 0.25), (False, 0.15)):
        if rng.random() >= p:
            continue
        oid = b.new_id("orders")
        drug = rng.choice(sorted(md.DRUG_CONCEPTS))
        concept = md.DRUG_CONCEPTS[drug] if is_drug else rng.choice(md.TEST_CONCEPTS)
        days = rng.choice([5, 7, 14, 30])
        b.add("orders", order_id=oid, order_type_id=md.ORDER_TYPE_DRUG if is_drug else md.ORDER_TYPE_TEST,
              concept_id=concept, orderer=rng.choice(w.providers), encounter_id=eid,
              instructions=rng.choice([None, "Take after meals"]) if is_drug else None, date_activated=ts(t),
              auto_expire_date=ts(t + days * 1440) if is_drug else None, date_stopped=None, creator=w.user(),
              date_created=ts(t), voided=0, voided_by=None, date_voided=None, void_reason=None, patient_id=pid,
              uuid=w.uuid(), urgency=rng.choice(["ROUTINE", "ROUTINE", "STAT"]), order_number=f"ORD-{w.site}-{oid}",
              order_action="NEW", care_setting=md.CARE_OUTPATIENT)
        if is_drug:
            frequency = rng.choice([md.FREQ_ONCE_DAILY, md.FREQ_TWICE_DAILY])
            b.add("drug_order", order_id=oid, drug_inventory_id=drug, dose=float(rng.choice([1, 2])), as_needed=0,
                  dosing_type="org.openmrs.SimpleDosingInstructions", quantity=float(days * frequency), num_refills=0,
                  duration=days, duration_units=md.CONCEPT_DAYS, quantity_units=md.CONCEPT_TABLET, route=md.CONCEPT_ORAL,
                  dose_units=md.CONCEPT_TABLET, frequency=frequency, dispense_as_written=0)
        else:
            b.add("test_order", order_id=oid, specimen_source=md.CONCEPT_BLOOD, laterality=None,
                  clinical_history=rng.choice([None, "Routine monitoring"]), number_of_repeats=None)
            if concept != md.CONCEPT_FULL_BLOOD_COUNT and rng.random() < 0.5:
                _obs_row(w, pid, eid, t + 60, concept, order=oid, value_numeric=_numeric(w, concept))


def _programs(w: Work, pid: int, eid: int, t: int) -> None:
    b, rng = w.book, w.rng
    for program, p in ((md.PROGRAM_HIV, 0.5), (md.PROGRAM_TB, 0.15)):
        if rng.random() >= p:
            continue
        pp = b.add("patient_program", patient_program_id=b.new_id("patient_program"), patient_id=pid,
                   program_id=program, date_enrolled=ts(t), date_completed=None, location_id=w.location,
                   outcome_concept_id=None, **w.audit(t), uuid=w.uuid())
        states = md.PROGRAM_STATES[program]
        second = rng.random() < 0.4
        t2 = t + rng.randint(14, 120) * 1440
        b.add("patient_state", patient_state_id=b.new_id("patient_state"), patient_program_id=pp, state=states[0],
              start_date=day(t), end_date=day(t2) if second else None, **w.audit(t), uuid=w.uuid(), encounter_id=eid)
        if second:
            b.add("patient_state", patient_state_id=b.new_id("patient_state"), patient_program_id=pp, state=states[1],
                  start_date=day(t2), end_date=None, **w.audit(t2), uuid=w.uuid(), encounter_id=None)
