"""The arithmetic of the field bed's link proxy (devtools/field/shaping.py), on a made-up clock."""

from __future__ import annotations

import random

import pytest

from devtools.field.shaping import DelayLine, Outages, TokenBucket


def test_a_token_bucket_lets_a_burst_through_then_holds_to_its_rate() -> None:
    bucket = TokenBucket(1000, burst=500, now=0.0)
    assert bucket.reserve(500, 0.0) == 0.0  # the burst is there at once
    assert bucket.reserve(250, 0.0) == pytest.approx(0.25)  # then a debt, paid at 1000 B/s
    assert bucket.reserve(250, 0.25) == pytest.approx(0.25)
    assert bucket.reserve(100, 10.0) == 0.0  # a quiet spell refills it, but never beyond the burst
    assert bucket.tokens == pytest.approx(400)


def test_senders_sharing_a_bucket_never_exceed_its_rate_together() -> None:
    """Two connections of one link take turns; whatever their sizes, bytes sent by time t stay under rate·t + burst."""
    rng = random.Random(5)
    bucket = TokenBucket(10_000, burst=1000, now=0.0)
    ready = [0.0, 0.0]  # when each sender may send next
    sent = []
    for _ in range(400):
        who = min(range(2), key=lambda i: ready[i])
        size = rng.randint(1, 3000)
        start = ready[who] + bucket.reserve(size, ready[who])
        sent.append((start, size))
        ready[who] = start
    total = sum(size for _, size in sent)
    last = max(start for start, _ in sent)
    assert total <= 10_000 * last + 1000 + 3000
    assert total >= 10_000 * last * 0.95  # and it is not much slower than the rate either


def test_a_bucket_reads_in_small_chunks_so_waits_stay_short() -> None:
    assert TokenBucket(32_000).chunk() == 1600  # 256 kbit/s: 50 ms a read
    assert TokenBucket(100).chunk() == 512
    assert TokenBucket(10**9).chunk() == 65536
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_the_delay_line_adds_latency_to_every_chunk_and_keeps_their_order() -> None:
    line = DelayLine(0.5)
    assert line.due(1.0) == 1.5
    assert line.due(1.2) == pytest.approx(1.7)  # not just the first byte
    jittery = DelayLine(0.5, jitter=0.3, rng=random.Random(1))
    dues = [jittery.due(t / 100) for t in range(200)]
    assert dues == sorted(dues)  # jitter never reorders a stream
    assert all(t / 100 + 0.5 <= due <= t / 100 + 0.8 + 1e-9 for t, due in enumerate(dues))
    assert DelayLine(0.5, 0.3, random.Random(9)).due(0) == DelayLine(0.5, 0.3, random.Random(9)).due(0)  # seeded


def test_a_flapping_link_is_down_for_t_seconds_every_p_seconds() -> None:
    outages = Outages(start=100.0, every=30.0, down_for=10.0)
    assert outages.down_until(100.0) is None  # up at the start
    assert outages.down_until(129.9) is None
    assert outages.down_until(130.0) == 140.0
    assert outages.down_until(139.9) == 140.0
    assert outages.down_until(140.0) is None
    assert outages.down_until(165.0) == 170.0
    assert outages.next_flap(100.0) == 130.0
    assert outages.next_flap(130.0) == 160.0
    assert outages.next_flap(99.0) == 130.0


def test_a_cut_adds_an_outage_and_never_shortens_one() -> None:
    outages = Outages(start=0.0, every=30.0, down_for=10.0)
    outages.cut(5.0, 3.0)
    assert outages.down_until(6.0) == 8.0
    assert outages.down_until(8.0) is None
    outages.cut(28.0, 5.0)  # overlaps the flap at 30: down until the later end
    assert outages.down_until(29.0) == 33.0
    assert outages.down_until(31.0) == 40.0
    outages.cut(31.0, 1.0)
    assert outages.cut_until == 33.0
    assert Outages(0.0).down_until(1e9) is None and Outages(0.0).next_flap(5.0) is None


def test_a_flap_must_leave_the_link_up_some_of_the_time() -> None:
    with pytest.raises(ValueError):
        Outages(0.0, every=10.0, down_for=10.0)
    with pytest.raises(ValueError):
        Outages(0.0, every=0.0, down_for=0.0)
