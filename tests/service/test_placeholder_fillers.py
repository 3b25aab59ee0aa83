"""Placeholder fillers: a placeholder whose required reference points into a table that is empty at central gets a
"filler" row there (a random uuid no site has). Once the placeholder is overwritten by its real row nothing refers
to the filler any more, and the receiver's cleanup step must remove it: central ends with no row that no site (or
central user) wrote (the soak oracle's rule)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central, make_site

from devtools.workload.generator import generate


@pytest.fixture
def central(openmrs_db, tmp_path, broker_settings):
    c = make_central(openmrs_db, tmp_path, broker_settings)
    yield c
    drop_schema(c)


@pytest.fixture
def site(openmrs_db, services, tmp_path, broker_settings):
    return make_site(openmrs_db, services, tmp_path, broker_settings)


def _uuids(value: Any, found: set[str]) -> None:
    """Every uuid a message carries: its own and those of its references."""
    if isinstance(value, dict):
        if isinstance(value.get("uuid"), str):
            found.add(value["uuid"].lower())
        for item in value.values():
            _uuids(item, found)
    elif isinstance(value, list):
        for item in value:
            _uuids(item, found)


def uuid_tables(central) -> list[str]:
    return [r[0] for r in central.sql(
        "SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME = 'uuid' "
        "AND TABLE_NAME IN (SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_TYPE = 'BASE TABLE') ORDER BY TABLE_NAME")]


def central_uuids(central) -> dict[str, set[str]]:
    return {table: {str(r[0]).lower() for r in central.sql(f"SELECT uuid FROM `{table}`")}
            for table in uuid_tables(central)}


def unwritten_rows(central, before: dict[str, set[str]], carried: set[str]) -> dict[str, list[str]]:
    """Rows at central now whose uuid central did not have before and no message carried."""
    found: dict[str, list[str]] = {}
    for table, uuids in central_uuids(central).items():
        extra = sorted(u for u in uuids - before.get(table, set()) - carried)
        if extra:
            found[table] = extra
    return found


def run_receiver(central, seconds: float = 3) -> None:
    """The receiver's apply loop (retry pass and its cleanup step included) until idle."""
    dbsync("receiver", "--config", str(central.config), "--idle-exit", str(seconds), env=central.env, timeout=120)


def fillers(central) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in central.sql(f"SELECT table_name, uuid FROM `{central.schema}`.receiver_filler")]


def status_fillers(central) -> Any:
    run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
    report = orjson.loads(run.stdout)
    assert not [p for p in report["problems"] if p["check"] == "fillers"]  # normal while references wait
    return report["fillers"]


def test_fillers_are_removed_once_nothing_references_them(central, site) -> None:
    before = central_uuids(central)
    generate(site.admin, seed=11, patients=6, mutations=0.0)
    messages = site.messages()
    carried: set[str] = set()
    for message in messages:
        carried.add(str(message["uuid"]).lower())
        _uuids(message.get("data"), carried)
    # children first: the referenced rows arrive late and become placeholders; those needing a row of a table
    # that is empty at central (patient, provider) get fillers
    backwards = list(reversed(messages))
    half = len(backwards) // 2
    results = central.apply(backwards[:half])
    assert set(Counter(r["outcome"] for r in results)) <= {"applied"}, central.last_stderr[-2000:]
    made = fillers(central)
    assert made and {table for table, _uuid in made} <= set(uuid_tables(central)) | {"patient"}, made
    for table, uuid in made:
        row = central.sql(f"SELECT * FROM `{'person' if table == 'patient' else table}` WHERE uuid = %s", (uuid,))
        assert row and "[placeholder filler]" in row[0], (table, row)
    # the fillers are exactly the rows no message carried
    assert {u for uuids in unwritten_rows(central, before, carried).values() for u in uuids} == {u for _t, u in made}
    assert status_fillers(central) == len(made)
    # the placeholders that need them are still waiting: the cleanup step keeps every filler
    run_receiver(central)
    assert fillers(central) == made
    # the real rows arrive and overwrite the placeholders: the fillers are referenced by nothing, and removed
    results = central.apply(backwards[half:])
    assert set(Counter(r["outcome"] for r in results)) <= {"applied"}, central.last_stderr[-2000:]
    assert central.sql("SELECT COUNT(*) FROM encounter WHERE void_reason = '[placeholder]'") == [(0,)]
    run_receiver(central)
    left = unwritten_rows(central, before, carried)
    assert left == {}, {t: central.sql(f"SELECT * FROM `{t}` WHERE uuid IN ({','.join(['%s'] * len(u))})", tuple(u))
                        for t, u in left.items()}
    assert fillers(central) == [] and status_fillers(central) == 0
