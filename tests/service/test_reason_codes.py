"""A parked message's reason is stored as a code with its arguments (state migration 15) and read in the reader's
language: `dbsync --lang pt conflicts list` / `retry list` in Portuguese, `--json` in English; a row parked
before the migration (no code) shows its stored text."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import new_person

from dbsync_cli.receiver import state

pytestmark = pytest.mark.lane2


def test_conflict_and_retry_reasons_are_stored_as_codes_and_shown_in_both_languages(
        openmrs_db, services, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
        _person, name = new_person(site1, "Ann")
        new_person(site2, "Bea")
        central.apply(site1.messages())
        central.apply(site2.messages())
        central.sql("UPDATE person_name SET given_name = 'Central Ann', date_changed = %s WHERE uuid = %s",
                    (dt.datetime(2030, 1, 1), name))
        site1.sql("UPDATE person_name SET family_name = 'Site', date_changed = '2024-06-01 10:00:00' "
                  "WHERE uuid = %s", (name,))
        central.apply(site1.messages())  # parked: central's edit is newer
        with central.db.connect(autocommit=False) as conn:
            state.set_disabled(conn, central.schema, "site2", True)
            conn.commit()
        new_person(site2, "Cid")
        central.apply(site2.messages())  # site2 is disabled: retry entries
        s = central.schema
        ((code, args, text),) = central.sql(f"SELECT reason_code, reason_args, reason FROM `{s}`.receiver_conflict_queue")
        assert code == "edited_after" and text.startswith("row edited centrally at 2030-01-01")
        assert set(orjson.loads(args)) == {"central", "incoming"}
        codes = {row[0] for row in central.sql(f"SELECT reason_code FROM `{s}`.receiver_retry_queue")}
        assert codes == {"site_unknown"}

        def run(*argv: str) -> str:
            return dbsync(*argv, "--config", str(central.config), env={**central.env, "COLUMNS": "400"}).stdout.decode()

        assert "linha editada no central em 2030-01-01" in run("--lang", "pt", "conflicts", "list")
        assert "row edited centrally at 2030-01-01" in run("conflicts", "list")
        listed = orjson.loads(run("--lang", "pt", "conflicts", "list", "--json"))  # JSON is for programs: English
        assert listed[0]["reason"].startswith("row edited centrally at 2030-01-01")
        assert "'site2' está desativado" in run("--lang", "pt", "retry", "list")
        assert "'site2' is disabled" in run("retry", "list")
        # a conflict parked before migration 15: its text as stored, in either language
        central.sql(f"UPDATE `{s}`.receiver_conflict_queue SET reason_code = NULL, reason_args = NULL, "
                    "reason = 'an old reason text'")
        assert "an old reason text" in run("--lang", "pt", "conflicts", "list")
    finally:
        drop_schema(central)
