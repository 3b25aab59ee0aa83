"""scripts/bench's archive phase (issue 28): what keeping every handled message costs.

The same messages file is applied (`dbsync apply`, a fresh central each run) with the archive off
(receiver.archive_days = 0) and on, alternating, PAIRS times in one window; rows/s of each, and beside them the
bytes the archive holds a row (its deflated bodies and rows as counted for the size cap, the bodies alone, and its
tables on disk after ANALYZE) and the bytes central's binlog grew a row (SHOW BINARY LOGS before and after each run:
on minus off is the archive's binlog). Then the cost of pruning it: the day partitions dropped (DROP PARTITION, what
the receiver does) against deleting the same rows (DELETE, which logs every row's full before-image). Each run's
rows are counted in central's tables (devtools/bench_central.py) and must be the messages applied.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
from pathlib import Path
from typing import Any

import benchlib as bl

from dbsync_cli.receiver import archive_prune
from dbsync_cli.sql import quote, sql
from devtools import bench_central as bc
from devtools import bench_verdict as bv
from devtools.workload.generator import generate

PAIRS = 3


def binlog_total(db: Any) -> int:
    return sum(int(row[1]) for row in bl.sql(db, "SHOW BINARY LOGS"))


def server_cpu(svc: Any) -> float:
    """CPU seconds central's mariadbd has used (the machine is shared: CPU, not wall time, is what a row costs)."""
    manifest = json.loads((Path(svc.home) / "services.json").read_text())
    pid = int(Path(manifest["mariadb"]["central"]["pid_file"]).read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def messages_file(svc: Any, work: Path, rows: int, prefix: str, patients: int, obs_per_encounter: int
                  ) -> tuple[Path, int]:
    """~`rows` obs-heavy rows written at a fresh site database, captured and enriched into a messages file."""
    site = bl.fresh_openmrs(svc["site1"].admin, f"{prefix}_ar_site1")
    repl = svc["site1"].repl.with_database(site.database)
    home = work / "home-archive"
    bl.set_checkpoint(home, bl.binlog_end(site))
    conf, env = bl.sender_config(work, repl, svc.artemis.settings(), site="site1", destination="bench.unused",
                                 home=home, server_id=7311, name="site1-archive")
    bl.console.print(f"[bold]archive: writing ~{rows:,} rows at site1 …")
    generate(site, seed=13, site="site1", patients=patients, obs_per_encounter=obs_per_encounter, mutations=0.0)
    events, messages = work / "archive-events.ndjson", work / "archive-messages.ndjson"
    logs = work / "logs-archive"
    with events.open("wb") as f:
        bl.run("capture", ["capture", "--config", str(conf), "--until-idle"], env, logs, stdout=f)
    with events.open("rb") as f, messages.open("wb") as g:
        bl.run("enrich", ["enrich", "--config", str(conf)], env, logs, stdin=f, stdout=g)
    bl.drop_database(svc["site1"].admin, site.database or "")
    return messages, bl.count_messages(messages)


def _apply(svc: Any, work: Path, messages: Path, n: int, prefix: str, tag: str, days: int,
           prune_by: str | None) -> dict[str, Any]:
    admin = svc["central"].admin
    schema = f"{prefix}_{tag}_state"
    central = bl.fresh_central(svc, f"{prefix}_{tag}", schema, ("site1",))
    marks = bc.watermarks(central)
    with central.connect(autocommit=False) as conn:  # today's partitions in place, as the receiver keeps them
        archive_prune.prune(conn, schema, 30, 0)
    conf, env = bl.receiver_config(work, central, svc.artemis.settings(), schema=schema, destination="bench.unused",
                                   home=work / f"home-{tag}", name=f"receiver-{tag}")
    env["DBSYNC_RECEIVER__ARCHIVE_DAYS"] = str(days)
    name = f"apply, archive {'on' if days else 'off'}"
    bl.console.print(f"[bold]{name}: {n:,} messages …")
    before, cpu = binlog_total(admin), server_cpu(svc)
    with messages.open("rb") as f:
        proc = bl.run("apply", ["apply", "--config", str(conf)], env, work / "logs-archive", stdin=f)
    grown, cpu = binlog_total(admin) - before, server_cpu(svc) - cpu
    found = bc.rows_since(central, marks)  # counted in central's tables: each message of the file inserts a row
    bl.check([bv.counted(f"{name}: rows found in central's tables against the messages applied", n, found)],
             central=central, schema=schema)
    figures: dict[str, Any] = {"stage": name, "rows": found, "seconds": round(proc.seconds, 1),
                               "rows_per_second": round(found / proc.seconds), "binlog_bytes": grown,
                               "apply_cpu_seconds": round(proc.cpu, 2), "server_cpu_seconds": round(cpu, 2)}
    if days:
        bl.sql(central, sql("ANALYZE TABLE {s}.archive, {s}.archive_blob", s=quote(schema)))
        ((rows, counted, bodies),) = bl.sql(central, sql(
            "SELECT SUM(n_rows), SUM(bytes), SUM(LENGTH(body)) FROM {}.archive_blob", quote(schema)))
        ((disk,),) = bl.sql(central, "SELECT SUM(DATA_LENGTH + INDEX_LENGTH) FROM information_schema.TABLES WHERE "
                                     "TABLE_SCHEMA = %s AND TABLE_NAME IN ('archive', 'archive_blob')", (schema,))
        figures.update(archive_rows=int(rows), archive_bytes=int(counted), body_bytes=int(bodies),
                       disk_bytes=int(disk))
        before = binlog_total(admin)
        if prune_by == "drop partition":
            with central.connect(autocommit=False) as conn:
                archive_prune.prune(conn, schema, 30, 0, today=dt.datetime.now(dt.UTC).date() + dt.timedelta(days=40))
        else:
            bl.sql(central, sql("DELETE FROM {}.archive", quote(schema)))
            bl.sql(central, sql("DELETE FROM {}.archive_blob", quote(schema)))
        left = bl.sql(central, sql("SELECT COUNT(*) FROM {}.archive", quote(schema)))[0][0]
        figures.update(prune_by=prune_by, prune_binlog_bytes=binlog_total(admin) - before, left_after_prune=left)
    bl.drop_database(admin, central.database or "")
    bl.drop_database(admin, schema)
    return figures


def run_archive(svc: Any, work: Path, rows: int, prefix: str, out: dict[str, Any], patients: int,
                obs_per_encounter: int) -> None:
    messages, n = messages_file(svc, work, rows, prefix, patients, obs_per_encounter)
    runs = []
    for number in range(PAIRS):
        runs.append(_apply(svc, work, messages, n, prefix, f"ar{number}off", 0, None))
        runs.append(_apply(svc, work, messages, n, prefix, f"ar{number}on", 30,
                           "drop partition" if number % 2 == 0 else "delete"))
    off = statistics.median(r["rows_per_second"] for r in runs if "archive_rows" not in r)
    on_runs = [r for r in runs if "archive_rows" in r]
    on = statistics.median(r["rows_per_second"] for r in on_runs)
    cpu_off = statistics.median(r["apply_cpu_seconds"] + r["server_cpu_seconds"] for r in runs
                                if "archive_rows" not in r)
    cpu_on = statistics.median(r["apply_cpu_seconds"] + r["server_cpu_seconds"] for r in on_runs)
    binlog_off = statistics.median(r["binlog_bytes"] for r in runs if "archive_rows" not in r)
    binlog_on = statistics.median(r["binlog_bytes"] for r in on_runs)
    last = on_runs[-1]
    extra = binlog_on - binlog_off
    out["archive"] = {
        "runs": runs, "messages": n, "rows_per_second_off": off, "rows_per_second_on": on,
        "on_off_ratio": round(on / off, 3),
        "cpu_us_per_row_off": round(cpu_off / n * 1e6), "cpu_us_per_row_on": round(cpu_on / n * 1e6),
        "cpu_on_off_ratio": round(cpu_on / cpu_off, 3),
        "archive_bytes_per_row": round(last["archive_bytes"] / n, 1),
        "body_bytes_per_row": round(last["body_bytes"] / n, 1),
        "disk_bytes_per_row": round(last["disk_bytes"] / n, 1),
        "binlog_bytes_per_row_off": round(binlog_off / n, 1), "binlog_bytes_per_row_on": round(binlog_on / n, 1),
        "archive_binlog_bytes_per_row": round(extra / n, 1),
        "archive_binlog_to_archive_bytes": round(extra / last["archive_bytes"], 2),
        "prune": {r["prune_by"]: {"binlog_bytes": r["prune_binlog_bytes"],
                                  "binlog_bytes_per_row": round(r["prune_binlog_bytes"] / n, 2),
                                  "rows_left": r["left_after_prune"]} for r in on_runs},
    }


def report(result: dict[str, Any]) -> None:
    a = result.get("archive")
    if not a:
        return
    bl.print_table("apply with the archive off and on (same messages, alternating, one window)",
                   ["run", "messages", "seconds", "rows/s", "apply CPU s", "central CPU s", "binlog B/row"],
                   [[r["stage"], r["rows"], r["seconds"], r["rows_per_second"], r["apply_cpu_seconds"],
                     r["server_cpu_seconds"], round(r["binlog_bytes"] / r["rows"])] for r in a["runs"]],
                   caption=f"median rows/s off {a['rows_per_second_off']:,}, on {a['rows_per_second_on']:,} "
                           f"({a['on_off_ratio']:.2f}×); CPU a row (apply + central's server) off "
                           f"{a['cpu_us_per_row_off']} µs, on {a['cpu_us_per_row_on']} µs "
                           f"({a['cpu_on_off_ratio']:.2f}×)")
    bl.print_table("the archive's bytes a row", ["what", "bytes/row"],
                   [["archive (deflated bodies + rows, as the size cap counts)", a["archive_bytes_per_row"]],
                    ["of which deflated bodies", a["body_bytes_per_row"]],
                    ["its tables on disk (data + indexes, after ANALYZE)", a["disk_bytes_per_row"]],
                    ["central's binlog, archive off", a["binlog_bytes_per_row_off"]],
                    ["central's binlog, archive on", a["binlog_bytes_per_row_on"]],
                    ["the archive's binlog (on − off)", a["archive_binlog_bytes_per_row"]],
                    ["  ÷ the archive's own bytes", a["archive_binlog_to_archive_bytes"]],
                    *[[f"pruning it by {how}: binlog", p["binlog_bytes_per_row"]] for how, p in a["prune"].items()]])
