"""The pure rules of receiver workers (--worker): which sites a worker takes and hands on, lock names, the inbox's
site filter."""

from __future__ import annotations

from dbsync_cli.receiver.inbox import site_filter
from dbsync_cli.receiver.worker_locks import MAX_WORKERS, applier_lock, lead_lock, site_lock, slot_lock
from dbsync_cli.receiver.worker_sites import handed_on, wanted


def test_a_worker_wants_the_sites_it_consumed_those_of_no_worker_and_those_of_dead_workers() -> None:
    rows = [("a", 0), ("b", 1), ("c", 2), ("d", None), ("e", 1), ("e", 0)]
    # worker 0; worker 1 alive, worker 2 dead
    assert wanted(rows, 0, alive={1}) == {"a", "c", "d", "e"}
    assert wanted(rows, 1, alive={0, 2}) == {"b", "d", "e"}
    assert wanted([(None, 3)], 0, alive=set()) == {None}  # deliveries without a site header: one lock too


def test_a_held_site_is_handed_on_only_when_all_its_inbox_rows_are_a_live_worker_s() -> None:
    rows = [("a", 1), ("b", 1), ("b", 0), ("c", 2)]
    assert handed_on(rows, 0, alive={1, 2}, held={"a", "b", "z"}) == {"a"}  # b: rows of its own; z: no rows at all
    assert handed_on(rows, 0, alive={2}, held={"a", "c"}) == {"c"}  # a's worker is dead: kept
    assert handed_on(rows, 0, alive={1, 2}, held=set()) == set()


def test_lock_names_fit_mariadb_and_differ_per_schema_and_site() -> None:
    names = {site_lock("s" * 64, "x" * 100), site_lock("s", "a"), site_lock("s", "b"), site_lock("t", "a"),
             site_lock("s", None), lead_lock("s"), *(slot_lock("s", k) for k in range(MAX_WORKERS))}
    assert len(names) == 6 + MAX_WORKERS
    assert all(len(name) <= 64 for name in names)
    assert site_lock("s", "nosite") != site_lock("s", None)
    assert applier_lock("openmrs_sync") == "dbsync:openmrs_sync"  # the gate keeps its name (older receivers)


def test_the_inbox_site_filter() -> None:
    assert site_filter(None) == ("", [])
    where, params = site_filter({"b", "a", None})
    assert where == " WHERE (`site` IN (%s, %s) OR `site` IS NULL)" and params == ["a", "b"]
    assert site_filter({None}) == (" WHERE (`site` IS NULL)", [])
    assert site_filter(set())[0] == " WHERE (FALSE)"
