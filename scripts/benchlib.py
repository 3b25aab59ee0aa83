"""Helpers shared by scripts/bench-receiver and scripts/bench: fresh OpenMRS databases on the dev services,
sender/receiver configs without secrets, processes measured for wall time and peak RSS, and result tables.

Peak RSS is ``VmHWM`` from ``/proc/<pid>/status``, polled every 100 ms by a thread until the process exits (the
last 100 ms of a process can be missed). Not ``ru_maxrss`` from wait4/RUSAGE_CHILDREN: Linux carries the pre-exec
high-water mark of the forked child into it, so every child would report at least this (large) Python process's
RSS at the time of the fork. CPU seconds (user + system) do come from the rusage of ``os.wait4(pid)``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dbsync_cli.broker import BrokerSettings  # noqa: E402
from dbsync_cli.db import DbParams  # noqa: E402
from dbsync_cli.receiver import state  # noqa: E402
from devtools import bench_verdict as bv  # noqa: E402
from devtools.services import Services, ensure_up  # noqa: E402
from devtools.workload.openmrs import load_openmrs  # noqa: E402

console = Console(stderr=True)


def dbsync_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dbsync_cli", *args]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------------- databases

#: what this run created and has not dropped yet (databases by server, broker queues): the evidence a failed run
#: keeps; with KEEP (the scripts' --keep) nothing is dropped at all
KEEP = False
created: dict[tuple[str, int], set[str]] = {}
queues: set[str] = set()


def _drop(admin: DbParams, name: str) -> None:
    with admin.with_database(None).connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def _created(admin: DbParams, name: str) -> None:
    created.setdefault((admin.host, admin.port), set()).add(name)


def drop_database(admin: DbParams, name: str) -> None:
    """Drop a database this run is done with (kept, and listed at the end, with --keep)."""
    if KEEP:
        return
    _drop(admin, name)
    created.get((admin.host, admin.port), set()).discard(name)


def fresh_openmrs(admin: DbParams, name: str) -> DbParams:
    _drop(admin, name)
    _created(admin, name)
    return load_openmrs(admin, name)


def sql(db: DbParams, statement: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def fresh_central(svc: Services, name: str, schema: str, sites: tuple[str, ...]) -> DbParams:
    central = fresh_openmrs(svc["central"].admin, name)
    fresh_state(central, schema, sites)
    return central


def fresh_state(central: DbParams, schema: str, sites: tuple[str, ...]) -> None:
    """A new receiver-state schema for `central` (an earlier one of that name dropped) with `sites` added."""
    _drop(central, schema)
    _created(central, schema)
    with central.connect(autocommit=False) as conn:
        state.migrate(conn, schema, central.database)
        for site in sites:
            state.add_site(conn, schema, site)


def binlog_end(db: DbParams) -> dict[str, Any]:
    """A checkpoint at the end of the site's binlog (what a sender would resume from)."""
    file, pos = sql(db, "SHOW MASTER STATUS")[0][:2]
    return {"file": file, "pos": int(pos), "row": -1, "snapshot": False}


def set_checkpoint(home: Path, source: dict[str, Any]) -> None:
    from dbsync_cli.sender.checkpoint import CheckpointStore

    home.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(home)
    store.save(source)
    store.close()


# ------------------------------------------------------------------------------------------------------ configs

def sender_config(work: Path, repl: DbParams, broker: BrokerSettings, *, site: str, destination: str, home: Path,
                  server_id: int, destination_type: str = "queue", batch: int = 500, snapshot: str = "never",
                  name: str | None = None) -> tuple[Path, dict[str, str]]:
    path = work / f"sender-{name or site}.toml"
    path.write_text(
        f'home = "{home}"\nlog_level = "INFO"\n'
        f'[sender]\nid = "{site}"\nserver_id = {server_id}\ntimezone = "UTC"\nsnapshot = "{snapshot}"\n'
        f'min_binlog_retention_hours = 0\n'
        f'[site_db]\nhost = "{repl.host}"\nport = {repl.port}\ndatabase = "{repl.database}"\nuser = "{repl.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
        f'destination_type = "{destination_type}"\nbatch_messages = {batch}\n'
        + (f'ca_file = "{broker.ca_file}"\n' if broker.ca_file else "")
    )
    env = {**os.environ, "DBSYNC_SITE_DB__PASSWORD": repl.password, "DBSYNC_BROKER__PASSWORD": broker.password or "",
           "PYTHONPATH": str(ROOT)}
    return path, env


def receiver_config(work: Path, central: DbParams, broker: BrokerSettings, *, schema: str, destination: str,
                    home: Path, batch: int = 500, name: str = "receiver") -> tuple[Path, dict[str, str]]:
    path = work / f"{name}.toml"
    path.write_text(
        f'home = "{home}"\nlog_level = "INFO"\n'
        f'[receiver]\nsite_id = "central"\ntimezone = "UTC"\nbatch_messages = {batch}\nretry_interval_seconds = 5\n'
        f'[central_db]\nhost = "{central.host}"\nport = {central.port}\ndatabase = "{central.database}"\n'
        f'state_schema = "{schema}"\nuser = "{central.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
    )
    env = {**os.environ, "DBSYNC_CENTRAL_DB__PASSWORD": central.password,
           "DBSYNC_BROKER__PASSWORD": broker.password or "", "PYTHONPATH": str(ROOT)}
    return path, env


# ---------------------------------------------------------------------------------------------------- processes

def process_figures(proc: Proc) -> dict[str, Any]:
    """Peak RSS (also with its children, the sender's capture process) and CPU seconds of one process."""
    out: dict[str, Any] = {"peak_rss_mb": round(proc.peak_rss_mb, 1), "cpu_seconds": round(proc.cpu, 1)}
    if proc.children_rss_mb:
        out["peak_rss_total_mb"] = round(proc.peak_rss_total_mb, 1)
    return out


def _hwm_mb(status: str) -> float | None:
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


@dataclass
class Proc:
    """A dbsync process we reap ourselves (wait4 gives its CPU time, polling its VmHWM)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    exit_code: int | None = None
    peak_rss_mb: float = 0.0  # VmHWM, polled
    children_rss_mb: dict[int, float] = field(default_factory=dict)  # VmHWM of each child process, polled
    cpu: float = 0.0  # user + system CPU seconds of the process

    def __post_init__(self) -> None:
        self._watch = threading.Thread(target=self._poll_hwm, daemon=True)
        self._watch.start()

    def _poll_hwm(self) -> None:
        path = Path(f"/proc/{self.popen.pid}/status")
        while self.exit_code is None:
            try:
                text = path.read_text()
            except OSError:
                return
            hwm = _hwm_mb(text)
            if hwm is None:
                return  # a zombie has no memory fields any more
            self.peak_rss_mb = max(self.peak_rss_mb, hwm)
            for child in _children(self.popen.pid):  # the sender's capture process
                try:
                    child_hwm = _hwm_mb(Path(f"/proc/{child}/status").read_text())
                except OSError:
                    continue
                if child_hwm is not None:
                    self.children_rss_mb[child] = max(self.children_rss_mb.get(child, 0.0), child_hwm)
            time.sleep(0.1)

    @property
    def peak_rss_total_mb(self) -> float:
        """The process's peak plus each child's: an upper bound of what they held at once."""
        return self.peak_rss_mb + sum(self.children_rss_mb.values())

    def alive(self) -> bool:
        if self.exit_code is not None:
            return False
        pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, usage)
        return False

    def _reaped(self, status: int, usage: Any) -> None:
        self.seconds = time.perf_counter() - self.started
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code
        self.cpu = usage.ru_utime + usage.ru_stime

    def wait(self, timeout: float = 3600) -> int:
        if self.exit_code is not None:
            return self.exit_code
        timer = threading.Timer(timeout, self.popen.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(self.popen.pid, 0)
        finally:
            timer.cancel()
        self._reaped(status, usage)
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, timeout: float = 120) -> int:
        if self.exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check(self) -> None:
        if self.exit_code not in (0, None):
            raise RuntimeError(f"{self.name} exited {self.exit_code}:\n{self.tail()}")


def start(name: str, args: list[str], env: dict[str, str], logdir: Path, *, stdin: IO[bytes] | int | None = None,
          stdout: IO[bytes] | int | None = None) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    with log.open("ab") as err:
        popen = subprocess.Popen(dbsync_cmd(*args), env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                 stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=err)
    return Proc(name, popen, log)


def run(name: str, args: list[str], env: dict[str, str], logdir: Path, *, stdin: IO[bytes] | None = None,
        stdout: IO[bytes] | None = None, timeout: float = 3600) -> Proc:
    proc = start(name, args, env, logdir, stdin=stdin, stdout=stdout)
    proc.wait(timeout)
    proc.check()
    return proc


def pipeline(names: list[str], commands: list[list[str]], env: dict[str, str], logdir: Path, *,
             stdout: IO[bytes] | None = None, timeout: float = 3600) -> list[Proc]:
    """`a | b | …`, each reaped with wait4; each process's seconds run until it exits."""
    procs: list[Proc] = []
    for index, (name, args) in enumerate(zip(names, commands, strict=True)):
        last = index == len(commands) - 1
        upstream = procs[-1].popen.stdout if procs else None
        procs.append(start(name, args, env, logdir, stdin=upstream,
                           stdout=(stdout if stdout is not None else subprocess.DEVNULL) if last else subprocess.PIPE))
        if upstream is not None:
            upstream.close()
    for proc in procs:
        proc.wait(timeout)
    for proc in procs:
        proc.check()
    return procs


@contextlib.contextmanager
def stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    """SIGTERM whatever still runs on the way out (and kill what does not stop)."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.exit_code is None:
                with contextlib.suppress(Exception):
                    proc.stop(60)
            if proc.exit_code is None:
                proc.popen.kill()
                proc.wait(30)


# ----------------------------------------------------------------------------------------------------- workload

def rows_of(truth: Any) -> int:
    return int(truth.stats["rows_created"] + truth.stats["rows_mutated"])


def count_messages(path: Path) -> int:
    """Sync messages in an NDJSON file (heartbeats excluded)."""
    count = 0
    with path.open("rb") as f:
        for line in f:
            if line.strip() and b'"op":"h"' not in line:
                count += 1
    return count


def applied_count(central: DbParams, schema: str) -> tuple[int, dt.datetime | None]:
    """Messages applied per receiver_sync_status, and the latest last_sync_date (UTC)."""
    row = sql(central, f"SELECT COALESCE(SUM(messages), 0), MAX(last_sync_date) FROM `{schema}`.receiver_sync_status")  # noqa: S608
    return int(row[0][0]), row[0][1]


def wait_applied(central: DbParams, schema: str, expected: int, procs: list[Proc], timeout: float,
                 what: str = "central") -> dt.datetime:
    """Poll until receiver_sync_status counts `expected` applied messages; returns the last apply time (UTC)."""
    deadline = time.monotonic() + timeout
    shown = -1
    while True:
        count, last = applied_count(central, schema)
        if count >= expected and last is not None:
            return last
        for proc in procs:
            if not proc.alive():
                proc.check()
                raise RuntimeError(f"{proc.name} stopped early: {proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {count} of {expected} messages applied after {timeout:.0f} s")
        if count != shown and console.is_terminal:
            console.log(f"{what}: {count}/{expected} applied")
            shown = count
        time.sleep(0.5)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuidlib.uuid4().hex[:6]}"


def services() -> Services:
    return ensure_up()


def central_cpu() -> float:
    """CPU seconds central's mariadbd has used so far (user + system): read before and after a stage, the server's
    share of its work beside the dbsync process's own CPU (0.0 when the pid cannot be read)."""
    from devtools.services.mariadb import instance

    pid = instance("central").pid()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------------------------------- output

def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every core summed (/proc/stat: busy is everything but
    idle and iowait): read before and after a window, busy ÷ wall says how many cores were in use."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def artemis_cpu(svc: Services) -> float:
    """CPU seconds the Artemis JVM has used so far (0.0 when its pid cannot be read)."""
    try:
        pid = int(Path(json.loads((Path(svc.home) / "services.json").read_text())["artemis"]["pid_file"])
                  .read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, KeyError, ValueError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_table(title: str, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
    table = Table(title=title, caption=caption)
    for index, col in enumerate(columns):
        table.add_column(col, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*["" if v is None else (f"{v:,.0f}" if isinstance(v, int | float) and abs(v) >= 100
                                              else f"{v:.3g}" if isinstance(v, float) else str(v)) for v in row])
    Console(width=None if console.is_terminal else 160).print(table)


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"results written to {path}")


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# ------------------------------------------------------------------------------- committed vs arrived, evidence

def progress(central: DbParams, schema: str) -> tuple[int, int, int]:
    """The receiver's progress: messages applied, inbox rows, retry-queue rows (unchanged = nothing moves)."""
    row = sql(central, f"SELECT (SELECT COALESCE(SUM(messages), 0) FROM `{schema}`.receiver_sync_status), "  # noqa: S608
                       f"(SELECT COUNT(*) FROM `{schema}`.inbox), (SELECT COUNT(*) FROM `{schema}`.receiver_retry_queue)")
    return int(row[0][0]), int(row[0][1]), int(row[0][2])


def judge_truth(central: DbParams, schema: str, truth: Any, site: str, what: str, *, timeout: float = 600,
                quiet: float = 30) -> bv.Verdict:
    """Every row the workload generator committed at `site` is at central with the values it committed; polled
    until so, or until nothing moved for `quiet` seconds (rows in flight are not missing)."""
    from devtools.workload.truth import compare

    expected = sum(len(rows) for rows in truth.tables.values())

    def poll() -> tuple[bv.Verdict, Any]:
        found = bv.from_differences(what, expected, compare(central, truth, username_suffix=f"|{site}", limit=None))
        return found, progress(central, schema)

    return bv.settle(poll, timeout=timeout, quiet=quiet, interval=2.0)


def whereabouts(central: DbParams, schema: str, rows: list[tuple[str, str]], limit: int = bv.SHOWN) -> list[str]:
    """Where central's receiver state has each missing row: its sync bookkeeping (entity_hash), the retry and
    conflict queues (by entity key), plus the skip counts and the inbox size: a first look at the kept evidence."""
    s = f"`{schema}`"
    lines = [f"where central's receiver state ({schema}) has the missing rows:"]
    for table, uuid in rows[:limit]:
        found = []
        for what, statement in (
                ("entity_hash", f"SELECT CONCAT_WS(' ', 'site', site, 'owner', owner, 'from', src_file, src_pos, "  # noqa: S608
                                f"src_row, 'at', date_synced) FROM {s}.entity_hash WHERE table_name = %s AND "
                                "entity_uuid = %s"),
                ("retry queue", f"SELECT CONCAT_WS(' ', id, message_id, reason) FROM {s}.receiver_retry_queue "  # noqa: S608
                                "WHERE %s IS NOT NULL AND entity_key LIKE CONCAT('%%', %s, '%%')"),
                ("conflict queue", f"SELECT CONCAT_WS(' ', id, message_id, reason) FROM {s}.receiver_conflict_queue "  # noqa: S608
                                   "WHERE %s IS NOT NULL AND entity_uuid = %s")):
            try:
                hits = sql(central, statement, (table, uuid))
            except Exception as exc:  # noqa: BLE001 - a first look; the state is kept for a closer one
                hits = [(f"(could not look: {exc})",)]
            found += [f"{what}: {h[0]}" for h in hits]
        lines.append(f"  {table} {uuid}: {'; '.join(found) or 'nowhere (no entity_hash, not parked)'}")
    try:
        skipped = sql(central, f"SELECT site, reason, table_name, count, last_message_id FROM {s}.receiver_skipped")  # noqa: S608
        inbox = sql(central, f"SELECT COUNT(*) FROM {s}.inbox")[0][0]  # noqa: S608
        lines.append(f"  inbox rows left: {inbox}; skipped by apply (site, reason, table, count, last id): "
                     + ("; ".join(" ".join(str(v) for v in row) for row in skipped) or "none"))
    except Exception as exc:  # noqa: BLE001
        lines.append(f"  (could not read the skip counts: {exc})")
    return lines


def check(verdicts: list[bv.Verdict], out: dict[str, Any] | None = None, *, central: DbParams | None = None,
          schema: str | None = None) -> None:
    """Print each verdict line; raise RowsMissing (the run fails and keeps its evidence) when one failed, with
    where central's receiver state has the missing rows when `central` and `schema` are given."""
    for verdict in verdicts:
        console.print(verdict.line(), style="green" if verdict.ok else "bold red", markup=False, highlight=False,
                      soft_wrap=True)
        if out is not None:
            out.setdefault("verdicts", []).append(verdict.as_dict())
    failed = [v for v in verdicts if not v.ok]
    if failed:
        extra: list[str] = []
        if central is not None and schema is not None:
            rows = [row for v in failed if v.found is None  # a count names no row to look up
                    for row in [*v.missing, *((t, u) for t, u, _ in v.different)]]
            extra = whereabouts(central, schema, rows)
        raise bv.RowsMissing(failed, extra)


def keep_evidence(work: Path, script: str) -> list[str]:
    """Write <work>/evidence.json (what this run left: databases by server, queues, the work directory) and
    return the lines that say where it is and how to clean it up."""
    databases: list[dict[str, Any]] = [{"host": host, "port": port, "databases": sorted(names)}
                 for (host, port), names in sorted(created.items()) if names]
    (work / "evidence.json").write_text(json.dumps({"work": str(work), "servers": databases,
                                                    "queues": sorted(queues)}, indent=2) + "\n")
    lines = ["kept for inspection:", f"  work directory (configs, sender homes with checkpoints, logs): {work}"]
    lines += [f"  databases on {d['host']}:{d['port']}: {', '.join(d['databases'])}" for d in databases]
    if queues:
        lines.append(f"  broker queues: {', '.join(sorted(queues))}")
    lines.append(f"clean up with: {script} --cleanup {work}")
    return lines


def cleanup(work: Path) -> None:
    """Drop what a kept run left (its evidence.json), delete its queues, remove its work directory."""
    from devtools.bench import delete_queues

    kept: dict[str, Any] = json.loads((work / "evidence.json").read_text())
    svc = services()
    admins = {(i.admin.host, i.admin.port): i.admin for i in (svc["central"], svc["site1"], svc["site2"])}
    for server in kept["servers"]:
        admin = admins.get((server["host"], server["port"]))
        if admin is None:
            console.print(f"no dev service at {server['host']}:{server['port']}: drop {server['databases']} by hand")
            continue
        for name in server["databases"]:
            _drop(admin, name)
            console.print(f"dropped {name} on {server['host']}:{server['port']}")
    if kept["queues"] and svc.artemis is not None:
        delete_queues(svc.artemis.settings(), kept["queues"])
        console.print(f"deleted queues {', '.join(kept['queues'])}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    console.print(f"removed {work}")
