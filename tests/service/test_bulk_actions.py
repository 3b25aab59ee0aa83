"""Bulk actions on the retry queue and the conflicts (`dbsync retry again|drop`, `dbsync conflicts resolve` with
--site/--table/--reason/--kind/--older-than): a count, a confirmation (or --yes), refusal without a terminal; and
`retry list` saying how many entries exist in all. Checked with SQL of its own against a real central."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid as uuidlib
from typing import Any

import orjson
import pytest
from helpers import dbsync
from receiver_helpers import Central, drop_schema, make_central, make_site
from test_apply import new_person

from dbsync_cli import exitcodes
from dbsync_cli.receiver import state


@pytest.fixture
def bed(openmrs_db, services, tmp_path, broker_settings):
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
    site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
    central.apply(site1.messages())
    central.apply(site2.messages())
    try:
        yield central, site1, site2
    finally:
        drop_schema(central)


def _q(central: Central) -> str:
    return f"`{central.schema}`"


def park(central: Central, *, site: str, table: str, reason: str, kind: str, hours_ago: float = 0) -> int:
    """A parked entry as the receiver writes one (entry row + its body), dated `hours_ago`."""
    created = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=hours_ago)
    message_id = f"{site}:test:{uuidlib.uuid4().hex}"
    with central.db.connect(autocommit=False) as conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO {_q(central)}.receiver_retry_queue (message_id, site, table_name, entity_key, "
                    "reason, attempts, date_created, kind) VALUES (%s, %s, %s, NULL, %s, 1, %s, %s)",
                    (message_id, site, table, reason, created, kind))
        entry = int(cur.lastrowid)
        cur.execute(f"INSERT INTO {_q(central)}.receiver_retry_body (id, body) VALUES (%s, %s)", (entry, b"{}"))
        conn.commit()
    return entry


def ids(central: Central) -> set[int]:
    return {r[0] for r in central.sql(f"SELECT id FROM {_q(central)}.receiver_retry_queue")}


def cli(central: Central, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return dbsync(*args, "--config", str(central.config), env=central.env, stdin=stdin, check=False)


def on_a_terminal(central: Central, args: list[str], answer: str) -> subprocess.CompletedProcess[bytes]:
    """Run dbsync with a pseudo-terminal as stdin and type `answer` at its question."""
    main, other = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", *args, "--config", str(central.config)],
                                env=central.env, stdin=other, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(main, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(main)
        os.close(other)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def one_line(run: subprocess.CompletedProcess[bytes]) -> str:
    """The last stderr line, checked to be dbsync's own and no traceback."""
    text = run.stderr.decode()
    assert "Traceback" not in text, text
    return text.strip().splitlines()[-1]


def test_retry_drop_and_again_select_by_each_filter_count_and_confirm(bed) -> None:
    central, _site1, site2 = bed
    disk = park(central, site="site1", table="obs", reason="Disk full while applying", kind="transient")
    obs_old = park(central, site="site1", table="obs", reason="missing concept 123", kind="transient", hours_ago=50)
    enc = park(central, site="site1", table="encounter", reason="missing location 9", kind="transient")
    perm = park(central, site="site1", table="visit", reason="refused: cross-site", kind="permanent")
    keep = park(central, site="site1", table="visit", reason="refused: cross-site", kind="waiting")
    with central.db.connect(autocommit=False) as conn:  # site2 disabled: its new patient waits in the queue
        state.set_disabled(conn, central.schema, "site2", True)
    new_person(site2, "Cid")
    central.apply(site2.messages())
    site2_entries = ids(central) - {disk, obs_old, enc, perm, keep}
    assert site2_entries

    # the list says how many exist in all, and how many it shows
    listed = cli(central, "retry", "list", "--limit", "2")
    total = len(ids(central))
    assert listed.returncode == 0 and f"{total} retry entries (2 shown" in " ".join(listed.stdout.decode().split())
    as_json = orjson.loads(cli(central, "retry", "list", "--json", "--site", "site1", "--kind", "transient").stdout)
    assert {e["id"] for e in as_json} == {disk, obs_old, enc} and all(e["kind"] == "transient" for e in as_json)

    # no terminal and no --yes: the count, then one line, exit 2, nothing changed
    refused = cli(central, "retry", "drop", "--reason", "DISK")
    assert refused.returncode == exitcodes.CONFIG
    assert "1 retry entry matches: --reason 'DISK'" in refused.stderr.decode()
    assert one_line(refused).startswith("dbsync: ") and "--yes" in one_line(refused)
    assert disk in ids(central)

    # on a terminal: "n" changes nothing, "y" drops exactly the selection
    declined = on_a_terminal(central, ["retry", "drop", "--reason", "disk"], "n")
    assert declined.returncode == exitcodes.FAILURE and "nothing changed" in one_line(declined)
    assert disk in ids(central)
    confirmed = on_a_terminal(central, ["retry", "drop", "--reason", "disk"], "y")
    assert confirmed.returncode == 0, confirmed.stderr.decode()
    assert "1 retry entry dropped" in confirmed.stdout.decode()
    assert disk not in ids(central)

    # each filter with --yes
    assert "1 retry entry dropped" in cli(central, "retry", "drop", "--older-than", "2d", "--yes").stdout.decode()
    assert obs_old not in ids(central) and enc in ids(central)
    assert cli(central, "retry", "drop", "--table", "encounter", "--site", "site1", "--yes").returncode == 0
    assert enc not in ids(central) and perm in ids(central)
    assert cli(central, "retry", "drop", "--kind", "permanent", "--site", "site1", "--yes").returncode == 0
    assert perm not in ids(central) and keep in ids(central)
    nothing = cli(central, "retry", "drop", "--site", "nowhere", "--yes")
    assert nothing.returncode == 0 and "0 retry entries match" in nothing.stderr.decode()

    # a filter that cannot be used, or a number and filters: one line, exit 2
    for bad in (["--older-than", "soon"], ["--kind", "sometimes"], ["7", "--site", "site1"], []):
        run = cli(central, "retry", "drop", *bad, "--yes")
        assert run.returncode == exitcodes.CONFIG and one_line(run).startswith("dbsync: "), (bad, run.stderr)

    # again by site, after fixing the cause: the site's entries apply, the others stay
    with central.db.connect(autocommit=False) as conn:
        state.set_disabled(conn, central.schema, "site2", False)
    again = cli(central, "retry", "again", "--site", "site2", "--yes")
    assert again.returncode == 0, again.stderr.decode()
    outcomes = [orjson.loads(line) for line in again.stdout.splitlines() if line.strip()]
    assert outcomes and all(o["outcome"] == "applied" for o in outcomes), outcomes
    assert f"{len(site2_entries)} entries retried" in again.stderr.decode()
    assert ids(central) == {keep}
    assert central.sql("SELECT COUNT(*) FROM person_name WHERE given_name = 'Cid'") == [(1,)]

    # the single-id forms keep working
    assert f"retry entry {keep} dropped" in cli(central, "retry", "drop", str(keep)).stdout.decode()
    assert ids(central) == set()


def _conflicts(central: Central, site1: Any, names: list[str]) -> dict[str, int]:
    """A conflict per name: central edits the row after the sync, the site edits it too."""
    uuids = {given: new_person(site1, given)[1] for given in names}
    central.apply(site1.messages())
    for given, name in uuids.items():
        central.sql("UPDATE person_name SET given_name = %s, date_changed = %s WHERE uuid = %s",
                    (f"Central {given}", dt.datetime(2030, 1, 1), name))
        site1.sql("UPDATE person_name SET family_name = 'Site', date_changed = '2024-06-01 10:00:00' "
                  "WHERE uuid = %s", (name,))
    central.apply(site1.messages())
    found = dict(central.sql(f"SELECT entity_uuid, id FROM {_q(central)}.receiver_conflict_queue WHERE resolved = 0"))
    assert len(found) == len(names), found
    return {given: found[name] for given, name in uuids.items()}


def test_conflicts_resolve_selects_by_each_filter_with_a_count_and_a_confirmation(bed) -> None:
    central, site1, _site2 = bed
    numbers = _conflicts(central, site1, ["Ann", "Bea", "Cid", "Dan"])
    central.sql(f"UPDATE {_q(central)}.receiver_conflict_queue SET date_created = date_created - INTERVAL 3 DAY "
                "WHERE id = %s", (numbers["Ann"],))

    def unresolved() -> set[int]:
        return {r[0] for r in central.sql(f"SELECT id FROM {_q(central)}.receiver_conflict_queue WHERE resolved = 0")}

    refused = cli(central, "conflicts", "resolve", "--site", "site1", "--keep-central")
    assert refused.returncode == exitcodes.CONFIG and "4 unresolved conflicts match" in refused.stderr.decode()
    assert unresolved() == set(numbers.values())
    older = cli(central, "conflicts", "resolve", "--older-than", "2d", "--keep-central", "--yes")
    assert older.returncode == 0 and "1 conflict(s) resolved (keep-central)" in older.stdout.decode()
    assert unresolved() == set(numbers.values()) - {numbers["Ann"]}
    for nothing in (["--reason", "no such reason"], ["--kind", "adopting"], ["--table", "visit"],
                    ["--site", "site2"]):
        run = cli(central, "conflicts", "resolve", *nothing, "--yes")
        assert run.returncode == 0 and "0 unresolved conflicts match" in run.stderr.decode(), nothing
    declined = on_a_terminal(central, ["conflicts", "resolve", "--kind", "edited", "--take-incoming"], "n")
    assert declined.returncode == exitcodes.FAILURE and len(unresolved()) == 3
    taken = on_a_terminal(central, ["conflicts", "resolve", "--reason", "EDITED CENTRALLY", "--table",
                                    "person_name", "--kind", "edited", "--take-incoming"], "y")
    assert taken.returncode == 0, taken.stderr.decode()
    assert "3 conflict(s) resolved (take-incoming)" in taken.stdout.decode()
    assert unresolved() == set()
    assert central.sql("SELECT COUNT(*) FROM person_name WHERE family_name = 'Site'") == [(3,)]
    merge = cli(central, "conflicts", "resolve", "--site", "site1", "--merge", "given_name", "--yes")
    assert merge.returncode == exitcodes.CONFIG and "one conflict at a time" in one_line(merge)


def test_a_confirmed_selection_acts_on_exactly_what_was_counted_or_refuses(bed) -> None:
    """Review finding 8: an entry whose kind changed between the count and the action made the action touch a set
    the operator never counted; now it is refused with one line and nothing changes, and a new count acts."""
    from dbsync_cli import config as config_mod
    from dbsync_cli.receiver import actions, selection
    from dbsync_cli.receiver import run as run_mod
    from dbsync_cli.receiver.apply import Applier

    central, _site1, _site2 = bed
    other = park(central, site="site1", table="obs", reason="pinned test", kind="transient")
    mine = [park(central, site="site1", table="obs", reason="pinned test", kind="permanent") for _ in range(3)]
    cfg = config_mod.load(central.config, "receiver", env=central.env)
    chosen = selection.Selection(queue="retry", site="site1", kind="permanent", reason="pinned test")
    with central.db.connect() as conn:
        found, pinned = selection.pinned(conn, central.schema, chosen)
    assert found == 3 and pinned.pin and pinned.upto == max(mine)
    # counted; then one counted entry becomes transient and an older uncounted one permanent: the same count and
    # highest id, another set
    central.sql(f"UPDATE {_q(central)}.receiver_retry_queue SET kind = 'transient' WHERE id = %s", (mine[0],))
    central.sql(f"UPDATE {_q(central)}.receiver_retry_queue SET kind = 'permanent' WHERE id = %s", (other,))
    applier = Applier(run_mod.apply_settings(cfg), run_mod.load_model(cfg))
    try:
        with pytest.raises(selection.SelectionChanged, match="changed since they were counted"):
            actions.run(applier, "retry_drop_many", {"selection": pinned.args()}, who="test")
    finally:
        applier.close()
    assert {other, *mine} <= ids(central)  # nothing dropped
    # counted again: exactly that set is dropped
    with central.db.connect() as conn:
        found, pinned = selection.pinned(conn, central.schema, chosen)
    assert found == 3
    applier = Applier(run_mod.apply_settings(cfg), run_mod.load_model(cfg))
    try:
        done = actions.run(applier, "retry_drop_many", {"selection": pinned.args()}, who="test")
    finally:
        applier.close()
    assert "3 retry entries dropped" in done["text"]
    assert mine[0] in ids(central) and not {other, *mine[1:]} & ids(central)  # exactly the counted set went
