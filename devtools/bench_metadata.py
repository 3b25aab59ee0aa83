"""Capture with and without column names in the binlog (`scripts/bench-metadata`): the hidden cost of the schema
history.

On a fresh OpenMRS database on a running dev MariaDB: take a checkpoint at the end of the binlog, write an obs-heavy
backlog with `binlog_row_metadata=FULL`, and time `dbsync capture --until-idle --snapshot never` over it; then a new
checkpoint, the same backlog (another seed) written with `MINIMAL`, and the same capture. Both captures read about
the same events; the MINIMAL one names every table map's columns from the schema history instead of the binlog.
Rows/s is change events per wall second of the capture process, start-up included; the captures run `--repeat`
times each, alternately, and the medians (and CPU seconds per row) are compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

from devtools.bench import Bench, count_lines, dbsync_cmd, measure


def _set_metadata(bench: Bench, value: str) -> None:
    with bench.instance.admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(f"SET GLOBAL binlog_row_metadata = '{value}'")


def _capture_once(bench: Bench, name: str, start: Path, attempt: int, events_max: int) -> dict[str, Any]:
    conf, env, dest, _home = bench.config(f"{name}-{attempt}", from_home=start)
    bench.done_with(dest)
    events = bench.workdir / f"{name}.ndjson"
    with events.open("wb") as out:
        # the FULL backlog is followed by the MINIMAL one in the binlog: each capture reads its own backlog only
        m = measure(dbsync_cmd("capture", "--config", str(conf), "--until-idle", "--snapshot", "never",
                               "--max-events", str(events_max)), env=env, stdout=out)
    bench.check(name, m)
    rows = count_lines(events)
    run = {"rows": rows, "seconds": round(m.seconds, 2), "rows_per_second": round(rows / m.seconds),
           "cpu_seconds": round(m.cpu_seconds, 2), "rows_per_cpu_second": round(rows / max(m.cpu_seconds, 1e-6))}
    bench.say(f"  {name} #{attempt + 1}: {rows:,} events in {m.seconds:.2f} s ({run['rows_per_second']:,}/s, "
              f"{m.cpu_seconds:.2f} s CPU)")
    return run


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(r["rows_per_second"] for r in runs)
    cpu = sorted(r["rows_per_cpu_second"] for r in runs)
    return {"rows": runs[0]["rows"], "best_rows_per_second": rates[-1], "median_rows_per_second": median(rates),
            "median_rows_per_cpu_second": median(cpu), "runs": runs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both backlogs first, then the captures alternately (FULL, MINIMAL, FULL, …): the machine's other load
    falls on both alike; medians and CPU per row are compared."""
    from devtools.workload.openmrs import load_openmrs

    bench = Bench(argparse.Namespace(instance=args.instance, workdir=args.workdir, keep=False, small_rows=0,
                                     rows=args.rows, profile=False))
    try:
        load_openmrs(bench.instance.admin, bench.database)
        result: dict[str, Any] = {"database": bench.database, "instance": bench.instance.name}
        starts: dict[str, Path] = {}
        for mode, seed in (("FULL", 1), ("MINIMAL", 2)):
            conf, env, dest, start = bench.config(f"start-{mode.lower()}")
            if mode == "MINIMAL":
                shutil.rmtree(start, ignore_errors=True)
            bench.check("checkpoint", measure(dbsync_cmd("sender", "--config", str(conf), "--until-idle"), env=env))
            bench.done_with(dest)
            _set_metadata(bench, mode)
            try:
                result[f"rows_written_{mode.lower()}"] = bench.generate(args.rows, seed=seed)
            finally:
                _set_metadata(bench, "FULL")
            starts[mode] = start
        runs: dict[str, list[dict[str, Any]]] = {"FULL": [], "MINIMAL": []}
        for attempt in range(args.repeat):
            for mode in ("FULL", "MINIMAL"):
                runs[mode].append(_capture_once(bench, f"capture-{mode.lower()}", starts[mode], attempt,
                                                result[f"rows_written_{mode.lower()}"]))
        for mode, done in runs.items():
            result[mode] = _summary(done)
        full, minimal = result["FULL"], result["MINIMAL"]
        result["minimal_vs_full_median"] = round(minimal["median_rows_per_second"] / full["median_rows_per_second"], 3)
        result["minimal_vs_full_best"] = round(minimal["best_rows_per_second"] / full["best_rows_per_second"], 3)
        result["minimal_vs_full_cpu"] = round(minimal["median_rows_per_cpu_second"] /
                                              full["median_rows_per_cpu_second"], 3)
        return result
    finally:
        bench.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-metadata", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="approximate rows per backlog (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="captures per mode, alternating (default 3)")
    parser.add_argument("--instance", default="site2", help="dev MariaDB instance (default site2)")
    parser.add_argument("--workdir", default=None, help="work dir (default: a temporary directory)")
    args = parser.parse_args(argv)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-metadata-")
    result = run(args)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
