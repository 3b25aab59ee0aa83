"""The pure rules of receiver workers (--worker): which sites a worker takes and hands on, lock names, the inbox's
site filter."""

from __future__ import annotations

from dbsync_cli.receiver.inbox import site_filter
from dbsync_cli.receiver.worker_locks import MAX_WORKERS, applier_lock, lead_lock, site_lock, slot_lock
from dbsync_cli.receiver.worker_sites import plan


def test_each_worker_takes_its_share_preferring_what_it_stored_then_what_dead_workers_stored() -> None:
    rows = [("a", 0), ("b", 1), ("c", 2), ("d", None), ("e", 1), ("e", 0)]
    # worker 0 of two live workers (0, 1); worker 2 is dead: five sites with work, a share of three
    chosen = plan(rows, set(), mine=0, alive={0, 1}, workers=2, held=set())
    # its own, then a dead worker's, then no worker's, then the other live worker's: the first three it can lock
    assert chosen.take == ["a", "e", "c", "d", "b"] and chosen.room == 3 and chosen.release == set()
    # a worker alone takes everything, its own first, then no worker's, then retry-only sites
    alone = plan(rows, {"q"}, mine=1, alive={1}, workers=1, held=set())
    assert alone.take == ["b", "e", "a", "c", "d", "q"] and alone.room == 6
    # holding its share already: nothing more
    assert plan(rows, set(), mine=0, alive={0, 1}, workers=2, held={"a", "b", "c"}).take == []


def test_the_first_worker_up_hands_sites_on_when_another_joins() -> None:
    # worker 0 consumed the whole backlog before worker 1 started, and holds all four sites
    rows = [("a", 0), ("b", 0), ("c", 0), ("d", 0)]
    first = plan(rows, set(), mine=0, alive={0, 1}, workers=2, held={"a", "b", "c", "d"})
    assert first.take == [] and first.release == {"c", "d"}
    second = plan(rows, set(), mine=1, alive={0, 1}, workers=2, held=set())
    # every site is a candidate and the locks decide: a and b stay with the first, c and d are free once it let
    # them go, so the second takes those two (it used to try only a and b, held, and take nothing)
    assert second.take == ["a", "b", "c", "d"] and second.room == 2
    # sites without work are kept (nothing to balance) and do not count toward the share
    assert plan([("a", 0)], set(), mine=0, alive={0, 1}, workers=2, held={"z", "a"}).release == set()
    assert plan([(None, 3)], set(), mine=0, alive={0}, workers=1, held=set()).take == [None]  # no site header


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
