"""The bounded map behind the id ↔ uuid caches: recent entries kept, never more than its size, updates win."""

from __future__ import annotations

from dbsync_cli.lru import LruMap


def test_it_never_holds_more_than_its_size_and_keeps_the_recent_half() -> None:
    cache = LruMap(100)
    for key in range(10_000):
        cache.put(key, str(key))
        assert len(cache.young) + len(cache.old) <= 100
    assert all(cache.get(key) == str(key) for key in range(10_000 - 50, 10_000))
    assert cache.get(0) is None


def test_an_entry_read_often_survives_a_stream_of_new_ones() -> None:
    cache = LruMap(100)
    cache.put("hot", 1)
    for key in range(5_000):
        cache.put(key, key)
        if key % 40 == 0:
            assert cache.get("hot") == 1, key


def test_a_later_put_wins_and_pop_forgets_in_both_generations() -> None:
    cache = LruMap(10)
    cache.put("a", 1)
    for key in range(5):
        cache.put(key, key)  # "a" is now in the old generation
    cache.put("a", 2)
    assert cache.get("a") == 2
    for key in range(5, 10):
        cache.put(key, key)
    assert cache.get("a") == 2
    cache.pop("a")
    assert cache.get("a") is None
    assert len(cache) <= 10
