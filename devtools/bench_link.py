"""The link bench's figures (`scripts/bench-link`): pure arithmetic on what the link emulator counted, no I/O,
nothing of dbsync imported (a checker of results never imports the code it checks).

The bench samples the link (devtools/field/link.py) every few tens of milliseconds: the bytes that crossed it
upstream so far and whether it is down. From those samples:

- the drain starts at the first byte upstream (the sender's connect: a round trip spent there is the sender's) and
  ends at the last sample where data crossed (more than a STOMP heart-beat's few bytes) before every row was at
  central: the quiet tail after the backlog drained is not counted
- link use = bytes upstream in the drain ÷ (cap × seconds the link was up in the drain); a link that is down
  cannot be used, so its outages are taken out of the time, never the bytes
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: the done-when line of issue 27: a backlog uses ≥ 80 % of the capped bandwidth at 1 s RTT
GOAL_PERCENT = 80.0
#: bytes in one sample interval that count as data (a STOMP heart-beat is one byte, a receipt-less tail a few)
DATA_BYTES = 16


@dataclass(frozen=True)
class Sample:
    """The link at one moment: monotonic seconds, bytes that crossed upstream so far, down (an outage) or up."""
    at: float
    bytes_up: int
    down: bool


@dataclass(frozen=True)
class Drain:
    """The measured window of a backlog draining over the link."""
    started: float
    ended: float
    bytes_up: int
    up_seconds: float
    down_seconds: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def use_percent(self, cap_bytes_per_s: float) -> float:
        """Bytes upstream ÷ what the cap allowed while the link was up, in percent."""
        if self.up_seconds <= 0:
            return 0.0
        return 100.0 * self.bytes_up / (cap_bytes_per_s * self.up_seconds)


def drain(samples: Sequence[Sample], arrived_at: float | None = None) -> Drain | None:
    """The drain window of `samples` (in time order): first byte upstream to the last data before `arrived_at`
    (every row at central; None: the last data sampled). None when nothing crossed."""
    first = next((i for i, s in enumerate(samples) if s.bytes_up > 0), None)
    if first is None:
        return None
    start = max(0, first - 1)  # the byte crossed between the sample before and this one
    last = start
    for i in range(start + 1, len(samples)):
        if arrived_at is not None and samples[i].at > arrived_at:
            break
        if samples[i].bytes_up - samples[i - 1].bytes_up > DATA_BYTES:
            last = i
    up = down = 0.0
    for i in range(start + 1, last + 1):
        step = samples[i].at - samples[i - 1].at
        if samples[i].down or samples[i - 1].down:  # an interval touching an outage counts as down
            down += step
        else:
            up += step
    return Drain(samples[start].at, samples[last].at, samples[last].bytes_up - samples[start].bytes_up, up, down)


def verdict(what: str, percent: float, goal: float, command: str) -> tuple[bool, str]:
    """One line: the figure against the goal, with the command that measured it."""
    ok = percent >= goal
    return ok, (f"verdict {what}: {'PASS' if ok else 'BELOW GOAL'}: {percent:.1f} % of the capped bandwidth used "
                f"(goal ≥ {goal:g} %) [{command}]")
