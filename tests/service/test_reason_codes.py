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


def test_every_kind_of_parked_fault_stores_a_code_and_lists_without_english_in_portuguese(
        openmrs_db, services, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        new_person(site1, "Ann")
        valid = next(m for m in site1.messages() if m["table"] == "person_name")
        s = central.schema
        central.sql(f"UPDATE `{s}`.site_info SET broker_user = 'site1-sender' WHERE identifier = 'site1'")

        def variant(number: int, **changes: object) -> dict[str, object]:
            return {**valid, "id": f"{valid['id']}-fault{number}", **changes}

        def inbox(number: int, body: bytes | dict[str, object], site: str = "site1",
                  user: str = "site1-sender") -> dict[str, object]:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            return {"inbox": 900000 + number, "message_id": f"fault-inbox-{number}", "site": site,
                    "body": raw.decode(), "broker_user": user}

        faults: list[dict[str, object]] = [
            inbox(1, b'{"v": 1, "id": '),  # malformed JSON
            variant(2, uuid=None),  # missing field
            variant(3, table="no_such_table"),
            variant(4, uuid="x" * 50),  # over the 38 characters of a uuid column
            variant(5, source={**valid["source"], "pos": -5}),
            variant(6, data={**valid["data"], "no_such_column": 1}),
            variant(7, data={**valid["data"], "date_created": "yesterday"}),
            variant(8, site="site9"),  # not registered
            inbox(9, {"v": 2, "site": "site1", "messages": [valid]}),  # an envelope without its id
            inbox(10, variant(10), site="site2"),  # the transport's site header names another site
            inbox(11, variant(11), user="mallory"),  # sent by another broker user
        ]
        central.apply(faults)
        rows = central.sql(f"SELECT reason_code, reason_args, reason FROM `{s}`.receiver_retry_queue")
        codes = {row[0] for row in rows}
        assert len(rows) == len(faults) and None not in codes, (central.last_stderr, rows)
        assert codes == {"malformed_json", "missing_field", "unknown_table", "invalid_uuid", "source_integer",
                         "unknown_column", "invalid_datetime", "site_unknown", "envelope_id", "header_site",
                         "sender_mismatch"}, codes
        assert all(text for _code, _args, text in rows)  # the English text stays stored beside the code

        def listed(*argv: str) -> str:
            return dbsync(*argv, "retry", "list", "--config", str(central.config),
                          env={**central.env, "COLUMNS": "400", "LANG": "C.UTF-8"}).stdout.decode()

        english, portuguese = listed(), listed("--lang", "pt")
        flat = " ".join(english.split())
        assert all(" ".join(text.split()) in flat for _code, _args, text in rows)  # the check below can fail
        flat_pt = " ".join(portuguese.split())
        left = [text for _code, _args, text in rows if " ".join(text.split()) in flat_pt]
        assert not left, f"English reasons in `retry list --lang pt`: {left}"
        for phrase in ("JSON mal formado", "em falta ou inválido", "tabela desconhecida", "uuid inválido",
                       "não é um inteiro", "coluna desconhecida", "data e hora inválida", "não está registado",
                       "envelope: 'id' em falta", "enviada com dbsync-site", "enviada pelo utilizador do broker"):
            assert phrase in flat_pt, phrase
    finally:
        drop_schema(central)
