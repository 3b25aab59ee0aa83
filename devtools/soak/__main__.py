"""`scripts/soak --minutes N --seed S`: see devtools/soak/__init__.py."""

from __future__ import annotations

import argparse
import faulthandler
import os
import random
import signal
import sys
from pathlib import Path

from devtools.services.common import repo_root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description="A seeded, randomized run of the whole product with faults, "
                                "checked by an independent oracle.")
    p.add_argument("--minutes", type=float, default=3, help="length of the workload and fault phase")
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--home", type=Path, default=Path(os.environ.get("DBSYNC_SOAK_HOME", repo_root() / ".soak")),
                   help="the soak's own services and run files (default <repo>/.soak or $DBSYNC_SOAK_HOME)")
    p.add_argument("--port-offset", type=int, default=int(os.environ.get("DBSYNC_SOAK_PORT_OFFSET", "3800")),
                   help="added to the default ports (default 3800, so that Artemis's 61616 + it stays a port; "
                   "or $DBSYNC_SOAK_PORT_OFFSET)")
    p.add_argument("--drain-timeout", type=float, default=None, help="seconds (default max(180, the run))")
    p.add_argument("--keep", action="store_true", help="keep the databases running afterwards")
    for tool in ("link", "clock", "editors", "hostile"):
        p.add_argument(f"--no-{tool}", action="store_true", help=f"run without devtools.field's {tool}")
    a = p.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where every thread is
    seed = a.seed if a.seed is not None else random.randrange(1, 1_000_000)
    print(f"seed {seed}", flush=True)

    def interrupted(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    from devtools.soak.run import soak

    try:
        return soak(seed, a.minutes, a.home.resolve(), a.port_offset, link=not a.no_link, clock=not a.no_clock,
                    editors=not a.no_editors, hostile=not a.no_hostile, drain_timeout=a.drain_timeout, keep=a.keep)
    except KeyboardInterrupt:
        print("interrupted: everything the soak started was stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
