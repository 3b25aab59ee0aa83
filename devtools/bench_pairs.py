"""Back-to-back pairs for the sender's two targets (`scripts/bench-sender --pairs N`), on one shared machine.

On a fresh OpenMRS database on a dev MariaDB, the workload generator writes ROWS obs-heavy rows after a checkpoint
at the end of the binlog. Then, N times, each pair right after the other on that same binlog range:

  decode pair   the raw decoder (python-mysql-replication reading this database's row events and touching every
                row, nothing else: devtools/ceilings.py's, with capture's schema filter, in a process of its own)
                and `dbsync capture --until-idle` (→ /dev/null): capture's rows per CPU second over the raw
                decoder's (target >= 0.9); and the same past start-up (each run once more where there is nothing to
                read, and that CPU time taken off: interpreter, imports, schema model, connections); and capture
                over the raw decoder with capture's own row reader (dbsync_cli/sender/row_reader.py): what capture
                adds to decoding
  sender pair   `dbsync sender --until-idle` (binlog → a fresh Artemis queue, its own home from the checkpoint) and
                Debezium embedded 3.5 → Artemis JMS (devtools/peer_debezium.py): rows per wall second, start-up
                included, sender over Debezium (target >= 1.5); --no-peer leaves Debezium out; --baseline DIR
                also runs another checkout's sender (the code before a change) right after this one

The load average is read before each pair: the machine is shared, so only ratios within a pair count, and the
median of the pairs is the figure. Every run must see every row (capture's events, the sender's confirmed
messages, Debezium's events all equal the binlog's rows), or the bench fails. CPU seconds are user + system from
wait4's rusage (the sender's capture child included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from devtools.bench import (
    ROWS_PER_PATIENT,
    confirmed,
    count_lines,
    dbsync_cmd,
    delete_queues,
    measure,
    sender_config,
)


def _raw_decode(repl: Any, start: dict[str, Any], reader: str = "library") -> dict[str, Any]:
    """The raw decoder of `scripts/bench` (devtools/ceilings.py: this database's row events, in a process of its
    own), so that both benches give capture's ratio by one measurement; `reader` "dbsync": with capture's row
    reader."""
    from devtools.ceilings import raw_decode

    decoded = raw_decode(repl, start, server_id=7398, reader=reader)
    return {"rows": decoded.rows, "seconds": round(decoded.seconds, 2), "cpu_seconds": decoded.extra["cpu_seconds"]}


def _per_cpu(run: dict[str, Any]) -> float:
    return run["rows"] / run["cpu_seconds"] if run["cpu_seconds"] else 0.0


def _per_second(run: dict[str, Any]) -> float:
    return run["rows"] / run["seconds"] if run["seconds"] else 0.0


class Pairs:
    def __init__(self, args: argparse.Namespace) -> None:
        from devtools.services import ensure_up

        services = ensure_up()
        assert services.artemis is not None
        self.args = args
        self.artemis = services.artemis
        self.broker = services.artemis.settings()
        self.instance = services[args.instance]
        self.database = f"bench_pairs_{uuid.uuid4().hex[:8]}"
        self.admin = self.instance.admin.with_database(self.database)
        self.repl = self.instance.repl.with_database(self.database)
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
        self.queues: list[str] = []
        self.end: tuple[dict[str, Any], Path] = ({}, self.workdir)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def prepare(self) -> tuple[dict[str, Any], Path, int]:
        from dbsync_cli.sender.checkpoint import CheckpointStore
        from devtools.workload.generator import generate
        from devtools.workload.openmrs import load_openmrs

        def checkpoint(name: str) -> tuple[dict[str, Any], Path]:
            with self.admin.connect() as conn, conn.cursor() as cur:
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
            assert row is not None, "binary logging is off"
            at = {"file": row[0], "pos": int(row[1]), "row": -1, "snapshot": False}
            home = self.workdir / f"home-{name}"
            home.mkdir(parents=True)
            store = CheckpointStore(home)
            store.save(at)
            store.close()
            return at, home

        load_openmrs(self.instance.admin, self.database)
        start, home = checkpoint("start")
        patients = max(1, round(self.args.rows / ROWS_PER_PATIENT))
        self.say(f"generating ~{self.args.rows:,} rows in {self.database} on {self.instance.name} …")
        truth = generate(self.admin, seed=29, patients=patients, obs_per_encounter=20, mutations=0)
        self.end = checkpoint("end")  # nothing to read from there: what starting up alone costs
        return start, home, int(truth.stats["rows_created"])

    def capture(self, home: Path, rows: int) -> dict[str, Any]:
        conf, env = self._config(f"capture{rows}", home)
        out = self.workdir / "events.ndjson"
        with out.open("wb") as events:
            m = measure(dbsync_cmd("capture", "--config", str(conf), "--until-idle", "--snapshot", "never"),
                        env=env, stdout=events)
        self._check("capture", m.exit_code, m.stderr)
        got = count_lines(out)
        out.unlink()
        return {"rows": got, "seconds": round(m.seconds, 2), "cpu_seconds": round(m.cpu_seconds, 2)}

    def sender(self, home: Path, code: Path | None = None) -> dict[str, Any]:
        conf, env = self._config("sender", home)
        cmd = dbsync_cmd("sender", "--config", str(conf), "--until-idle")
        if code is not None:  # another checkout's dbsync (--baseline): first on sys.path, ahead of the working dir
            cmd[1:3] = ["-c", f"import sys; sys.path.insert(0, {str(code)!r}); sys.argv[0] = 'dbsync'; "
                              "from dbsync_cli.cli.app import main; main()"]
        m = measure(cmd, env=env)
        self._check("sender", m.exit_code, m.stderr)
        self._drop_queue()
        return {"rows": confirmed(m.stderr, "sender"), "seconds": round(m.seconds, 2),
                "cpu_seconds": round(m.cpu_seconds, 2), "peak_rss_mb": round(m.peak_rss_mb, 1)}

    def debezium(self, start: dict[str, Any], rows: int) -> dict[str, Any]:
        from devtools import peer_debezium

        queue = f"bench.pairs.debezium.{uuid.uuid4().hex[:8]}"
        self.queues.append(queue)
        got = peer_debezium.run(self.repl, self.database, start, self.artemis.host, self.artemis.core_port,
                                self.artemis.user, self.artemis.password, queue, rows)
        self._drop_queue()
        return {"rows": got["events"], "seconds": round(got["wall_seconds"], 2),
                "cpu_seconds": round(got["cpu_seconds"], 2), "peak_rss_mb": got["peak_rss_mb"]}

    def _config(self, name: str, start_home: Path) -> tuple[Path, dict[str, str]]:
        home = self.workdir / f"home-{name}"
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(start_home, home)
        queue = f"bench.pairs.{name}.{uuid.uuid4().hex[:8]}"
        self.queues.append(queue)
        return sender_config(self.workdir, self.repl, self.broker, home=home, destination=queue,
                             server_id=7397, name=name)

    def _check(self, name: str, code: int, stderr: bytes) -> None:
        if code != 0:
            raise SystemExit(f"bench: {name} exited {code}: {stderr.decode(errors='replace')[-2000:]}")

    def _drop_queue(self) -> None:
        try:
            for name, gone in delete_queues(self.broker, self.queues).items():
                if gone:
                    self.queues.remove(name)
        except Exception as exc:  # noqa: BLE001 - retried in cleanup
            self.say(f"  could not delete queues yet ({exc})")

    def run(self) -> dict[str, Any]:
        start, home, rows = self.prepare()
        pairs: list[dict[str, Any]] = []
        for number in range(1, self.args.pairs + 1):
            pair: dict[str, Any] = {"pair": number, "load_before": [round(x, 2) for x in os.getloadavg()]}
            self.say(f"pair {number}: raw decode, capture …")
            pair["raw_decode"] = _raw_decode(self.repl, start)
            pair["capture"] = self.capture(home, rows)
            pair["raw_decode_dbsync_reader"] = _raw_decode(self.repl, start, "dbsync")
            pair["capture_over_raw_by_cpu"] = round(_per_cpu(pair["capture"]) / _per_cpu(pair["raw_decode"]), 3)
            pair["capture_over_same_reader_by_cpu"] = round(
                _per_cpu(pair["capture"]) / _per_cpu(pair["raw_decode_dbsync_reader"]), 3)
            # the same past start-up (interpreter, imports, schema model, connections): per row, as a running sender
            raw0, capture0 = _raw_decode(self.repl, self.end[0]), self.capture(self.end[1], 0)
            pair["startup_cpu_seconds"] = {"raw_decode": raw0["cpu_seconds"], "capture": capture0["cpu_seconds"]}
            pair["capture_over_raw_by_cpu_past_startup"] = round(
                (pair["raw_decode"]["cpu_seconds"] - raw0["cpu_seconds"])
                / max(0.01, pair["capture"]["cpu_seconds"] - capture0["cpu_seconds"]), 3)
            if not self.args.no_sender:
                pair["load_before_sender"] = [round(x, 2) for x in os.getloadavg()]
                self.say(f"pair {number}: sender" + ("" if self.args.no_peer else ", Debezium") + " …")
                pair["sender"] = self.sender(home)
                if self.args.baseline:
                    pair["sender_baseline"] = self.sender(home, self.args.baseline)
                    pair["sender_over_baseline"] = round(_per_second(pair["sender"]) /
                                                         _per_second(pair["sender_baseline"]), 3)
                if not self.args.no_peer:
                    pair["debezium"] = self.debezium(start, rows)
                    pair["sender_over_debezium"] = round(_per_second(pair["sender"]) /
                                                         _per_second(pair["debezium"]), 3)
            missing = [name for name in ("raw_decode", "raw_decode_dbsync_reader", "capture", "sender",
                                         "sender_baseline", "debezium")
                       if name in pair and pair[name]["rows"] != rows]
            if missing:
                raise SystemExit(f"bench: {', '.join(missing)} saw other than the {rows:,} binlog rows: {pair}")
            pairs.append(pair)
            self.say(json.dumps(pair))
        summary = {key: statistics.median(p[key] for p in pairs)
                   for key in ("capture_over_raw_by_cpu", "capture_over_raw_by_cpu_past_startup",
                               "capture_over_same_reader_by_cpu")}
        for key in ("sender_over_debezium", "sender_over_baseline"):
            if pairs and all(key in p for p in pairs):
                summary[key] = statistics.median(p[key] for p in pairs)
        return {"rows": rows, "database": self.database, "instance": self.instance.name, "cpus": os.cpu_count(),
                "pairs": pairs, "median": summary}

    def cleanup(self) -> None:
        self._drop_queue()
        with self.instance.admin.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench-sender --pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="pairs of each kind, back to back (default 3)")
    parser.add_argument("--rows", type=int, default=100_000, help="approximate rows to write (default 100,000)")
    parser.add_argument("--instance", default="site2", help="dev MariaDB instance (default site2)")
    parser.add_argument("--no-peer", action="store_true", help="leave Debezium out (no Java needed)")
    parser.add_argument("--no-sender", action="store_true", help="only the decode pairs (raw decode, capture)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the sender of another checkout (e.g. `git archive main | tar -x -C DIR`) in "
                             "each pair, right after this one")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    pairs = Pairs(args)
    try:
        result = pairs.run()
    finally:
        pairs.cleanup()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0
