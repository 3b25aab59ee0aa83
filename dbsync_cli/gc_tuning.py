"""The garbage collector tuned for the receiver's stream of short-lived records.

The receiver's work (parsing and applying messages) allocates a few hundred objects a row, nearly
all freed at once by reference counting and almost none in reference cycles. With CPython's default thresholds
(700, 10, 10) a young collection runs every few messages and the full ones walk the caches (uuid ↔ id maps of up to
200,000 entries) again and again: measured on apply, 10-15 % of its CPU (20,639 messages: 3.1-3.2 CPU-s with the
defaults, 2.6-2.8 with the settings below, same window, alternating). Objects alive at start-up (modules, the schema
model) are frozen out of the collections; cycles are still collected, only less often, so memory stays bounded.
The sender is left with the defaults: alternating runs of capture with and without these settings showed no CPU
gain beyond the noise, and capture's peak RSS was higher with them (84 MB against 69 MB).
"""

from __future__ import annotations

import gc

#: young generation: collected after this many net allocations (the default 700 is a few messages' worth)
YOUNG = 50_000
OLDER = 20  # collections of one generation before the next is collected too


def tune() -> None:
    """Freeze what is alive now and collect less often (call once, after start-up's imports)."""
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)
