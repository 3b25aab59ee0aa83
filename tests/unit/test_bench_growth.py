"""scripts/bench's growth figure (devtools/bench_growth.py): alternating runs paired, the median of the ratios."""

from __future__ import annotations

from devtools.bench_growth import pairs


def test_pairs_are_empty_then_big_and_the_figure_is_their_median() -> None:
    runs = [{"rows_per_second": r} for r in (1000, 900, 1000, 500, 800, 720)]  # empty, big, empty, big, …
    got = pairs(runs)
    assert [p["ratio"] for p in got["pairs"]] == [0.9, 0.5, 0.9]
    assert got["median_ratio"] == 0.9  # one busy moment moves one pair, not the figure
    assert pairs(runs[:3])["pairs"] == got["pairs"][:1]  # an unpaired last run is left out
