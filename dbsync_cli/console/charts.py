"""Charts of a site's throughput and backlog as inline SVG, drawn on the server from the receiver's per-minute
samples (`receiver_sample`): a picture that needs no JavaScript, numbers only in it (nothing to escape)."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence

WIDTH, HEIGHT, PAD = 640, 160, 36

Sample = tuple[dt.datetime, int, int, int]  # when, messages applied (cumulative), inbox rows, retry entries


def series(samples: Sequence[Sample], step: dt.timedelta) -> tuple[list[tuple[dt.datetime, float]],
                                                                  list[tuple[dt.datetime, float]]]:
    """(rows applied per `step`, backlog at the end of each step) in steps of `step`."""
    throughput: list[tuple[dt.datetime, float]] = []
    backlog: list[tuple[dt.datetime, float]] = []
    bucket: dt.datetime | None = None
    first = last = None
    for when, messages, inbox, retry in samples:
        start = dt.datetime.min + ((when - dt.datetime.min) // step) * step
        if bucket is not None and start != bucket and first is not None and last is not None:
            throughput.append((bucket, max(0, last[1] - first[1])))
            backlog.append((bucket, last[2] + last[3]))
            first = last
        bucket = start
        first = first or (when, messages, inbox, retry)
        last = (when, messages, inbox, retry)
    if bucket is not None and first is not None and last is not None:
        throughput.append((bucket, max(0, last[1] - first[1])))
        backlog.append((bucket, last[2] + last[3]))
    return throughput, backlog


def first_time(points: Sequence[tuple[dt.datetime, float]], start: dt.datetime, end: dt.datetime,
               step: dt.timedelta) -> dt.datetime:
    """Where the x axis starts: the window's start, or the first point when the data is younger than the window
    (a receiver sampled for a day drew 30 days of axis: its line was a few pixels at the right edge), at least
    a few steps before the end."""
    if not points:
        return start
    return max(start, min(points[0][0], end - 4 * step))


def svg(points: Sequence[tuple[dt.datetime, float]], start: dt.datetime, end: dt.datetime, label: str,
        colour: str) -> str:
    """A line chart of `points` between `start` and `end`, with its maximum written on the y axis; each point also
    a dot while there are few (a single point is no line: an hourly chart of the first hour drew nothing)."""
    top = max((v for _t, v in points), default=0.0) or 1.0
    span = (end - start).total_seconds() or 1.0
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def xy(when: dt.datetime, value: float) -> str:
        x = PAD + inner_w * max(0.0, min(1.0, (when - start).total_seconds() / span))
        y = HEIGHT - PAD - inner_h * (value / top)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" fill="{colour}"/>'
                   for p in line.split()) if len(points) <= 48 else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" data-points="{len(points)}"><title>{html.escape(label)}</title>'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff" stroke="#d5d9e0"/>'
            f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
            f'<text x="{PAD}" y="{PAD - 8}" font-size="12">{_number(top)}</text>'
            f'<text x="{PAD}" y="{HEIGHT - 10}" font-size="11">{start:%Y-%m-%d %H:%M}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" font-size="11" text-anchor="end">{end:%Y-%m-%d %H:%M}</text>'
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>{dots}</svg>')


def _number(value: float) -> str:
    return f"{value:,.0f}"
