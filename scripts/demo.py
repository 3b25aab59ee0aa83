"""The demo behind `scripts/demo`: two OpenMRS sites sync into one central DB through Artemis, for real.

Starts the throwaway services, loads the OpenMRS 2.5 schema and the shared metadata into site1, site2 and central,
registers the sites, starts `dbsync receiver` and one `dbsync sender` per site, writes a seeded clinical workload at
both sites, shows progress, then prints per-site status and a per-table comparison of each site against central.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from dbsync_cli.db import DbParams
from dbsync_cli.receiver import state
from devtools.services import Services, down, ensure_up
from devtools.services.common import port_offset
from devtools.workload.generator import generate
from devtools.workload.openmrs import load_openmrs
from devtools.workload.truth import GroundTruth, compare

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".demo"
SITES = ("site1", "site2")
CONSOLE_PORT = 8800
console = Console(stderr=True)


def _secret(name: str, value: str) -> Path:
    path = WORK / "secrets" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(value)
    return path


def write_configs(svc: Services) -> dict[str, Path]:
    art = svc.artemis
    assert art is not None
    central = art.central_settings()  # central logs in as its own broker user, as docs/installation.md sets up
    configs = {}
    for number, site in enumerate(SITES, 1):
        repl = svc[site].repl
        path = WORK / f"sender-{site}.toml"
        path.write_text(
            f'home = "{WORK / site}"\n[sender]\nid = "{site}"\nserver_id = {900 + number}\ntimezone = "UTC"\n'
            f'snapshot = "initial"\nmin_binlog_retention_hours = 0\n'
            f'[site_db]\nhost = "{repl.host}"\nport = {repl.port}\ndatabase = "demo_{site}"\nuser = "{repl.user}"\n'
            f'password_file = "{_secret(f"{site}-db", repl.password)}"\n'
            f'[broker]\nurl = "stomp+ssl://{art.host}:{art.tls_port}"\nca_file = "{art.ca_file}"\n'
            # each site its own broker user: it may only send to the sync address, and only as itself
            f'user = "{site}"\npassword_file = "{_secret(f"{site}-broker", art.site_settings(site).password)}"\n'
            'destination = "demo.openmrs.sync"\n'
        )
        configs[site] = path
    admin = svc["central"].admin
    path = WORK / "receiver.toml"
    path.write_text(
        f'home = "{WORK / "central"}"\n[receiver]\nsite_id = "central"\ntimezone = "UTC"\nretry_interval_seconds = 5\n'
        f'[central_db]\nhost = "{admin.host}"\nport = {admin.port}\ndatabase = "demo_central"\n'
        f'state_schema = "demo_dbsync"\nuser = "{admin.user}"\npassword_file = "{_secret("central-db", admin.password)}"\n'
        f'[broker]\nurl = "stomp+ssl://{art.host}:{art.tls_port}"\nca_file = "{art.ca_file}"\n'
        # central's own broker user (role dbsync-receiver of examples/artemis/broker.xml), not the administrator
        f'user = "{central.user}"\npassword_file = "{_secret("central-broker", central.password)}"\n'
        'destination = "demo.openmrs.sync"\n'
        f'[console]\nport = {CONSOLE_PORT + port_offset()}\n'
    )
    configs["central"] = path
    return configs


def start(args: list[str], log: str) -> subprocess.Popen:
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    out = open(WORK / "logs" / log, "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", *args], stdout=out, stderr=out,
                            start_new_session=True)
    (WORK / "pids").mkdir(exist_ok=True)
    (WORK / "pids" / f"{log}.pid").write_text(str(proc.pid))
    return proc


def stop_demo_processes() -> None:
    for pid_file in (WORK / "pids").glob("*.pid") if (WORK / "pids").exists() else []:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        pid_file.unlink()


def _count(db: DbParams, table: str) -> int:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{table}`")  # noqa: S608 - fixed table names
        return int(cur.fetchone()[0])


def progress_table(sites: dict[str, DbParams], central: DbParams, tables: list[str]) -> Table:
    table = Table(title="rows at each site and at central")
    table.add_column("table")
    for site in sites:
        table.add_column(site, justify="right")
    table.add_column("sites total", justify="right")
    table.add_column("central", justify="right")
    for name in tables:
        counts = [_count(db, name) for db in sites.values()]
        table.add_row(name, *map(str, counts), str(sum(counts)), str(_count(central, name)))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--down", action="store_true", help="stop the demo processes and the services")
    parser.add_argument("--patients", type=int, default=40, help="patients per site (default 40)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for central to catch up")
    parser.add_argument("--keep", action="store_true", help="leave senders and receiver running at the end")
    args = parser.parse_args()
    if args.down:
        stop_demo_processes()
        down()
        console.print("demo stopped")
        return 0
    stop_demo_processes()
    console.print("[bold]starting MariaDB (site1, site2, central) and Artemis …")
    svc = ensure_up()
    for instance, database in [*((s, f"demo_{s}") for s in SITES), ("central", "demo_central")]:
        with svc[instance].admin.connect() as conn, conn.cursor() as cur:  # a second run starts afresh
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    sites = {s: load_openmrs(svc[s].admin, f"demo_{s}") for s in SITES}
    central = load_openmrs(svc["central"].admin, "demo_central")
    with central.connect(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS demo_dbsync")
        state.migrate(conn, "demo_dbsync", "demo_central")
        for site in SITES:
            state.add_site(conn, "demo_dbsync", site, name=f"Clinic {site[-1]}", broker_user=site)
    configs = write_configs(svc)
    for site in SITES:
        (WORK / site / "state.sqlite").unlink(missing_ok=True)
    console.print("[bold]starting the receiver and both senders (TLS to Artemis) …")
    procs = [start(["receiver", "--receiver-id", "central", "--config", str(configs["central"])], "receiver.log")]
    time.sleep(2)
    procs += [start(["sender", "--config", str(configs[s])], f"sender-{s}.log") for s in SITES]
    console.print(f"[bold]writing a clinical workload at both sites ({args.patients} patients each) …")
    truths: dict[str, GroundTruth] = {}
    for number, site in enumerate(SITES, 1):
        truths[site] = generate(sites[site], seed=number, site=site, patients=args.patients, mutations=0.2)
        console.print(f"  {site}: {truths[site].stats['rows_created'] + truths[site].stats['rows_mutated']} row "
                      f"changes in {truths[site].stats['create_seconds'] + truths[site].stats['mutate_seconds']:.1f} s")
    tables = ["person", "patient", "person_name", "patient_identifier", "visit", "encounter", "obs", "orders",
              "allergy", "conditions"]
    deadline = time.monotonic() + args.timeout
    diffs: dict[str, list[str]] = {}
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            live.update(progress_table(sites, central, tables))
            diffs = {s: compare(central, truths[s], username_suffix=f"|{s}", limit=50) for s in SITES}
            if all(not d for d in diffs.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
    subprocess.run([sys.executable, "-m", "dbsync_cli", "sites", "list", "--config", str(configs["central"])])
    summary = Table(title="each site compared with central, through uuids")
    for col in ("site", "tables", "rows expected", "differences"):
        summary.add_column(col)
    for site in SITES:
        expected = sum(truths[site].counts().values())
        summary.add_row(site, str(len(truths[site].tables)), str(expected), str(len(diffs[site])))
    Console().print(summary)
    for site, found in diffs.items():
        for line in found[:10]:
            Console().print(f"  {site}: {line}")
    if not args.keep:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        stop_demo_processes()
    ok = all(not d for d in diffs.values())
    Console().print("[bold green]every site row arrived at central" if ok else "[bold red]differences remain")
    url, password = start_console(configs["central"])
    print(f"console: {url} (log in as demo, password {password}; `scripts/demo --down` stops it)", flush=True)
    return 0 if ok else 1


def start_console(config: Path) -> tuple[str, str]:
    """The console on central, with an operator `demo` whose password is new at every run (kept in .demo)."""
    import secrets
    import urllib.request

    password = secrets.token_urlsafe(12)
    _secret("console-demo", password)
    subprocess.run([sys.executable, "-m", "dbsync_cli", "console", "user", "add", "demo", "--role", "operator",
                    "--password-stdin", "--config", str(config)], input=(password + "\n").encode(), check=True,
                   capture_output=True)
    start(["console", "serve", "--config", str(config)], "console.log")
    url = f"http://127.0.0.1:{CONSOLE_PORT + port_offset()}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "login", timeout=2)
            break
        except OSError:
            time.sleep(0.3)
    return url, password


if __name__ == "__main__":
    sys.exit(main())
