"""One soak run: bed up, fresh databases, configs, receiver and senders, workloads, seeded faults, the late site,
drain, statuses, the oracle, and everything stopped again (the databases kept when the oracle finds a violation)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from devtools.oracle import DbConn, Oracle, OracleInput, snapshot_central_rows
from devtools.soak.bed import DATABASE, STATE_SCHEMA, Bed, start_bed, stop_bed
from devtools.soak.plan import Fault, Plan
from devtools.soak.procs import Proc, dbsync
from devtools.workload.generator import generate
from devtools.workload.openmrs import load_openmrs

#: the OpenMRS EIP set: what sender and receiver sync by default, and what the oracle checks
SYNCED_TABLES = [
    "person", "patient", "visit", "encounter", "obs", "person_attribute", "patient_program", "patient_state",
    "visit_attribute", "encounter_diagnosis", "conditions", "person_name", "allergy", "person_address",
    "patient_identifier", "orders", "drug_order", "test_order", "referral_order", "relationship",
    "encounter_provider", "order_group", "patient_program_attribute", "users", "provider", "diagnosis_attribute",
    "order_attribute", "order_group_attribute",
]
DESTINATION = "demo.openmrs.sync"  # the site users of the bed's broker may send here
TIMEZONES = {"site1": "UTC", "site2": "Africa/Kigali", "site3": "-03:00"}
CENTRAL_TZ = "UTC"


def _log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _optional(module: str) -> Any:
    """A devtools.field tool, or None when it is not there (yet)."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        _log(f"skipped {module}: not importable ({exc})")
        return None


class Soak:
    def __init__(self, plan: Plan, home: Path, offset: int, *, link: bool = True, clock: bool = True,
                 editors: bool = True, hostile: bool = True, drain_timeout: float | None = None,
                 keep: bool = False) -> None:
        self.plan, self.home, self.offset = plan, home, offset
        self.use = {"link": link, "clock": clock, "editors": editors, "hostile": hostile}
        self.drain_timeout = drain_timeout or max(180.0, plan.seconds)
        self.keep = keep
        self.work = home / "run"
        self.procs: dict[str, Proc] = {}
        self.stop_workload = threading.Event()
        self.workloads: dict[str, threading.Thread] = {}
        self.rounds: dict[str, int] = {}
        self.errors: list[str] = []
        self.link: Any = None
        self.editors: Any = None
        self.bed: Bed | None = None
        self.t0 = 0.0

    # ---- set-up ------------------------------------------------------------------------------------------
    def setup(self) -> Bed:
        import shutil

        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        clock_mod = _optional("devtools.field.clock") if self.use["clock"] else None
        skew_site = None
        if clock_mod is not None:
            if Path(getattr(clock_mod, "LIBFAKETIME", "/nonexistent")).exists():
                skew_site = "site2"
            else:
                _log("skipped the skewed clock: libfaketime is not installed")
        _log(f"services under {self.home} (port offset {self.offset})")
        bed = start_bed(self.home, self.offset, skew_site=skew_site, skew="+10m", say=_log)
        self.bed = bed
        for name, inst in bed.dbs.items():
            with inst.admin.with_database(None).connect() as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
                cur.execute(f"DROP DATABASE IF EXISTS `{STATE_SCHEMA}`")
                if name != "central":
                    cur.execute("RESET MASTER")
            load_openmrs(inst.admin, DATABASE)
        snapshot_central_rows(self.oracle_db("central"), SYNCED_TABLES, self.work / "central-before.json",
                              tz=CENTRAL_TZ)
        return bed

    def oracle_db(self, name: str) -> DbConn:
        assert self.bed is not None
        p = self.bed.admin(name)
        return DbConn(host=p.host, port=p.port, user=p.user or "", password=p.password or "", database=DATABASE)

    def receiver_config(self) -> tuple[Path, dict[str, str]]:
        assert self.bed is not None
        central = self.bed.admin("central")
        user, password = self.bed.broker_login(None)  # central's own broker user, not the administrator
        path = self.work / "receiver.toml"
        path.write_text(
            f'home = "{self.work / "home-receiver"}"\nlog_level = "INFO"\n'
            f'[receiver]\nsite_id = "central"\ntimezone = "{CENTRAL_TZ}"\nbatch_messages = 500\n'
            f'retry_interval_seconds = 5\n'
            f'[central_db]\nhost = "{central.host}"\nport = {central.port}\ndatabase = "{DATABASE}"\n'
            f'state_schema = "{STATE_SCHEMA}"\nuser = "{central.user}"\n'
            f'[broker]\nurl = "stomp://{self.bed.artemis.host}:{self.bed.artemis.stomp_port}"\n'
            f'user = "{user}"\ndestination = "{DESTINATION}"\ndestination_type = "queue"\n')
        env = {**os.environ, "DBSYNC_CENTRAL_DB__PASSWORD": central.password or "", "DBSYNC_BROKER__PASSWORD": password}
        return path, env

    def sender_config(self, site: str, broker_port: int) -> tuple[Path, dict[str, str]]:
        assert self.bed is not None
        repl = self.bed.repl(site)
        user, password = self.bed.broker_login(site)
        path = self.work / f"sender-{site}.toml"
        path.write_text(
            f'home = "{self.work / f"home-{site}"}"\nlog_level = "INFO"\n'
            f'[sender]\nid = "{site}"\nserver_id = {7100 + int(site[-1])}\ntimezone = "{TIMEZONES[site]}"\n'
            f'snapshot = "initial"\nmin_binlog_retention_hours = 0\n'
            f'[site_db]\nhost = "{repl.host}"\nport = {repl.port}\ndatabase = "{DATABASE}"\nuser = "{repl.user}"\n'
            f'[broker]\nurl = "stomp://{self.bed.artemis.host}:{broker_port}"\nuser = "{user}"\n'
            f'destination = "{DESTINATION}"\ndestination_type = "queue"\nbatch_messages = 500\n')
        env = {**os.environ, "DBSYNC_SITE_DB__PASSWORD": repl.password or "", "DBSYNC_BROKER__PASSWORD": password}
        return path, env

    def add_site(self, site: str) -> None:
        assert self.bed is not None
        conf, env = self.receiver_config()
        user, _ = self.bed.broker_login(site)
        run = dbsync(["sites", "add", site, "--config", str(conf), "--broker-user", user], env)
        if run.returncode != 0:
            raise RuntimeError(f"dbsync sites add {site} exited {run.returncode}: {run.stderr[-1500:]}")
        _log(f"registered {site} (broker user {user})")

    # ---- processes ---------------------------------------------------------------------------------------
    def start_sender(self, site: str) -> None:
        assert self.bed is not None
        port = self.bed.artemis.stomp_port
        if site == "site1" and self.use["link"]:
            link_mod = _optional("devtools.field.link")
            if link_mod is not None:
                self.link = link_mod.LinkProxy(self.bed.artemis.host, port, latency_s=0.05,
                                               bandwidth_bytes_per_s=256_000, drop_every_s=25.0, drop_for_s=3.0,
                                               seed=self.plan.seed).start()
                port = self.link.port
                _log(f"site1 reaches the broker through a flapping link (port {port}: 50 ms, 256 kB/s, down 3 s "
                     "every 25 s)")
        conf, env = self.sender_config(site, port)
        proc = self.procs[f"sender-{site}"] = Proc(f"sender-{site}", ["sender", "--config", str(conf)], env,
                                                   self.work / "logs")
        proc.start()

    def start_receiver(self) -> None:
        conf, env = self.receiver_config()
        proc = self.procs["receiver"] = Proc("receiver", ["receiver", "--config", str(conf)], env, self.work / "logs")
        proc.start()

    def workload(self, site: str) -> None:
        assert self.bed is not None
        db = self.bed.admin(site)
        r = 0
        next_at = time.monotonic()
        while not self.stop_workload.is_set():
            large = r % self.plan.large_every == self.plan.large_every - 1
            try:
                generate(db, seed=self.plan.seed * 1000 + r, site=site, patients=self.plan.patients_per_round,
                         visits_per_patient=2, encounters_per_visit=1.5, obs_per_encounter=5, mutations=0.3,
                         staff=3 if r == 0 else 0, transaction_rows=0 if large else 300, location=4)
                r += 1
                self.rounds[site] = r
            except Exception as exc:  # noqa: BLE001 - its server was killed: the round is rolled back, go on
                self.errors.append(f"{site} round {r}: {type(exc).__name__}: {str(exc)[:120]}")
                time.sleep(1)
            next_at += self.plan.round_seconds
            self.stop_workload.wait(max(0.0, next_at - time.monotonic()))

    def start_workload(self, site: str) -> None:
        t = self.workloads[site] = threading.Thread(target=self.workload, args=(site,), name=f"workload-{site}",
                                                    daemon=True)
        t.start()

    def start_editors(self) -> None:
        mod = _optional("devtools.field.editors") if self.use["editors"] else None
        if mod is None:
            return
        journal = self.work / "editors.ndjson"
        try:
            self.editors = mod.CentralEditors(self.bed.admin("central") if self.bed else None, seed=self.plan.seed,
                                              journal_path=journal)
            self.editors.start()
            _log(f"central editors running (journal {journal})")
        except Exception as exc:  # noqa: BLE001 - the tool's API may still change: run without it
            self.editors = None
            _log(f"skipped the central editors: {type(exc).__name__}: {exc}")

    def hostile(self) -> None:
        mod = _optional("devtools.field.hostile") if self.use["hostile"] else None
        if mod is None or self.bed is None:
            return
        from dbsync_cli.broker import BrokerSettings

        user, password = self.bed.broker_login("site1")
        settings = BrokerSettings(host=self.bed.artemis.host, port=self.bed.artemis.stomp_port, user=user,
                                  password=password)
        try:
            frames = mod.hostile_frames("site1", 24, seed=self.plan.seed)
            _journal_uuids(frames, self.work / "hostile.ndjson")  # what the oracle may find written by them
            sent = mod.send_frames(settings, DESTINATION, frames)
            _log(f"hostile frames sent with site1's login: {dict(sent)}")
        except Exception as exc:  # noqa: BLE001 - the tool's API may still change: run without it
            _log(f"skipped hostile frames: {type(exc).__name__}: {exc}")

    # ---- faults ------------------------------------------------------------------------------------------
    def fault(self, f: Fault) -> None:
        assert self.bed is not None
        _log(f"fault: {f.describe()}")
        if f.kind in ("sender", "receiver"):
            proc = self.procs.get(f"sender-{f.target}" if f.kind == "sender" else "receiver")
            if proc is None:
                return
            proc.kill9()
            time.sleep(f.pause)
            proc.start()
            return
        service = self.bed.services[{"site_db": f.target, "central_db": "central"}.get(f.kind, "artemis")]
        service.kill9()
        time.sleep(f.pause)
        service.start()
        _log(f"  {service.name} restarted")

    def supervise(self) -> None:
        """Restart a dbsync process that exited without being asked (after a fault it could not ride out)."""
        for proc in self.procs.values():
            if proc.popen is not None and not proc.alive():
                proc.exits.append(proc.popen.returncode or 0)
                _log(f"{proc.name} exited {proc.popen.returncode}; restarting it")
                proc.start()

    # ---- the run -----------------------------------------------------------------------------------------
    def main_phase(self) -> None:
        plan = self.plan
        early = [s for s in plan.sites if s != plan.late_site]
        for site in early:
            self.add_site(site)
        self.start_receiver()
        for site in early:
            self.start_sender(site)
            self.start_workload(site)
        self.start_editors()
        self.t0 = time.monotonic()
        faults = list(plan.faults)
        onboarded = False
        hostile_at = plan.seconds * 0.5
        while (now := time.monotonic() - self.t0) < plan.seconds:
            if not onboarded and now >= plan.onboard_at:
                onboarded = True
                self.add_site(plan.late_site)
                self.start_sender(plan.late_site)
                self.start_workload(plan.late_site)
                _log(f"{plan.late_site} onboarded")
            if hostile_at and now >= hostile_at:
                hostile_at = 0
                self.hostile()
            if faults and now >= faults[0].at:
                self.fault(faults.pop(0))
            self.supervise()
            time.sleep(0.5)
        if not onboarded:
            self.add_site(plan.late_site)
            self.start_sender(plan.late_site)

    def status(self, name: str) -> dict[str, Any]:
        proc = self.procs[name]
        conf = proc.args[proc.args.index("--config") + 1]
        run = dbsync(["status", "--config", conf, "--json"], proc.env, timeout=60)
        try:
            return dict(json.loads(run.stdout))
        except ValueError:
            return {"error": f"exit {run.returncode}: {run.stderr[-500:]}"}

    def drain(self) -> bool:
        """Workloads stopped: wait until every sender's checkpoint is at its binlog end and central's inbox is
        empty and its retry queue stays the same."""
        self.stop_workload.set()
        for t in self.workloads.values():
            t.join(timeout=120)
        if self.editors is not None:
            with contextlib.suppress(Exception):
                self.editors.stop()
        _log(f"workloads stopped after {self.rounds} rounds; draining (at most {self.drain_timeout:.0f}s)")
        deadline = time.monotonic() + self.drain_timeout
        last_retry: Any = object()
        while time.monotonic() < deadline:
            self.supervise()
            lags = {s: _get(self.status(f"sender-{s}"), "lag", "bytes") for s in self.plan.sites
                    if f"sender-{s}" in self.procs}
            rec = self.status("receiver")
            inbox, retry = _get(rec, "inbox", "size"), _get(rec, "retry_queue", "size")
            queue = _get(rec, "broker", "queue", "messages")
            quiet = all(v == 0 for v in lags.values()) and inbox == 0 and retry == last_retry and queue in (0, None)
            if quiet:
                _log(f"drained: lag {lags}, inbox {inbox}, retry {retry}, broker queue {queue}")
                return True
            last_retry = retry
            _log(f"  draining: lag {lags}, inbox {inbox}, retry {retry}, broker queue {queue}")
            time.sleep(5)
        _log("drain timed out")
        return False

    def oracle(self) -> bool:
        assert self.bed is not None
        statuses = {s: self.status(f"sender-{s}") for s in self.plan.sites if f"sender-{s}" in self.procs}
        receiver = self.status("receiver")
        (self.work / "status.json").write_text(json.dumps({"senders": statuses, "receiver": receiver}, indent=1,
                                                          default=str))
        inp = OracleInput(seed=self.plan.seed, sites={s: self.oracle_db(s) for s in self.plan.sites},
                          site_timezones=dict(TIMEZONES), central=self.oracle_db("central"),
                          central_timezone=CENTRAL_TZ, state_schema=STATE_SCHEMA, tables=SYNCED_TABLES,
                          snapshot=self.work / "central-before.json",
                          journal=self.work / "editors.ndjson" if (self.work / "editors.ndjson").exists() else None,
                          hostile=self.work / "hostile.ndjson",
                          sender_status=statuses, receiver_status=receiver)
        verdicts = Oracle(inp, say=lambda line: print(line, flush=True)).run()
        return all(v.ok for v in verdicts)

    def shutdown(self, *, keep_databases: bool) -> None:
        self.stop_workload.set()
        for proc in self.procs.values():
            proc.stop(timeout=20)
        if self.link is not None:
            self.link.stop()
        if self.editors is not None:
            with contextlib.suppress(Exception):
                self.editors.stop()
        if self.bed is not None:
            stop_bed(self.bed, keep_databases=keep_databases)

    def run(self) -> int:
        for line in self.plan.describe():
            _log(line)
        ok = False
        keep = self.keep
        try:
            self.setup()
            self.main_phase()
            drained = self.drain()
            ok = self.oracle()
            if not drained:
                print("note: the drain timed out; the verdicts describe a run that had not settled", flush=True)
            counts = {p.name: f"{p.starts} starts" for p in self.procs.values()}
            _log(f"processes: {counts}; workload errors (rolled back rounds): {len(self.errors)}")
            keep = keep or not ok
            return 0 if ok else 1
        finally:
            self.shutdown(keep_databases=keep)
            if keep and self.bed is not None:
                where = ", ".join(f"{n} 127.0.0.1:{i.port}/{DATABASE}" for n, i in self.bed.dbs.items())
                print(f"databases kept: {where} (state schema {STATE_SCHEMA}; logs and configs in {self.work}; "
                      f"stop them with DBSYNC_SERVICES_HOME={self.home} scripts/services down)", flush=True)


def _get(data: Any, *path: str) -> Any:
    """data[path[0]][path[1]]…, None where a step is missing."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def soak(seed: int, minutes: float, home: Path, offset: int, **flags: Any) -> int:
    """Plan, run and judge one soak; the exit code (0: every invariant holds)."""
    from devtools.soak.plan import make_plan

    return Soak(make_plan(seed, minutes), home, offset, **flags).run()


_UUID = re.compile(rb"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _journal_uuids(frames: list[Any], path: Path) -> None:
    """Every uuid in the hostile frames' bodies (deflated ones read up to 1 MB: the bomb holds none), as NDJSON."""
    found: set[str] = set()
    for frame in frames:
        body = frame.body
        with contextlib.suppress(zlib.error):
            body = zlib.decompressobj().decompress(body, 1 << 20)
        found |= {m.decode().lower() for m in _UUID.findall(body)}
    path.write_text("".join(json.dumps({"kind": "hostile", "uuid": u}) + "\n" for u in sorted(found)))
