"""The OpenMRS sync model derived from the real OpenMRS 2.5 schema loaded into MariaDB."""

import subprocess
import sys

import orjson
import pytest

from dbsync_cli.openmrs import DEFAULT_SYNCED_TABLES, SchemaError, SchemaModel, synced_table_names


@pytest.fixture
def site(openmrs_db):
    return openmrs_db("site1", metadata=False)


def load(params, synced=None) -> SchemaModel:
    with params.connect() as conn:
        return SchemaModel.load(conn, params.database, synced)


def test_all_28_synced_tables_with_identity_and_references(site) -> None:
    model = load(site)
    assert len(model.tables) == 128
    assert sum(len(t.foreign_keys) for t in model.tables.values()) >= 470
    assert list(model.synced) == list(DEFAULT_SYNCED_TABLES) and len(model.synced) == 28
    obs = model.table("obs")
    assert obs.identity.table == "obs" and obs.key == "obs_id"
    refs = {c: r.table for c, r in obs.references.items()}
    assert refs["person_id"] == "person"
    assert refs["concept_id"] == "concept"
    assert refs["encounter_id"] == "encounter"
    assert refs["obs_group_id"] == "obs"
    assert refs["value_coded"] == "concept"
    assert obs.references["creator"].identity.table == "users"
    patient = model.table("patient")
    assert patient.is_subclass and patient.identity.table == "person" and patient.key == "patient_id"
    for sub in ("drug_order", "test_order", "referral_order"):
        assert model.table(sub).identity.table == "orders"
    # a reference to a subclass table resolves to the parent's uuid
    assert model.table("encounter").references["patient_id"].identity.table == "person"
    assert "obs_id" not in obs.data_columns and "uuid" not in obs.data_columns
    # references the 2.5 schema forgot to declare are still converted (a local id must never cross the wire)
    assert model.table("person_name").references["changed_by"].table == "users"
    assert model.table("orders").references["concept_id"].table == "concept"


def test_openmrs_rules(site) -> None:
    model = load(site)
    users = model.table("users")
    assert {"password", "salt", "secret_question", "secret_answer"} <= set(users.secret_columns)
    assert not {"password", "salt"} & set(users.data_columns)
    assert users.site_suffix_columns == ("username", "system_id")
    assert model.table("provider").site_suffix_columns == ("identifier",)
    assert model.table("person_attribute").describe()["attribute_id_value"] is True
    # the 2.5 schema indexes uuid uniquely on 22 of the 24 own-uuid tables; allergy and users have no index
    own = [t for t in model.synced.values() if not t.is_subclass]
    assert len(own) == 24
    assert sorted(t.name for t in own if not t.uuid_indexed) == ["allergy", "users"]


def test_module_table_added_at_runtime_is_picked_up_when_configured(site) -> None:
    with site.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE lab_result (lab_result_id INT AUTO_INCREMENT PRIMARY KEY, obs_id INT NOT NULL, "
            "result_text VARCHAR(255), uuid CHAR(38) NOT NULL UNIQUE, "
            "CONSTRAINT lab_result_obs FOREIGN KEY (obs_id) REFERENCES obs (obs_id))"
        )
    assert "lab_result" not in load(site).synced
    model = load(site, synced_table_names(None, ["lab_result"]))
    table = model.table("lab_result")
    assert table.identity.table == "lab_result" and table.uuid_indexed
    assert table.references["obs_id"].table == "obs"
    with pytest.raises(SchemaError, match="'no_such_table' does not exist"):
        load(site, synced_table_names(None, ["no_such_table"]))


def test_schema_command_json(site, tmp_path) -> None:
    conf = tmp_path / "sender.toml"
    conf.write_text(
        f'home = "{tmp_path}"\n[sender]\nid = "s"\nserver_id = 5\n'
        f'[site_db]\nhost = "{site.host}"\nport = {site.port}\ndatabase = "{site.database}"\nuser = "{site.user}"\n'
        '[broker]\nuser = "u"\n'
    )
    env = {"DBSYNC_SITE_DB__PASSWORD": site.password, "DBSYNC_BROKER__PASSWORD": "p", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "schema", "--config", str(conf), "--json"],
                         capture_output=True, env=env)
    assert run.returncode == 0, run.stderr
    tables = {t["table"]: t for t in orjson.loads(run.stdout)["tables"]}
    assert len(tables) == 28
    assert tables["test_order"]["identity"].startswith("orders.uuid")
    assert tables["obs"]["references"]["obs_group_id"] == "obs"
    assert site.password not in run.stdout.decode() + run.stderr.decode()
