"""`dbsync sites list` at 80 columns: identifiers and broker users whole on one line (they are what an operator
copies into the next command), no header or cell cut in the middle of a word, no line wider than 80."""

from __future__ import annotations

import pytest
from helpers import dbsync
from receiver_helpers import drop_schema, make_central

pytestmark = pytest.mark.lane2


def test_sites_list_reads_whole_at_80_columns(openmrs_db, services, tmp_path, broker_settings) -> None:
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1",))
    try:
        long_id = "maputo-central-hospital-outpatients"
        dbsync("sites", "add", long_id, "--name", "Hospital Central de Maputo, consultas externas",
               "--broker-user", "dbsync-site-maputo-hcm", "--config", str(central.config), env=central.env)
        out = dbsync("sites", "list", "--config", str(central.config),
                     env={**central.env, "COLUMNS": "80", "LANG": "C.UTF-8"}).stdout.decode()
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 80, out
        assert any(long_id in line for line in lines), out  # on one line, never folded
        assert any("dbsync-site-maputo-hcm" in line for line in lines), out
        words = [w.rstrip(":") for w in out.replace("│", " ").replace("┃", " ").split()]  # a table or one block a site
        for word in ("broker", "user", "status", "last", "sync", "site1", "enabled", "never", "Hospital", "Central",
                     "Maputo,", "consultas", "externas"):
            assert word in words, (word, out)
        wide = dbsync("sites", "list", "--config", str(central.config),
                      env={**central.env, "COLUMNS": "160", "LANG": "C.UTF-8"}).stdout.decode()
        assert "┃ identifier" in wide and long_id in wide and "created" in wide  # the table when it fits
    finally:
        drop_schema(central)
