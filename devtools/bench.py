"""Sender benchmark (`scripts/bench-sender`): each stage alone and the whole sender, as separate processes.

On a fresh OpenMRS database on a running dev MariaDB, the workload generator writes obs-heavy rows after a checkpoint
was taken; then, each as its own `python -m dbsync_cli` process started from that same checkpoint:

  (a) capture   `dbsync capture --until-idle --snapshot never` → events file
  (b) enrich    events file → `dbsync enrich` → messages file
  (c) publish   messages file → `dbsync publish` → a fresh queue
  (d) sender    `dbsync sender --until-idle` → a fresh queue, once at the small size and once at the full size
  (e) pipe      `dbsync capture | dbsync enrich | dbsync publish` → a fresh queue (three processes)

Rows/s is change events (binlog rows) per wall second of the process, start-up included. Peak RSS is `VmHWM` (the
kernel's resident high-water mark of the process's own memory map, reset by exec) read from /proc/<pid>/status every
50 ms while it runs; the last reading before exit is the peak (it is monotonic). `ru_maxrss` from wait4/
RUSAGE_CHILDREN is not used: Linux folds the forking parent's high-water mark into it, so every child would report
at least this benchmark process's own peak. CPU seconds (user + system) come from the rusage of `os.wait4()`.
Each queue is deleted right after its measurement through Artemis' management address (no password on any command
line), so that the shared broker never holds more than one benchmark backlog.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import queue
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import stomp

from dbsync_cli.broker import BrokerSettings, open_connection
from dbsync_cli.db import DbParams

ROWS_PER_PATIENT = 163  # generate(obs_per_encounter=20, mutations=0) writes about this many rows per patient


# ------------------------------------------------------------------------------------------- measuring processes


@dataclass
class Run:
    name: str
    rows: int
    seconds: float
    peak_rss_mb: float
    exit_code: int
    note: str = ""
    cpu_seconds: float = 0.0
    services_cpu: dict[str, float] = field(default_factory=dict)  # CPU the site DB and broker used meanwhile
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second), "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 2), "peak_rss_mb": round(self.peak_rss_mb, 1)}


@dataclass
class Measured:
    exit_code: int
    seconds: float
    peak_rss_mb: float
    stderr: bytes
    cpu_seconds: float = 0.0
    services_cpu: dict[str, float] = field(default_factory=dict)


SERVICE_PIDS: dict[str, int] = {}  # name → pid of the services whose CPU is reported beside each run


class ServicesCpu:
    def __init__(self) -> None:
        self.start = {name: process_cpu(pid) for name, pid in SERVICE_PIDS.items()}

    def used(self) -> dict[str, float]:
        return {name: round(process_cpu(SERVICE_PIDS[name]) - before, 2) for name, before in self.start.items()}


class PeakRss:
    """Polls /proc/<pid>/status VmHWM (kB) until stopped; `mb` is the last reading, i.e. the peak."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval, self.kb = pid, interval, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.done.is_set():
            try:
                with open(path, "rb") as fh:
                    for line in fh:
                        if line.startswith(b"VmHWM:"):
                            self.kb = max(self.kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                return
            self.done.wait(self.interval)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.kb / 1024


def process_cpu(pid: int | None) -> float:
    """utime + stime of a running process (all its threads), in seconds; 0 if unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reap(proc: subprocess.Popen[bytes], rss: PeakRss) -> tuple[int, float, float]:
    """Wait for one process: exit code, peak RSS MB (VmHWM), CPU seconds (wait4 rusage)."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    return proc.returncode, rss.stop(), usage.ru_utime + usage.ru_stime


def measure(cmd: list[str], *, env: dict[str, str] | None = None, stdin: IO[bytes] | None = None,
            stdout: IO[bytes] | None = None, timeout: float = 3600) -> Measured:
    """Run one process to completion: wall time, its own peak RSS (VmHWM) and CPU time."""
    with tempfile.TemporaryFile() as err:
        services = ServicesCpu()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.DEVNULL, stderr=err)
        rss = PeakRss(proc.pid)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            code, peak, cpu = _reap(proc, rss)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        err.seek(0)
        return Measured(code, seconds, peak, err.read(), cpu, services.used())


def measure_pipeline(cmds: list[list[str]], *, env: dict[str, str] | None = None,
                     timeout: float = 3600) -> list[Measured]:
    """`a | b | c`: each process measured like `measure`, wall time until the last one exits."""
    errs = [tempfile.TemporaryFile() for _ in cmds]
    procs: list[subprocess.Popen[bytes]] = []
    services = ServicesCpu()
    started = time.perf_counter()
    try:
        for index, (cmd, err) in enumerate(zip(cmds, errs, strict=True)):
            last = index == len(cmds) - 1
            procs.append(subprocess.Popen(
                cmd, env=env, stdin=procs[-1].stdout if procs else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if last else subprocess.PIPE, stderr=err))
            previous = procs[-2].stdout if index else None
            if previous is not None:
                previous.close()  # only the next process holds the pipe
        watchers = [PeakRss(p.pid) for p in procs]
        def kill_all() -> None:
            for p in procs:
                p.kill()

        timer = threading.Timer(timeout, kill_all)
        timer.start()
        results = []
        try:
            for proc, err, rss in zip(procs, errs, watchers, strict=True):
                code, peak, cpu = _reap(proc, rss)
                err.seek(0)
                results.append(Measured(code, time.perf_counter() - started, peak, err.read(), cpu, services.used()))
        finally:
            timer.cancel()
        return results
    finally:
        for err in errs:
            err.close()


def dbsync_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dbsync_cli", *args]


def count_lines(path: Path, *, skip_heartbeats: bool = True) -> int:
    count = 0
    with path.open("rb") as fh:
        for line in fh:
            if line.strip() and not (skip_heartbeats and line.startswith(b'{"op":"h"')):
                count += 1
    return count


def confirmed(stderr: bytes, what: str) -> int:
    found = re.findall(rb"%s: (\d+) messages confirmed" % what.encode(), stderr)
    return int(found[-1]) if found else 0


# ------------------------------------------------------------------------------------------- broker housekeeping


class _Replies(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)


def delete_queues(broker: BrokerSettings, names: Iterable[str], timeout: float = 120) -> dict[str, bool]:
    """Destroy queues (and their addresses) through Artemis' management address over STOMP.

    The management operation reads a text body, so the SEND must go without content-length.
    """
    names = list(names)
    if not names:
        return {}
    replies = _Replies()
    conn = open_connection(dataclasses.replace(broker, heartbeats=(0, 0)), listener=replies)
    reply_to = f"dbsync.bench.mgmt.{uuid.uuid4().hex[:8]}"
    done: dict[str, bool] = {}
    try:
        conn.auto_content_length = False
        conn.subscribe(reply_to, id="mgmt", ack="auto", headers={"subscription-type": "ANYCAST"})
        for name in names:
            conn.send("activemq.management", json.dumps([name, True, True]),
                      headers={"_AMQ_ResourceName": "broker", "_AMQ_OperationName": "destroyQueue",
                               "reply-to": reply_to})
            try:
                frame = replies.frames.get(timeout=timeout)
                done[name] = frame.headers.get("_AMQ_OperationSucceeded") == "true"
            except queue.Empty:
                done[name] = False
        conn.unsubscribe(id="mgmt")
        conn.send("activemq.management", json.dumps([reply_to, True, True]), receipt="gone",
                  headers={"_AMQ_ResourceName": "broker", "_AMQ_OperationName": "destroyQueue"})
        time.sleep(0.2)
    finally:
        conn.disconnect()
    return done


# ------------------------------------------------------------------------------------------- set-up


def sender_config(workdir: Path, site_db: DbParams, broker: BrokerSettings, *, home: Path, destination: str,
                  server_id: int, name: str) -> tuple[Path, dict[str, str]]:
    """A sender TOML without secrets, plus the environment that carries the passwords."""
    path = workdir / f"{name}.toml"
    path.write_text(
        f'home = "{home}"\nlog_level = "INFO"\n'
        f'[sender]\nid = "bench"\nserver_id = {server_id}\nsnapshot = "never"\nmin_binlog_retention_hours = 0\n'
        f'[site_db]\nhost = "{site_db.host}"\nport = {site_db.port}\ndatabase = "{site_db.database}"\n'
        f'user = "{site_db.user}"\n'
        f'[broker]\nurl = "{broker.url}"\nuser = "{broker.user}"\ndestination = "{destination}"\n'
        + (f'ca_file = "{broker.ca_file}"\n' if broker.ca_file else "")
    )
    env = {**os.environ, "DBSYNC_SITE_DB__PASSWORD": site_db.password,
           "DBSYNC_BROKER__PASSWORD": broker.password or ""}
    return path, env


class Bench:
    def __init__(self, args: argparse.Namespace):
        from devtools.services import ensure_up

        self.args = args
        services = ensure_up()
        assert services.artemis is not None
        self.instance = services[args.instance]
        self.broker = services.artemis.settings()
        self.database = f"bench_sender_{uuid.uuid4().hex[:8]}"
        self.admin = self.instance.admin.with_database(self.database)
        self.repl = self.instance.repl.with_database(self.database)
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sender-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server_id = random.randint(100_000, 4_000_000)
        self.queues: list[str] = []
        self.runs: list[Run] = []
        self.data: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def config(self, name: str, *, from_home: Path | None = None) -> tuple[Path, dict[str, str], str, Path]:
        """A config with its own home (a copy of the start checkpoint) and its own fresh queue."""
        home = self.workdir / f"home-{name}"
        if from_home is not None:
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(from_home, home)
        dest = f"bench.sender.{name}.{uuid.uuid4().hex[:8]}"
        self.queues.append(dest)
        path, env = sender_config(self.workdir, self.repl, self.broker, home=home, destination=dest,
                                  server_id=self.server_id, name=name)
        return path, env, dest, home

    def done_with(self, dest: str) -> None:
        """Delete a benchmark queue right away: the shared broker must not hold several 200k backlogs."""
        if self.args.keep:
            return
        try:
            if delete_queues(self.broker, [dest]).get(dest):
                self.queues.remove(dest)
        except Exception as exc:  # noqa: BLE001 - retried in cleanup
            self.say(f"  could not delete queue {dest} yet ({exc})")

    def check(self, name: str, m: Measured) -> None:
        (self.workdir / f"{name.replace(' ', '-')}.err").write_bytes(m.stderr)
        if m.exit_code != 0:
            raise SystemExit(f"bench: {name} exited {m.exit_code}: {m.stderr.decode(errors='replace')[-2000:]}")

    def generate(self, rows: int, seed: int) -> int:
        from devtools.workload.generator import generate

        patients = max(1, round(rows / ROWS_PER_PATIENT))
        self.say(f"generating ~{rows:,} rows ({patients} patients, obs_per_encounter=20, no mutations) …")
        truth = generate(self.admin, seed=seed, patients=patients, obs_per_encounter=20, mutations=0)
        self.say(f"  {truth.stats['rows_created']:,} rows in {truth.stats['seconds']:.1f} s")
        return int(truth.stats["rows_created"])

    def record(self, name: str, rows: int, m: Measured, note: str, **extra: Any) -> None:
        self.runs.append(Run(name, rows, m.seconds, m.peak_rss_mb, m.exit_code, note, m.cpu_seconds,
                             m.services_cpu, extra))

    def sender_run(self, name: str, start: Path, note: str) -> None:
        conf, env, dest, _home = self.config(name, from_home=start)
        self.say(f"(d) {name}: dbsync sender --until-idle …")
        m = measure(dbsync_cmd("sender", "--config", str(conf), "--until-idle"), env=env)
        self.check(name, m)
        self.done_with(dest)
        self.record(name, confirmed(m.stderr, "sender"), m, note)

    def run(self) -> dict[str, Any]:
        from devtools.services import status
        from devtools.workload.openmrs import load_openmrs

        args = self.args
        SERVICE_PIDS.update({s["name"]: s["pid"] for s in status() if s["name"] in (self.instance.name, "artemis")})
        self.say(f"database {self.database} on {self.instance.name} ({self.instance.host}:{self.instance.port}), "
                 f"work dir {self.workdir}")
        load_openmrs(self.instance.admin, self.database)
        conf, env, dest, start = self.config("start")
        self.check("checkpoint", measure(dbsync_cmd("sender", "--config", str(conf), "--until-idle"), env=env))
        self.done_with(dest)
        small = min(args.small_rows, args.rows)
        written = self.generate(small, seed=1)
        self.sender_run("sender-small", start, f"backlog {written:,} rows")
        written += self.generate(args.rows - small, seed=2) if args.rows > small else 0
        self.data.update(rows_written=written, database=self.database, instance=self.instance.name)

        events = self.workdir / "events.ndjson"
        messages = self.workdir / "messages.ndjson"
        conf, env, dest, _home = self.config("capture", from_home=start)
        self.done_with(dest)  # capture and enrich publish nothing
        self.say("(a) capture …")
        with events.open("wb") as out:
            m = measure(dbsync_cmd("capture", "--config", str(conf), "--until-idle", "--snapshot", "never"),
                        env=env, stdout=out)
        self.check("capture", m)
        n_events = count_lines(events)
        self.record("capture", n_events, m, "binlog → events file")

        self.say("(b) enrich …")
        with events.open("rb") as inp, messages.open("wb") as out:
            m = measure(dbsync_cmd("enrich", "--config", str(conf)), env=env, stdin=inp, stdout=out)
        self.check("enrich", m)
        n_messages = count_lines(messages)
        self.record("enrich", n_events, m, "events file → messages file", messages=n_messages)

        conf, env, dest, _home = self.config("publish", from_home=start)
        self.say("(c) publish …")
        with messages.open("rb") as inp:
            m = measure(dbsync_cmd("publish", "--config", str(conf)), env=env, stdin=inp)
        self.check("publish", m)
        self.done_with(dest)
        self.record("publish", confirmed(m.stderr, "publish"), m, "messages file → queue")

        self.sender_run("sender", start, f"backlog {written:,} rows")

        conf, env, dest, _home = self.config("pipe", from_home=start)
        self.say("(e) capture | enrich | publish …")
        ms = measure_pipeline([dbsync_cmd("capture", "--config", str(conf), "--until-idle", "--snapshot", "never"),
                               dbsync_cmd("enrich", "--config", str(conf)),
                               dbsync_cmd("publish", "--config", str(conf))], env=env)
        for name, m in zip(("pipe capture", "pipe enrich", "pipe publish"), ms, strict=True):
            self.check(name, m)
        self.done_with(dest)
        total = Measured(0, ms[-1].seconds, sum(m.peak_rss_mb for m in ms), b"", sum(m.cpu_seconds for m in ms),
                         ms[-1].services_cpu)
        self.record("pipe", confirmed(ms[-1].stderr, "publish"), total, "3 processes; RSS and CPU = sums",
                    peak_rss_mb=[round(m.peak_rss_mb, 1) for m in ms], cpu_seconds=[round(m.cpu_seconds, 2) for m in ms])
        self.data.update(events=n_events, messages=n_messages,
                         events_bytes=events.stat().st_size, messages_bytes=messages.stat().st_size)
        if args.profile:
            self.profile(start)
        return self.report()

    def profile(self, start: Path) -> None:
        """cProfile an in-process run_once over the same backlog (slower than real: profiling overhead)."""
        from dbsync_cli import config as config_mod
        from dbsync_cli.sender import run as sender

        conf, env, dest, _home = self.config("profile", from_home=start)
        os.environ.update({k: env[k] for k in ("DBSYNC_SITE_DB__PASSWORD", "DBSYNC_BROKER__PASSWORD")})
        cfg = config_mod.load(conf, "sender")
        self.say("profiling an in-process run_once …")
        profiler = cProfile.Profile()
        profiler.enable()
        sent = sender.run_once(cfg, threading.Event(), until_idle=True)
        profiler.disable()
        self.done_with(dest)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
        stats.print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
        path = self.workdir / "profile.txt"
        path.write_text(text.getvalue())
        profiler.dump_stats(self.workdir / "profile.pstats")
        self.data["profile"] = {"messages": sent, "report": str(path)}
        self.say(f"  profile of {sent:,} messages: {path}")

    def report(self) -> dict[str, Any]:
        return {"data": self.data, "runs": [r.as_dict() for r in self.runs],
                "target_rows_per_second": {"sender": 10_000, "raw_decoder": 16_500}}

    def cleanup(self) -> None:
        if self.args.keep:
            self.say(f"kept: database {self.database}, work dir {self.workdir}, queues {', '.join(self.queues)}")
            return
        try:
            delete_queues(self.broker, self.queues)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the results
            self.say(f"could not delete the benchmark queues ({exc}): {', '.join(self.queues)}")
        with self.instance.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        if not self.args.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    data = result["data"]
    table = Table(title=f"dbsync sender benchmark: {data.get('rows_written', 0):,} rows written "
                        f"({data.get('instance')}, obs_per_encounter=20)")
    for column in ("stage", "rows", "seconds", "rows/s", "CPU s", "DB CPU s", "broker CPU s", "peak RSS MB", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    for run in result["runs"]:
        db_cpu = sum(v for k, v in run["services_cpu"].items() if k != "artemis")
        table.add_row(run["name"], f"{run['rows']:,}", f"{run['seconds']:.1f}", f"{run['rows_per_second']:,}",
                      f"{run['cpu_seconds']:.1f}", f"{db_cpu:.1f}", f"{run['services_cpu'].get('artemis', 0):.1f}",
                      f"{run['peak_rss_mb']:.0f}", run["note"])
    Console(width=160).print(table)
    print(f"rows/s = binlog rows (change events) per wall second, process start-up included; CPU s = user+system "
          f"of that process; DB / broker CPU s = what the site MariaDB and Artemis used meanwhile (whole server, "
          f"other users included); peak RSS = the process's VmHWM (polled from /proc). {os.cpu_count()} CPUs. "
          f"Target: sender >= 10,000 rows/s; raw row decoder ~16-17k rows/s.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--pairs" or a.startswith("--pairs=") for a in argv):  # back-to-back pairs (devtools/bench_pairs.py)
        from devtools import bench_pairs

        return bench_pairs.main(argv)
    parser = argparse.ArgumentParser(prog="bench-sender", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="approximate rows to write (default 200,000)")
    parser.add_argument("--small-rows", type=int, default=50_000,
                        help="backlog of the first sender run, to compare peak RSS (default 50,000)")
    parser.add_argument("--instance", default="site2", help="dev MariaDB instance (default site2)")
    parser.add_argument("--workdir", help="keep NDJSON files and homes here (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database, queues and work dir")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile an in-process sender run (report in the work dir)")
    parser.add_argument("--pairs", type=int, metavar="N",
                        help="instead: N back-to-back pairs, raw decode vs capture by CPU and the sender vs Debezium "
                             "(devtools/bench_pairs.py; --pairs N --help for its options)")
    args = parser.parse_args(argv)
    bench = Bench(args)
    try:
        result = bench.run()
    finally:
        bench.cleanup()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
