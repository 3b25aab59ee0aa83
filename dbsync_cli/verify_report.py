"""What `dbsync verify` found, per table and in all: the shapes its report and its repair share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: what a row is, after comparison; "edited_at_central" is a `different` row central changed too
DIFFERENCE_KINDS = ("missing", "different", "extra", "placeholders", "not_owned", "changing", "added_at_central")
#: the kinds that are differences (exit 1) and that repair mends: a row central or another site owns (the
#: built-in admin and daemon users every site has, say) is reported, never changed; a changing one is re-checked
DIFFERENCES = ("missing", "different", "extra", "placeholders")


@dataclass
class TableReport:
    site_rows: int = 0
    central_rows: int = 0
    kinds: dict[str, str] = field(default_factory=dict)  # uuid → kind, differences only
    edited: set[str] = field(default_factory=set)
    site_only: list[str] = field(default_factory=list)  # columns only this site has: compared without them
    central_only: list[str] = field(default_factory=list)  # columns only central has

    def counts(self) -> dict[str, int]:
        found = {k: 0 for k in DIFFERENCE_KINDS}
        for kind in self.kinds.values():
            found[kind] += 1
        at_site = sum(n for k, n in found.items() if k not in ("extra", "added_at_central"))
        return {"site_rows": self.site_rows, "central_rows": self.central_rows,
                "matched": max(0, self.site_rows - at_site), **found, "edited_at_central": len(self.edited)}


@dataclass
class VerifyReport:
    run: str
    tables: dict[str, TableReport]
    repaired: dict[str, Any] = field(default_factory=dict)  # rows sent again / deletes sent / what came of them
    found: dict[str, dict[str, int]] = field(default_factory=dict)  # with a repair: each table's counts before it
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(1 for t in self.tables.values() for k in t.kinds.values() if k in DIFFERENCES)

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run, "differences": self.differences, "seconds": round(self.seconds, 1),
                "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received, "repaired": self.repaired,
                **({"found": self.found} if self.found else {}),
                "tables": {name: {**t.counts(), "columns_only_at_site": t.site_only,
                                  "columns_only_at_central": t.central_only, "rows": dict(sorted(t.kinds.items()))}
                           for name, t in self.tables.items()}}
