"""Issue 27 item 10: verify and repair by file for a clinic with no network. The site writes its question, central
answers it with a file, the site reads the answer and writes a repair bundle, central imports it: the rows that
differed (changed behind the sender's back, lost at central, deleted at the site) are mended, and a second
question finds nothing. The checks read the databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import Central, Site
from test_bundle import clinics, import_file, register_key  # noqa: F401 - the fixture

from devtools.workload.generator import generate

pytestmark = pytest.mark.lane2


def ask(central: Central, site: Site, tmp_path: Path, name: str) -> dict[str, Any]:
    """Question at the site, answer at central, the report at the site."""
    question, answer = tmp_path / f"{name}-q.dbsync", tmp_path / f"{name}-a.dbsync"
    dbsync("verify", "--to", str(question), "--config", str(site.config), env=site.env)
    dbsync("import", str(question), "--answer-to", str(answer), "--config", str(central.config), env=central.env)
    run = dbsync("verify", "--from", str(answer), "--json", "--config", str(site.config), env=site.env, check=False)
    assert run.returncode in (0, 1), run.stderr.decode()[-2000:]
    return orjson.loads(run.stdout)


def test_verify_and_repair_by_file_mend_what_differs(clinics, tmp_path) -> None:  # noqa: F811
    central, site1, _site2 = clinics
    register_key(central, site1)
    central_key = dbsync("sites", "central-key", "--config", str(central.config), env=central.env).stdout.decode()
    assert central_key.startswith("ed25519:"), central_key
    site1.env["DBSYNC_SENDER__CENTRAL_PUBLIC_KEY"] = central_key.strip()
    generate(site1.admin, seed=95, patients=20, mutations=0.2)
    carried = tmp_path / "week.dbsync"
    dbsync("export", "--to", str(carried), "--config", str(site1.config), env=site1.env)
    import_file(central, carried)

    changed = [u for (u,) in site1.sql("SELECT uuid FROM obs WHERE voided = 0 ORDER BY obs_id DESC LIMIT 4")]
    (lost,) = site1.sql("SELECT uuid FROM person_name ORDER BY person_name_id DESC LIMIT 1")[0]
    (gone,) = site1.sql("SELECT uuid FROM obs o WHERE voided = 0 AND NOT EXISTS (SELECT 1 FROM obs c WHERE "
                        "c.obs_group_id = o.obs_id) ORDER BY obs_id LIMIT 1 OFFSET 10")[0]
    with site1.admin.connect() as conn, conn.cursor() as cur:  # behind the sender's back: only verify sees them
        cur.execute("SET sql_log_bin = 0")
        cur.execute("UPDATE obs SET comments = 'changed offline' WHERE uuid IN (%s, %s, %s, %s)", tuple(changed))
        cur.execute("DELETE FROM obs WHERE uuid = %s", (gone,))
        conn.commit()
    central.sql("DELETE FROM person_name WHERE uuid = %s", (lost,))

    first = ask(central, site1, tmp_path, "first")
    kinds = {u: k for t in first["tables"].values() for u, k in t["rows"].items()}
    assert {kinds.get(u) for u in changed} == {"different"}, first
    assert kinds.get(lost) == "missing" and kinds.get(gone) == "extra", first
    assert first["differences"] == 6, first

    answer = tmp_path / "first-a.dbsync"
    repair = tmp_path / "repair.dbsync"
    run = dbsync("verify", "--from", str(answer), "--repair", "--to", str(repair), "--json", "--config",
                 str(site1.config), env=site1.env, check=False)
    assert run.returncode == 1 and repair.exists(), run.stderr.decode()[-2000:]
    assert orjson.loads(run.stdout)["repaired"]["deletes_sent"] == 1
    import_file(central, repair)

    assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid IN (%s, %s, %s, %s) AND comments = 'changed offline'",
                       tuple(changed)) == [(4,)]
    assert central.sql("SELECT COUNT(*) FROM person_name WHERE uuid = %s", (lost,)) == [(1,)]
    assert central.sql("SELECT COUNT(*) FROM obs WHERE uuid = %s", (gone,)) == [(0,)]
    second = ask(central, site1, tmp_path, "second")
    assert second["differences"] == 0, second
    stored = orjson.loads(dbsync("verify", "--status", "--json", "--config", str(central.config),
                                 env=central.env).stdout)
    assert [r["differences"] for r in stored if r["site"] == "site1"] == [0], stored

    # an answer is for this site's last question only
    stale = dbsync("verify", "--from", str(answer), "--config", str(site1.config), env=site1.env, check=False)
    assert stale.returncode == 20 and b"not this site's last one" in stale.stderr, stale.stderr
    # and only an answer central signed is read: one signed by any other key (a forged one) is refused whole
    other = {**central.env, "DBSYNC_HOME": str(tmp_path / "not-central")}
    forged = tmp_path / "forged-a.dbsync"
    dbsync("verify", "--to", str(tmp_path / "third-q.dbsync"), "--config", str(site1.config), env=site1.env)
    dbsync("import", str(tmp_path / "third-q.dbsync"), "--answer-to", str(forged), "--config", str(central.config),
           env=other)
    refused = dbsync("verify", "--from", str(forged), "--config", str(site1.config), env=site1.env, check=False)
    assert refused.returncode == 20 and b"not signed by central's key" in refused.stderr, refused.stderr
    # an export never writes over a bundle that may not have been carried yet
    again = dbsync("export", "--to", str(carried), "--config", str(site1.config), env=site1.env, check=False)
    assert again.returncode == 1 and b"exists: carry it to central first" in again.stderr, again.stderr
