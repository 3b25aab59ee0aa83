"""``python -m devtools.services up|down|status [--only NAME]`` (what scripts/services runs)."""

from __future__ import annotations

import argparse
import sys
import time

from devtools.services import ALL_NAMES, ServiceError, down, ensure_up, services_home, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/services",
                                     description="Throwaway MariaDB + Artemis for dbsync tests and demos.")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--only", action="append", choices=ALL_NAMES, metavar="NAME",
                        help=f"limit to this service (repeatable): {', '.join(ALL_NAMES)}")
    args = parser.parse_args(argv)
    home = services_home()
    t0 = time.monotonic()
    try:
        if args.command == "up":
            ensure_up(args.only, home=home, report=print)
            print(f"services up in {time.monotonic() - t0:.1f}s (state: {home}, endpoints: {home / 'services.json'})")
        elif args.command == "down":
            down(args.only, home=home, report=print)
        else:
            rows = [r for r in status(home) if not args.only or r["name"] in args.only]
            for r in rows:
                print(f"{r['name']:8} {'up' if r['up'] else 'DOWN':5} port {r['port']:18} pid {r['pid'] or '-'}")
            return 0 if all(r["up"] for r in rows) else 1
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
