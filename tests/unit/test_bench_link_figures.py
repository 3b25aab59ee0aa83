"""scripts/bench-link's arithmetic (devtools/bench_link.py): the drain window read from the link's samples and the
share of the capped bandwidth it used."""

from __future__ import annotations

from devtools.bench_link import Sample, drain, verdict


def _samples(steps: list[tuple[int, bool]], every: float = 1.0) -> list[Sample]:
    """A sample every `every` s: (bytes that crossed in the step before it, link down)."""
    out, total = [], 0
    for index, (crossed, down) in enumerate(steps):
        total += crossed
        out.append(Sample(index * every, total, down))
    return out


def test_the_drain_runs_from_the_first_byte_to_the_last_data_and_leaves_the_idle_tail_out() -> None:
    # idle before the sender connects, 4 s of data, then only heart-beats (1 byte) after the backlog drained
    samples = _samples([(0, False), (0, False), (100, False), (1000, False), (1000, False), (900, False),
                        (1, False), (0, False), (1, False)])
    window = drain(samples)
    assert window is not None
    assert (window.started, window.ended, window.bytes_up) == (1.0, 5.0, 3000)
    assert (window.up_seconds, window.down_seconds) == (4.0, 0.0)
    assert window.use_percent(1000) == 75.0


def test_an_outage_is_taken_out_of_the_time_not_the_bytes() -> None:
    samples = _samples([(0, False), (1000, False), (1000, False), (0, True), (0, True), (0, False), (1000, False),
                        (1000, False)])
    window = drain(samples)
    assert window is not None
    # the intervals that touch the outage (2→3, 3→4, 4→5) are down; 4 s up carried 4000 bytes
    assert (window.up_seconds, window.down_seconds, window.bytes_up) == (4.0, 3.0, 4000)
    assert window.use_percent(1000) == 100.0


def test_data_after_every_row_arrived_is_not_the_drains() -> None:
    samples = _samples([(0, False), (500, False), (500, False), (0, False), (0, False), (800, False)])
    window = drain(samples, arrived_at=3.5)  # what crossed at 5 s (another conversation) is after the arrival
    assert window is not None
    assert (window.ended, window.bytes_up) == (2.0, 1000)


def test_nothing_crossed_is_no_drain_and_the_verdict_names_the_goal_and_the_command() -> None:
    assert drain(_samples([(0, False), (0, True)])) is None
    ok, line = verdict("link use (stable, 50,000 changes)", 79.9, 80, "scripts/bench-link --changes 50000")
    assert not ok
    assert line == ("verdict link use (stable, 50,000 changes): BELOW GOAL: 79.9 % of the capped bandwidth used "
                    "(goal ≥ 80 %) [scripts/bench-link --changes 50000]")
    assert verdict("x", 80.0, 80, "c")[0]
