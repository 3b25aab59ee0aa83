"""Issue 11: trust between sites, on the real servers."""

from __future__ import annotations

from collections import Counter

from receiver_helpers import drop_schema, make_central, make_site
from test_apply import new_person, outcomes


def test_a_site_cannot_update_or_delete_another_sites_rows(openmrs_db, services, tmp_path, broker_settings) -> None:
    """Seen: site2 messages changed a site1 person's gender and deleted a site1 obs, applied without a conflict. A
    row belongs to the site whose message created it; another site's change or delete goes to the error queue
    naming both sites, and the rest applies."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        person, name = new_person(site1)
        assert outcomes(central.apply(site1.messages()))["applied"] == 3
        site1.sql("UPDATE person SET gender='M', date_changed=NOW() WHERE uuid=%s", (person,))
        (update,) = [m for m in site1.messages() if m["table"] == "person"]
        site1.sql("DELETE FROM person_name WHERE uuid=%s", (name,))
        (delete,) = site1.messages()
        forged = [dict(update, site="site2", id="site2:" + update["id"]),
                  dict(delete, site="site2", id="site2:" + delete["id"])]
        results = central.apply(forged)
        assert outcomes(results) == Counter({"error": 2}), results
        reasons = {r["table"]: r["reason"] for r in results}
        assert reasons["person"] == (f"person {person} belongs to site site1: a change from site site2 is refused "
                                     "(a site changes only its own rows; receiver.cross_site_changes)")
        assert central.sql("SELECT gender FROM person WHERE uuid=%s", (person,)) == [("F",)]
        assert central.sql("SELECT COUNT(*) FROM person_name WHERE uuid=%s", (name,)) == [(1,)]
        errors = central.sql(f"SELECT site, table_name, reason FROM `{central.schema}`.receiver_retry_queue")
        assert sorted(e[1] for e in errors) == ["person", "person_name"] and {e[0] for e in errors} == {"site2"}
        # the owner's own changes still apply; the error entries hold nothing up
        assert outcomes(central.apply([update, delete])) == Counter({"applied": 2})
        assert central.sql("SELECT gender FROM person WHERE uuid=%s", (person,)) == [("M",)]
        # an explicit setting allows it where a programme needs it
        central.config.write_text(central.config.read_text().replace("[receiver]\n", '[receiver]\ncross_site_changes = "allow"\n'))
        site1.sql("UPDATE person SET gender='F', date_changed=NOW() WHERE uuid=%s", (person,))
        (again,) = [m for m in site1.messages() if m["table"] == "person"]
        assert outcomes(central.apply([dict(again, site="site2", id="site2:" + again["id"])])) == Counter(
            {"applied": 1})
    finally:
        drop_schema(central)
