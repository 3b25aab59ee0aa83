"""Issue 10: the field cases where sync went silently wrong, each reproduced on the real servers."""

from __future__ import annotations

from collections import Counter

import orjson
from helpers import dbsync
from test_apply import central, new_person, outcomes, site  # noqa: F401 - fixtures

__all__ = ["central", "site"]


def test_a_backdated_change_of_a_row_central_never_touched_is_applied(central, site) -> None:  # noqa: F811
    """Case 10: a clinic clock corrected backwards makes a change's date_changed older than the row's previous
    one. The site's binlog says it is newer; before, apply dropped it as `stale` (no conflict, no retry, status OK)."""
    _person, name = new_person(site, date_changed="2024-08-01 00:00:00")
    central.apply(site.messages())
    site.sql("UPDATE person_name SET family_name='Corrected', date_changed='2024-07-01 00:00:00' WHERE uuid=%s",
             (name,))
    assert outcomes(central.apply(site.messages())) == Counter({"applied": 1})
    assert central.sql("SELECT family_name, date_changed FROM person_name WHERE uuid=%s", (name,))[0][0] == "Corrected"
    # an un-void dated in the past is the same case
    site.sql("UPDATE person_name SET voided=1, void_reason='dup', date_voided='2024-09-01 00:00:00', "
             "voided_by=1 WHERE uuid=%s", (name,))
    central.apply(site.messages())
    site.sql("UPDATE person_name SET voided=0, void_reason=NULL, date_voided=NULL, voided_by=NULL, "
             "date_changed='2024-06-01 00:00:00' WHERE uuid=%s", (name,))
    assert outcomes(central.apply(site.messages())) == Counter({"applied": 1})
    assert central.sql("SELECT voided FROM person_name WHERE uuid=%s", (name,)) == [(0,)]


def test_what_apply_does_not_apply_is_counted_per_site_and_reason_in_status(central, site) -> None:  # noqa: F811
    """Case 10, second half: duplicates and stale changes are counted per site and reason and shown by status."""
    _person, name = new_person(site)
    first = site.messages()
    central.apply(first)
    site.sql("UPDATE person_name SET family_name='One' WHERE uuid=%s", (name,))
    older = site.messages()
    site.sql("UPDATE person_name SET family_name='Two' WHERE uuid=%s", (name,))
    newer = site.messages()
    central.apply(newer)
    assert outcomes(central.apply(older)) == Counter({"stale": 1})  # the binlog says it is older
    assert outcomes(central.apply(first)) == Counter({"duplicate": len(first)})
    run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
    report = orjson.loads(run.stdout)
    (row,) = [s for s in report["sites"] if s["identifier"] == "site1"]
    assert row["skipped"] == {"duplicate": len(first), "stale": 1}
    table = dbsync("status", "--config", str(central.config), env={**central.env, "COLUMNS": "200"},
                   check=False).stdout.decode()
    assert f"{len(first)} duplicate, 1 stale" in table
