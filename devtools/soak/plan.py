"""The seeded schedule of a soak run: which faults strike when, how long each pause lasts, when the late site joins.
Pure: the same seed and minutes give the same plan."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FAULT_KINDS = ("sender", "receiver", "site_db", "central_db", "artemis")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the workloads started
    kind: str  # one of FAULT_KINDS
    target: str  # the site for sender/site_db, else the kind
    pause: float  # seconds between the kill -9 and the restart

    def describe(self) -> str:
        return f"t+{self.at:5.1f}s kill -9 {self.target if self.kind in ('sender', 'site_db') else ''} " \
               f"{self.kind} (restart after {self.pause:.1f}s)".replace("  ", " ")


@dataclass(frozen=True)
class Plan:
    seed: int
    minutes: float
    sites: tuple[str, ...]
    late_site: str
    onboard_at: float
    faults: tuple[Fault, ...]
    round_seconds: float
    patients_per_round: int
    large_every: int  # every n-th round of a site is written as one large transaction
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    def describe(self) -> list[str]:
        lines = [f"seed {self.seed}, {self.minutes:g} min of workload at {', '.join(self.sites)}; "
                 f"{self.late_site} onboarded at t+{self.onboard_at:.0f}s; a round of {self.patients_per_round} "
                 f"patients every {self.round_seconds:g}s per site, every {self.large_every}th as one transaction"]
        lines += [f"  fault: {f.describe()}" for f in self.faults]
        return lines


def make_plan(seed: int, minutes: float, sites: tuple[str, ...] = ("site1", "site2", "site3"),
              faults_per_minute: float = 2.0) -> Plan:
    rng = random.Random(f"soak:{seed}")
    seconds = minutes * 60
    count = max(len(FAULT_KINDS), round(minutes * faults_per_minute))
    kinds = list(FAULT_KINDS)
    rng.shuffle(kinds)
    kinds += [rng.choice(FAULT_KINDS) for _ in range(count - len(kinds))]
    # one fault at a time: evenly spread slots in [10 %, 80 %] of the run, jittered inside the slot
    start, end = 0.10 * seconds, 0.80 * seconds
    slot = (end - start) / count
    early = sites[:-1]
    faults = []
    for i, kind in enumerate(kinds):
        at = start + i * slot + rng.uniform(0, slot * 0.4)
        pause = round(rng.uniform(1.0, min(8.0, max(1.5, slot * 0.4))), 1)
        target = rng.choice(early) if kind in ("sender", "site_db") else kind
        faults.append(Fault(round(at, 1), kind, target, pause))
    return Plan(seed=seed, minutes=minutes, sites=sites, late_site=sites[-1],
                onboard_at=round(seconds * rng.uniform(0.25, 0.4), 1), faults=tuple(faults),
                round_seconds=4.0, patients_per_round=4, large_every=5)
