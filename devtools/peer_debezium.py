"""The Debezium peer of scripts/bench: Debezium embedded reads the same binlog range and sends it to Artemis.

The peer (``devtools/peers/debezium``) is a small Java 17 program: Debezium embedded 3.5.0.Final with the MariaDB
connector 3.5.0.Final streams one database's binlog from a given file/position (an in-memory offset store seeded
with it, ``snapshot.mode=recovery`` so only the schema is read first) and sends each row change as one persistent
JSON text message to an ANYCAST Artemis queue over the core protocol (artemis-jms-client 2.40.0), one JMS
transaction per 500 messages. It prints one JSON line, ``{"events": n, "seconds": s, ...}``, with seconds from
engine start to the last commit.

scripts/bench runs it twice: with the JVM's default heap and with ``-Xmx256m`` (``java_opts``); ``max_heap_mb``
says what heap each allowed.

``build()`` runs ``mvn -q package`` once (needs Maven Central or a warm ~/.m2); ``run()`` starts it and measures
it the way scripts/benchlib.py's ``Proc`` measures dbsync: peak RSS is VmHWM polled from /proc every 100 ms, CPU
seconds are user + system from the rusage of ``os.wait4``. Passwords go to the peer in its environment only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dbsync_cli.db import DbParams
from devtools.bench import PeakRss

PEER_DIR = Path(__file__).resolve().parent / "peers" / "debezium"
JAR = PEER_DIR / "target" / "debezium-peer.jar"
LIB = PEER_DIR / "target" / "lib"
MAIN_CLASS = "org.openmrs.dbsync.peer.DebeziumPeer"
DB_PASSWORD_ENV = "DBZ_PEER_DB_PASSWORD"
ARTEMIS_PASSWORD_ENV = "DBZ_PEER_ARTEMIS_PASSWORD"


def _built() -> bool:
    """The jar and target/lib are there, and the jar is newer than the pom and every source file."""
    if not (JAR.is_file() and LIB.is_dir() and any(LIB.glob("debezium-connector-mariadb-*.jar"))):
        return False
    built = JAR.stat().st_mtime
    sources = [PEER_DIR / "pom.xml", *(p for p in (PEER_DIR / "src").rglob("*") if p.is_file())]
    return all(path.stat().st_mtime <= built for path in sources)


def build(force: bool = False) -> Path:
    """Build the peer (``mvn -q package``, offline first) unless its jar and target/lib are there and up to date
    (``force`` builds anyway); return the jar's path."""
    if _built() and not force:
        return JAR
    mvn = shutil.which("mvn") or "/usr/bin/mvn"
    # offline first: a warm ~/.m2 needs no network; Maven Central only when something is missing
    for offline in (["-o"], []):
        proc = subprocess.run([mvn, *offline, "-q", "-B", "package"], cwd=PEER_DIR, capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0 and _built():
            break
    else:
        raise RuntimeError(f"building the Debezium peer failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-4000:]}")
    return JAR


def max_heap_mb(java_opts: tuple[str, ...] = ()) -> float | None:
    """The largest heap the JVM takes with these options (its default: a quarter of the machine's memory), from
    ``-XX:+PrintFlagsFinal``; None when java does not say."""
    proc = subprocess.run([shutil.which("java") or "java", *java_opts, "-XX:+PrintFlagsFinal", "-version"],
                          capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "MaxHeapSize":
            return round(int(parts[3]) / 1048576, 1)
    return None


def classpath() -> str:
    return f"{JAR}{os.pathsep}{LIB}{os.sep}*"


def run(repl: DbParams, database: str, start: dict[str, Any], artemis_host: str, core_port: int, user: str,
        password: str, queue: str, events: int, timeout: float = 1800, *, idle_seconds: float = 60,
        startup_seconds: float = 300, server_id: int = 54001, java_opts: tuple[str, ...] = (),
        log: Path | None = None) -> dict[str, Any]:
    """Run the peer from ``start`` ({"file", "pos"}) until it has sent and committed ``events`` row changes.

    ``repl`` is the site database account (host, port, user, password; its ``database`` is not used: ``database``
    is the one captured). ``user``/``password`` log in to Artemis' core acceptor on ``artemis_host:core_port``.
    Returns events, seconds (the peer's own: engine start to last commit), wall_seconds, cpu_seconds, peak_rss_mb
    and rows_per_second (events / seconds), and first_event_seconds (engine start to the first row change: the
    schema read of snapshot.mode=recovery and the JVM warming up). Raises RuntimeError when the peer fails, goes idle before ``events``
    (it exits 2 after ``idle_seconds`` without a change event, ``startup_seconds`` before the first one) or
    outlives ``timeout``. ``java_opts`` go to the JVM (e.g. ``-Xmx512m``); ``log`` keeps the peer's stderr.
    """
    jar = build()
    assert jar.is_file()
    args = [
        shutil.which("java") or "java", *java_opts, "-cp", classpath(), MAIN_CLASS,
        "--db-host", repl.host, "--db-port", str(repl.port), "--db-user", repl.user, "--database", database,
        "--binlog-file", str(start["file"]), "--binlog-pos", str(int(start["pos"])),
        "--artemis-host", artemis_host, "--artemis-port", str(core_port), "--artemis-user", user,
        "--queue", queue, "--events", str(events), "--idle-seconds", str(idle_seconds),
        "--startup-seconds", str(startup_seconds),
        "--server-id", str(server_id),
    ]
    env = {**os.environ, DB_PASSWORD_ENV: repl.password, ARTEMIS_PASSWORD_ENV: password}
    with contextlib.ExitStack() as stack:
        if log is None:
            err = stack.enter_context(tempfile.TemporaryFile())
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            err = stack.enter_context(log.open("w+b"))
        out = stack.enter_context(tempfile.TemporaryFile())
        started = time.perf_counter()
        popen = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        rss = PeakRss(popen.pid, interval=0.1)
        timer = threading.Timer(timeout, popen.send_signal, (signal.SIGKILL,))
        timer.start()
        try:
            _pid, status, usage = os.wait4(popen.pid, 0)
        finally:
            timer.cancel()
            peak = rss.stop()
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        popen.returncode = code
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        err.seek(max(0, err.seek(0, os.SEEK_END) - 4000))
        tail = err.read().decode(errors="replace")
    result_line = next((line for line in reversed(stdout.splitlines()) if line.startswith("{")), None)
    if code != 0 or result_line is None:
        what = "was killed after the timeout" if code == -signal.SIGKILL else f"exited {code}"
        raise RuntimeError(f"the Debezium peer {what} ({result_line or 'no result'}):\n{tail}")
    result = json.loads(result_line)
    seconds = float(result["seconds"])
    return {
        "events": int(result["events"]),
        "seconds": seconds,
        "wall_seconds": round(wall, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(peak, 1),
        "rows_per_second": round(int(result["events"]) / seconds, 1) if seconds > 0 else 0.0,
        "first_event_seconds": float(result.get("first_event_seconds", -1)),
    }
