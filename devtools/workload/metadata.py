"""OpenMRS metadata shared by every test database (sites and central), with fixed ids and uuids.

Metadata is managed centrally in OpenMRS and exists everywhere with the same uuids; dbsync never syncs it. The
generator refers to these rows by the constants below, and the ground truth by their uuids. The SQL written by
`metadata_sql()` is the content of tests/fixtures/openmrs-metadata.sql (a unit test keeps both in step).

Concept ids and uuids follow the CIEL style (`<id>AAAA…`), so a reader can recognise them; the ids are not claimed
to be the real CIEL meaning. Rows derived from a concept (names, answers, set members) get uuid5 uuids from a fixed
namespace: literal values, identical on every run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from pymysql.converters import escape_item

DATE_CREATED = "2024-01-01 00:00:00"
ADMIN_USER_ID = 1
ADMIN_USER_UUID = "5f5c8cb5-b095-11eb-9be5-0242c0a82002"
ADMIN_PERSON_UUID = "50045790-b095-11eb-9be5-0242c0a82002"
_NS = uuid.UUID("6d1f3f3e-3c7a-4e39-9b0e-0d6b2f1a5e11")

# Concept datatypes and classes of the core dump.
DT_NUMERIC, DT_CODED, DT_TEXT, DT_NA, DT_DATETIME = 1, 2, 3, 4, 8
CL_TEST, CL_DRUG, CL_DIAGNOSIS, CL_FINDING, CL_QUESTION, CL_LABSET, CL_CONVSET, CL_MISC = 1, 3, 4, 5, 7, 8, 10, 11
CL_SPECIMEN, CL_FREQUENCY, CL_PROGRAM = 14, 16, 11

# --- concepts -------------------------------------------------------------------------------------------------
CONCEPT_WEIGHT, CONCEPT_HEIGHT, CONCEPT_TEMPERATURE = 5089, 5090, 5088
CONCEPT_SYSTOLIC, CONCEPT_DIASTOLIC, CONCEPT_PULSE = 5085, 5086, 5087
CONCEPT_CD4, CONCEPT_VIRAL_LOAD = 5497, 856
CONCEPT_HIV_TEST, CONCEPT_POSITIVE, CONCEPT_NEGATIVE, CONCEPT_INDETERMINATE = 1040, 703, 664, 1138
CONCEPT_CIVIL_STATUS, CONCEPT_NEVER_MARRIED, CONCEPT_MARRIED, CONCEPT_DIVORCED, CONCEPT_WIDOWED = 1054, 1057, 5555, 1058, 1059
CONCEPT_CLINICAL_NOTES = 160632
CONCEPT_RETURN_VISIT = 5096
CONCEPT_VITALS = 1114
CONCEPT_HYPERTENSION, CONCEPT_DIABETES, CONCEPT_MALARIA, CONCEPT_TB, CONCEPT_HIV_DISEASE = 117399, 119481, 116128, 112141, 138405
CONCEPT_PENICILLIN, CONCEPT_PEANUTS, CONCEPT_DUST = 81724, 162544, 162538
CONCEPT_MILD, CONCEPT_MODERATE, CONCEPT_SEVERE = 1498, 1499, 1500
CONCEPT_PARACETAMOL, CONCEPT_AMOXICILLIN, CONCEPT_EFAVIRENZ = 70116, 71160, 75523
CONCEPT_MG, CONCEPT_ORAL, CONCEPT_DAYS, CONCEPT_TABLET = 161553, 160240, 1072, 1513
CONCEPT_ONCE_DAILY, CONCEPT_TWICE_DAILY = 160862, 160858
CONCEPT_FULL_BLOOD_COUNT, CONCEPT_BLOOD = 1019, 1000
CONCEPT_HIV_PROGRAM, CONCEPT_HIV_STATUS, CONCEPT_PRE_ART, CONCEPT_ON_ART, CONCEPT_TRANSFERRED_OUT = 1482, 1483, 1486, 1487, 1488
CONCEPT_TB_PROGRAM, CONCEPT_TB_STATUS, CONCEPT_INTENSIVE, CONCEPT_CONTINUATION, CONCEPT_TB_COMPLETED = 1484, 1485, 1489, 1490, 1491
CONCEPT_DIED, CONCEPT_COMPLETED = 160034, 1267

# (concept_id, English name, datatype, class, is_set)
CONCEPTS: list[tuple[int, str, int, int, int]] = [
    (CONCEPT_WEIGHT, "Weight (kg)", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_HEIGHT, "Height (cm)", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_TEMPERATURE, "Temperature (C)", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_SYSTOLIC, "Systolic blood pressure", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_DIASTOLIC, "Diastolic blood pressure", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_PULSE, "Pulse", DT_NUMERIC, CL_FINDING, 0),
    (CONCEPT_CD4, "CD4 count", DT_NUMERIC, CL_TEST, 0),
    (CONCEPT_VIRAL_LOAD, "HIV viral load", DT_NUMERIC, CL_TEST, 0),
    (CONCEPT_HIV_TEST, "HIV test result", DT_CODED, CL_TEST, 0),
    (CONCEPT_POSITIVE, "Positive", DT_NA, CL_MISC, 0),
    (CONCEPT_NEGATIVE, "Negative", DT_NA, CL_MISC, 0),
    (CONCEPT_INDETERMINATE, "Indeterminate", DT_NA, CL_MISC, 0),
    (CONCEPT_CIVIL_STATUS, "Civil status", DT_CODED, CL_QUESTION, 0),
    (CONCEPT_NEVER_MARRIED, "Never married", DT_NA, CL_MISC, 0),
    (CONCEPT_MARRIED, "Married", DT_NA, CL_MISC, 0),
    (CONCEPT_DIVORCED, "Divorced", DT_NA, CL_MISC, 0),
    (CONCEPT_WIDOWED, "Widowed", DT_NA, CL_MISC, 0),
    (CONCEPT_CLINICAL_NOTES, "Clinical notes", DT_TEXT, CL_QUESTION, 0),
    (CONCEPT_RETURN_VISIT, "Return visit date", DT_DATETIME, CL_QUESTION, 0),
    (CONCEPT_VITALS, "Vital signs", DT_NA, CL_CONVSET, 1),
    (CONCEPT_HYPERTENSION, "Hypertension", DT_NA, CL_DIAGNOSIS, 0),
    (CONCEPT_DIABETES, "Diabetes mellitus", DT_NA, CL_DIAGNOSIS, 0),
    (CONCEPT_MALARIA, "Malaria", DT_NA, CL_DIAGNOSIS, 0),
    (CONCEPT_TB, "Tuberculosis", DT_NA, CL_DIAGNOSIS, 0),
    (CONCEPT_HIV_DISEASE, "HIV disease", DT_NA, CL_DIAGNOSIS, 0),
    (CONCEPT_PENICILLIN, "Penicillins", DT_NA, CL_DRUG, 0),
    (CONCEPT_PEANUTS, "Peanuts", DT_NA, CL_MISC, 0),
    (CONCEPT_DUST, "Dust", DT_NA, CL_MISC, 0),
    (CONCEPT_MILD, "Mild", DT_NA, CL_MISC, 0),
    (CONCEPT_MODERATE, "Moderate", DT_NA, CL_MISC, 0),
    (CONCEPT_SEVERE, "Severe", DT_NA, CL_MISC, 0),
    (CONCEPT_PARACETAMOL, "Paracetamol", DT_NA, CL_DRUG, 0),
    (CONCEPT_AMOXICILLIN, "Amoxicillin", DT_NA, CL_DRUG, 0),
    (CONCEPT_EFAVIRENZ, "Efavirenz", DT_NA, CL_DRUG, 0),
    (CONCEPT_MG, "Milligram", DT_NA, CL_MISC, 0),
    (CONCEPT_ORAL, "Oral", DT_NA, CL_MISC, 0),
    (CONCEPT_DAYS, "Days", DT_NA, CL_MISC, 0),
    (CONCEPT_TABLET, "Tablet", DT_NA, CL_MISC, 0),
    (CONCEPT_ONCE_DAILY, "Once daily", DT_NA, CL_FREQUENCY, 0),
    (CONCEPT_TWICE_DAILY, "Twice daily", DT_NA, CL_FREQUENCY, 0),
    (CONCEPT_FULL_BLOOD_COUNT, "Full blood count", DT_NA, CL_LABSET, 0),
    (CONCEPT_BLOOD, "Whole blood", DT_NA, CL_SPECIMEN, 0),
    (CONCEPT_HIV_PROGRAM, "HIV care and treatment program", DT_NA, CL_PROGRAM, 0),
    (CONCEPT_HIV_STATUS, "HIV treatment status", DT_NA, CL_MISC, 0),
    (CONCEPT_PRE_ART, "Pre-ART", DT_NA, CL_MISC, 0),
    (CONCEPT_ON_ART, "On ART", DT_NA, CL_MISC, 0),
    (CONCEPT_TRANSFERRED_OUT, "Transferred out", DT_NA, CL_MISC, 0),
    (CONCEPT_TB_PROGRAM, "Tuberculosis treatment program", DT_NA, CL_PROGRAM, 0),
    (CONCEPT_TB_STATUS, "TB treatment status", DT_NA, CL_MISC, 0),
    (CONCEPT_INTENSIVE, "Intensive phase", DT_NA, CL_MISC, 0),
    (CONCEPT_CONTINUATION, "Continuation phase", DT_NA, CL_MISC, 0),
    (CONCEPT_TB_COMPLETED, "Treatment completed", DT_NA, CL_MISC, 0),
    (CONCEPT_DIED, "Died", DT_NA, CL_MISC, 0),
    (CONCEPT_COMPLETED, "Completed", DT_NA, CL_MISC, 0),
]
# concept_id -> (units, low_absolute, hi_absolute, allow_decimal)
NUMERIC: dict[int, tuple[str, float, float, int]] = {
    CONCEPT_WEIGHT: ("kg", 0.0, 250.0, 1),
    CONCEPT_HEIGHT: ("cm", 10.0, 228.0, 1),
    CONCEPT_TEMPERATURE: ("DEG C", 25.0, 43.0, 1),
    CONCEPT_SYSTOLIC: ("mmHg", 0.0, 250.0, 0),
    CONCEPT_DIASTOLIC: ("mmHg", 0.0, 150.0, 0),
    CONCEPT_PULSE: ("beats/min", 0.0, 230.0, 0),
    CONCEPT_CD4: ("cells/uL", 0.0, 5000.0, 0),
    CONCEPT_VIRAL_LOAD: ("copies/mL", 0.0, 10000000.0, 0),
}
ANSWERS: dict[int, list[int]] = {
    CONCEPT_HIV_TEST: [CONCEPT_POSITIVE, CONCEPT_NEGATIVE, CONCEPT_INDETERMINATE],
    CONCEPT_CIVIL_STATUS: [CONCEPT_NEVER_MARRIED, CONCEPT_MARRIED, CONCEPT_DIVORCED, CONCEPT_WIDOWED],
}
SET_MEMBERS: dict[int, list[int]] = {
    CONCEPT_VITALS: [CONCEPT_WEIGHT, CONCEPT_HEIGHT, CONCEPT_TEMPERATURE, CONCEPT_SYSTOLIC, CONCEPT_DIASTOLIC, CONCEPT_PULSE],
}
DIAGNOSES = [CONCEPT_HYPERTENSION, CONCEPT_DIABETES, CONCEPT_MALARIA, CONCEPT_TB, CONCEPT_HIV_DISEASE]
ALLERGENS = [(CONCEPT_PENICILLIN, "DRUG"), (CONCEPT_PEANUTS, "FOOD"), (CONCEPT_DUST, "ENVIRONMENT")]
SEVERITIES = [CONCEPT_MILD, CONCEPT_MODERATE, CONCEPT_SEVERE]

# --- other metadata (ids fixed; rows below) -------------------------------------------------------------------
LOCATION_UNKNOWN, LOCATION_SITE1, LOCATION_SITE2, LOCATION_CENTRAL = 1, 2, 3, 4
SITE_LOCATIONS = {"site1": LOCATION_SITE1, "site2": LOCATION_SITE2, "central": LOCATION_CENTRAL}
ENC_ADULT_INITIAL, ENC_ADULT_RETURN, ENC_LAB_RESULTS, ENC_VITALS = 1, 2, 3, 4
VISIT_OUTPATIENT, VISIT_INPATIENT = 1, 2
VISIT_ATTR_PAYMENT = 1
ID_TYPE_OPENMRS_LEGACY, ID_TYPE_OPENMRS_ID, ID_TYPE_NATIONAL_ID = 1, 3, 4
ATTR_CIVIL_STATUS, ATTR_HEALTH_CENTER, ATTR_TELEPHONE = 5, 7, 8  # org.openmrs.Concept, org.openmrs.Location, String
ATTR_FORMATS = {ATTR_CIVIL_STATUS: "org.openmrs.Concept", ATTR_HEALTH_CENTER: "org.openmrs.Location", ATTR_TELEPHONE: "java.lang.String"}
ROLE_UNKNOWN, ROLE_CLINICIAN = 1, 2
CARE_OUTPATIENT, CARE_INPATIENT = 1, 2
ORDER_TYPE_DRUG, ORDER_TYPE_TEST = 2, 3
PROGRAM_HIV, PROGRAM_TB = 1, 2
WORKFLOW_HIV, WORKFLOW_TB = 1, 2
STATE_PRE_ART, STATE_ON_ART, STATE_TRANSFERRED_OUT, STATE_INTENSIVE, STATE_CONTINUATION, STATE_TB_COMPLETED = 1, 2, 3, 4, 5, 6
PROGRAM_STATES = {PROGRAM_HIV: [STATE_PRE_ART, STATE_ON_ART, STATE_TRANSFERRED_OUT],
                  PROGRAM_TB: [STATE_INTENSIVE, STATE_CONTINUATION, STATE_TB_COMPLETED]}
DRUG_PARACETAMOL, DRUG_AMOXICILLIN, DRUG_EFAVIRENZ = 1, 2, 3
DRUG_CONCEPTS = {DRUG_PARACETAMOL: CONCEPT_PARACETAMOL, DRUG_AMOXICILLIN: CONCEPT_AMOXICILLIN, DRUG_EFAVIRENZ: CONCEPT_EFAVIRENZ}
FREQ_ONCE_DAILY, FREQ_TWICE_DAILY = 1, 2
TEST_CONCEPTS = [CONCEPT_CD4, CONCEPT_VIRAL_LOAD, CONCEPT_FULL_BLOOD_COUNT]
RELATIONSHIP_TYPES = [1, 2, 3, 4]  # core: Doctor/Patient, Sibling, Parent/Child, Aunt/Uncle


def concept_uuid(concept_id: int) -> str:
    """CIEL-style uuid: the id padded with 'A' to 36 characters."""
    s = str(concept_id)
    return s + "A" * (36 - len(s))


def derived_uuid(kind: str, *key: object) -> str:
    """Fixed uuid for a row derived from others (concept names, answers, set members)."""
    return str(uuid.uuid5(_NS, ":".join([kind, *map(str, key)])))


C, D = ADMIN_USER_ID, DATE_CREATED
# table -> (columns, rows); every table has a uuid column, listed last.
_ROWS: dict[str, tuple[list[str], list[tuple]]] = {
    "location": (["location_id", "name", "description", "city_village", "country", "creator", "date_created", "retired", "uuid"], [
        (LOCATION_SITE1, "Site 1 Clinic", "Rural clinic (dbsync site1)", "Kisumu", "Kenya", C, D, 0, "c4bf5ea3-e68b-4473-99c2-243cf4e68036"),
        (LOCATION_SITE2, "Site 2 Clinic", "Urban clinic (dbsync site2)", "Nairobi", "Kenya", C, D, 0, "4d285596-d622-4394-be38-b0c45c9190b8"),
        (LOCATION_CENTRAL, "Central Hospital", "Referral hospital (dbsync central)", "Nairobi", "Kenya", C, D, 0, "8b8b78f8-ab62-45aa-8aa1-522bc10067f3"),
    ]),
    "encounter_type": (["encounter_type_id", "name", "description", "creator", "date_created", "retired", "uuid"], [
        (ENC_ADULT_INITIAL, "Adult Initial", "First visit of an adult", C, D, 0, "8d5b27bc-c2cc-11de-8d13-0010c6dffd0f"),
        (ENC_ADULT_RETURN, "Adult Return", "Follow-up visit of an adult", C, D, 0, "8d5b2be0-c2cc-11de-8d13-0010c6dffd0f"),
        (ENC_LAB_RESULTS, "Lab Results", "Results of laboratory tests", C, D, 0, "4b859b23-1d5d-4000-a2c3-9aa422ea7ce3"),
        (ENC_VITALS, "Vitals", "Vital signs taken at triage", C, D, 0, "67a71486-1a54-468f-ac3e-7091a9a79584"),
    ]),
    "visit_type": (["visit_type_id", "name", "description", "creator", "date_created", "retired", "uuid"], [
        (VISIT_OUTPATIENT, "Outpatient", "Outpatient visit", C, D, 0, "7dedf248-aff8-4f3b-8f7f-daaadedc8768"),
        (VISIT_INPATIENT, "Facility Visit", "Inpatient stay", C, D, 0, "7b0f5697-27e3-40c4-8bae-f4049abfb4ed"),
    ]),
    "visit_attribute_type": (["visit_attribute_type_id", "name", "description", "datatype", "min_occurs", "max_occurs", "creator", "date_created", "retired", "uuid"], [
        (VISIT_ATTR_PAYMENT, "Payment method", "How the visit was paid",
         "org.openmrs.customdatatype.datatype.FreeTextDatatype", 0, 1, C, D, 0, "7c5a721b-3716-4a28-a71d-c49cbaae6dc9"),
    ]),
    "patient_identifier_type": (["patient_identifier_type_id", "name", "description", "check_digit", "required", "location_behavior", "uniqueness_behavior", "creator", "date_created", "retired", "uuid"], [
        (ID_TYPE_OPENMRS_ID, "OpenMRS ID", "Identifier issued by the site", 0, 0, "NOT_USED", "UNIQUE", C, D, 0, "05a29f94-c0ed-11e2-94be-8c13b969e334"),
        (ID_TYPE_NATIONAL_ID, "National ID", "National identity card number", 0, 0, "NOT_USED", "UNIQUE", C, D, 0, "a8021e27-10eb-45dd-acd3-64e647069ebd"),
    ]),
    "person_attribute_type": (["person_attribute_type_id", "name", "description", "format", "searchable", "creator", "date_created", "retired", "sort_weight", "uuid"], [
        (ATTR_TELEPHONE, "Telephone Number", "The telephone number of the person", "java.lang.String", 1, C, D, 0, 8, "14d4f066-15f5-102d-96e4-000c29c2a5d7"),
    ]),
    "encounter_role": (["encounter_role_id", "name", "description", "creator", "date_created", "retired", "uuid"], [
        (ROLE_CLINICIAN, "Clinician", "Clinician who saw the patient", C, D, 0, "240b26f9-dd88-4172-823d-4a8bfeb7841f"),
    ]),
    "program": (["program_id", "concept_id", "outcomes_concept_id", "creator", "date_created", "retired", "name", "description", "uuid"], [
        (PROGRAM_HIV, CONCEPT_HIV_PROGRAM, None, C, D, 0, "HIV Program", "HIV care and treatment", "b1ae94ee-827a-4d60-b400-3e860f3cfaf0"),
        (PROGRAM_TB, CONCEPT_TB_PROGRAM, None, C, D, 0, "TB Program", "Tuberculosis treatment", "94cf123c-1c64-4ae2-aa34-484f91a65283"),
    ]),
    "program_workflow": (["program_workflow_id", "program_id", "concept_id", "creator", "date_created", "retired", "uuid"], [
        (WORKFLOW_HIV, PROGRAM_HIV, CONCEPT_HIV_STATUS, C, D, 0, "642a600d-b150-4c07-849f-609617f97f8a"),
        (WORKFLOW_TB, PROGRAM_TB, CONCEPT_TB_STATUS, C, D, 0, "c22f59c3-6bf7-421b-b64d-4b7ab5abe7f8"),
    ]),
    "program_workflow_state": (["program_workflow_state_id", "program_workflow_id", "concept_id", "initial", "terminal", "creator", "date_created", "retired", "uuid"], [
        (STATE_PRE_ART, WORKFLOW_HIV, CONCEPT_PRE_ART, 1, 0, C, D, 0, "fad7ed55-4db7-4bf3-92b7-69b3b477185d"),
        (STATE_ON_ART, WORKFLOW_HIV, CONCEPT_ON_ART, 0, 0, C, D, 0, "af3a8397-447f-49c6-91bc-e19cb90e4493"),
        (STATE_TRANSFERRED_OUT, WORKFLOW_HIV, CONCEPT_TRANSFERRED_OUT, 0, 1, C, D, 0, "87e26b00-dddc-4807-bbba-b917223cd3b4"),
        (STATE_INTENSIVE, WORKFLOW_TB, CONCEPT_INTENSIVE, 1, 0, C, D, 0, "f6541688-bc2c-4d57-ba04-daf38a63f808"),
        (STATE_CONTINUATION, WORKFLOW_TB, CONCEPT_CONTINUATION, 0, 0, C, D, 0, "62e452d7-163e-43ef-b764-0a3bc51eb335"),
        (STATE_TB_COMPLETED, WORKFLOW_TB, CONCEPT_TB_COMPLETED, 0, 1, C, D, 0, "cae2eee6-5941-4ec7-91e5-a3f9a5b449f4"),
    ]),
    "drug": (["drug_id", "concept_id", "name", "combination", "dosage_form", "route", "strength", "creator", "date_created", "retired", "uuid"], [
        (DRUG_PARACETAMOL, CONCEPT_PARACETAMOL, "Paracetamol 500mg tablet", 0, CONCEPT_TABLET, CONCEPT_ORAL, "500mg", C, D, 0, "d1ef0fc4-8345-4712-8852-378cd7f633f2"),
        (DRUG_AMOXICILLIN, CONCEPT_AMOXICILLIN, "Amoxicillin 250mg tablet", 0, CONCEPT_TABLET, CONCEPT_ORAL, "250mg", C, D, 0, "10b66dd0-a69f-403d-b511-91d9b8c41c79"),
        (DRUG_EFAVIRENZ, CONCEPT_EFAVIRENZ, "Efavirenz 600mg tablet", 0, CONCEPT_TABLET, CONCEPT_ORAL, "600mg", C, D, 0, "0d2633f0-86d6-4f4b-bed0-909b5828d969"),
    ]),
    "order_frequency": (["order_frequency_id", "concept_id", "frequency_per_day", "creator", "date_created", "retired", "uuid"], [
        (FREQ_ONCE_DAILY, CONCEPT_ONCE_DAILY, 1.0, C, D, 0, "98a6151c-45cc-4c5d-bdf7-b52569749ba9"),
        (FREQ_TWICE_DAILY, CONCEPT_TWICE_DAILY, 2.0, C, D, 0, "a82af87a-37b4-48d7-9227-ebf88d3618fc"),
    ]),
}

# uuids of the core rows of the 2.5 dump that the generator references.
_CORE_UUIDS: dict[str, dict[int, str]] = {
    "users": {1: ADMIN_USER_UUID},
    "person": {1: ADMIN_PERSON_UUID},
    "location": {LOCATION_UNKNOWN: "8d6c993e-c2cc-11de-8d13-0010c6dffd0f"},
    "patient_identifier_type": {ID_TYPE_OPENMRS_LEGACY: "8d793bee-c2cc-11de-8d13-0010c6dffd0f"},
    "person_attribute_type": {ATTR_CIVIL_STATUS: "8d871f2a-c2cc-11de-8d13-0010c6dffd0f",
                              ATTR_HEALTH_CENTER: "8d87236c-c2cc-11de-8d13-0010c6dffd0f"},
    "encounter_role": {ROLE_UNKNOWN: "a0b03050-c99b-11e0-9572-0800200c9a66"},
    "care_setting": {CARE_OUTPATIENT: "6f0c9a92-6f24-11e3-af88-005056821db0",
                     CARE_INPATIENT: "c365e560-c3ec-11e3-9c1a-0800200c9a66"},
    "order_type": {ORDER_TYPE_DRUG: "131168f4-15f5-102d-96e4-000c29c2a5d7",
                   ORDER_TYPE_TEST: "52a447d3-a64a-11e3-9aeb-50e549534c5e"},
    "relationship_type": {1: "8d919b58-c2cc-11de-8d13-0010c6dffd0f", 2: "8d91a01c-c2cc-11de-8d13-0010c6dffd0f",
                          3: "8d91a210-c2cc-11de-8d13-0010c6dffd0f", 4: "8d91a3dc-c2cc-11de-8d13-0010c6dffd0f"},
}


def _concept_rows() -> dict[str, tuple[list[str], list[tuple]]]:
    ids = [c[0] for c in CONCEPTS]
    assert len(ids) == len(set(ids)), "duplicate concept id"
    concept = [(cid, 0, "", datatype, cls, is_set, C, D, concept_uuid(cid)) for cid, _n, datatype, cls, is_set in CONCEPTS]
    names = []
    for i, (cid, name, *_rest) in enumerate(CONCEPTS):
        names.append((1000 + i, cid, name, "en", 1, "FULLY_SPECIFIED", C, D, 0, derived_uuid("concept_name", cid, "en")))
    numeric = [(cid, lo, hi, units, allow, 1) for cid, (units, lo, hi, allow) in NUMERIC.items()]
    answers: list[tuple[Any, ...]] = []
    for q, ans in ANSWERS.items():
        for w, a in enumerate(ans, 1):
            answers.append((len(answers) + 1, q, a, C, D, float(w), derived_uuid("concept_answer", q, a)))
    members: list[tuple[Any, ...]] = []
    for s, mem in SET_MEMBERS.items():
        for w, m in enumerate(mem, 1):
            members.append((len(members) + 1, m, s, float(w), C, D, derived_uuid("concept_set", s, m)))
    return {
        "concept": (["concept_id", "retired", "short_name", "datatype_id", "class_id", "is_set", "creator", "date_created", "uuid"], concept),
        "concept_name": (["concept_name_id", "concept_id", "name", "locale", "locale_preferred", "concept_name_type", "creator", "date_created", "voided", "uuid"], names),
        "concept_numeric": (["concept_id", "low_absolute", "hi_absolute", "units", "allow_decimal", "display_precision"], numeric),
        "concept_answer": (["concept_answer_id", "concept_id", "answer_concept", "creator", "date_created", "sort_weight", "uuid"], answers),
        "concept_set": (["concept_set_id", "concept_id", "concept_set", "sort_weight", "creator", "date_created", "uuid"], members),
    }


def metadata_tables() -> dict[str, tuple[list[str], list[tuple]]]:
    """All metadata rows in insertion order (concepts first: the other rows reference them)."""
    return {**_concept_rows(), **_ROWS}


def _build_uuids() -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {t: dict(m) for t, m in _CORE_UUIDS.items()}
    for table, (cols, rows) in metadata_tables().items():
        if cols[-1] != "uuid":
            continue
        out.setdefault(table, {}).update({r[0]: r[-1] for r in rows})
    return out


UUIDS: dict[str, dict[int, str]] = _build_uuids()
"""table -> metadata id -> uuid, for every metadata row the generator may reference."""


def _sql_values(rows: Iterable[tuple]) -> str:
    return ",\n".join("(" + ",".join(escape_item(v, "utf8mb4") for v in r) + ")" for r in rows)


def metadata_sql() -> str:
    """The metadata fixture as SQL (INSERTs only, run after the 2.5 schema dump)."""
    out = ["-- dbsync test metadata for the OpenMRS 2.5 schema. Generated by: python3 -m devtools.workload metadata-sql",
           "-- Same ids and uuids in every database (sites and central). Do not edit by hand.",
           "SET NAMES utf8mb4;", ""]
    for table, (cols, rows) in metadata_tables().items():
        col_list = ",".join(f"`{c}`" for c in cols)
        out.append(f"INSERT INTO `{table}` ({col_list}) VALUES\n{_sql_values(rows)};")
    return "\n".join(out) + "\n"
