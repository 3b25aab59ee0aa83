"""Command line of the workload generator (scripts/workload).

    workload [generate] --database site1 --seed 1 --patients 500 --truth truth.json [--load-schema]
    workload compare --database central --truth truth.json --username-suffix '|site1'
    workload metadata-sql > tests/fixtures/openmrs-metadata.sql

The password comes from $DBSYNC_WORKLOAD_PASSWORD or --password-file, never from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from dbsync_cli.db import DbParams
from devtools.workload.generator import generate
from devtools.workload.metadata import metadata_sql
from devtools.workload.openmrs import load_openmrs
from devtools.workload.truth import GroundTruth, compare


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3306)
    p.add_argument("--socket", help="unix socket (instead of host/port)")
    p.add_argument("--user", default="root")
    p.add_argument("--password-file", type=Path, help="file holding the password (else $DBSYNC_WORKLOAD_PASSWORD)")
    p.add_argument("--database", required=True)


def _params(a: argparse.Namespace) -> DbParams:
    password = a.password_file.read_text().strip() if a.password_file else os.environ.get("DBSYNC_WORKLOAD_PASSWORD", "")
    return DbParams(host=a.host, port=a.port, user=a.user, password=password, database=a.database, unix_socket=a.socket)


def _generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workload", description="Write seeded OpenMRS clinical activity into a site DB.")
    _connection_args(p)
    p.add_argument("--load-schema", action="store_true", help="create the database and load schema + metadata first")
    p.add_argument("--site", default="site1", help="site name (seeds the stream, prefixes identifiers)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--patients", type=int, default=100)
    p.add_argument("--visits-per-patient", type=float, default=3)
    p.add_argument("--encounters-per-visit", type=float, default=2)
    p.add_argument("--obs-per-encounter", type=float, default=8)
    p.add_argument("--mutations", type=float, default=0.2, help="share of rows updated/voided/deleted afterwards")
    p.add_argument("--staff", type=int, default=5)
    p.add_argument("--batch-rows", type=int, default=1000, help="rows per INSERT statement")
    p.add_argument("--transaction-rows", type=int, default=1000, help="rows per transaction; 0 = one transaction")
    p.add_argument("--truth", type=Path, help="write the ground truth (JSON) here")
    a = p.parse_args(argv)
    db = _params(a)
    if a.load_schema:
        db = load_openmrs(db.with_database(None), a.database)
    truth = generate(db, seed=a.seed, patients=a.patients, visits_per_patient=a.visits_per_patient,
                     encounters_per_visit=a.encounters_per_visit, obs_per_encounter=a.obs_per_encounter,
                     mutations=a.mutations, site=a.site, staff=a.staff, batch_rows=a.batch_rows,
                     transaction_rows=a.transaction_rows)
    if a.truth:
        truth.to_json(a.truth)
    sys.stdout.buffer.write(orjson.dumps({"database": db.describe(), "stats": truth.stats, "rows": truth.counts()},
                                         option=orjson.OPT_APPEND_NEWLINE))
    return 0


def _compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workload compare", description="Compare a database with a ground truth.")
    _connection_args(p)
    p.add_argument("--truth", type=Path, required=True)
    p.add_argument("--username-suffix", help="expected suffix on users.username/system_id, provider.identifier")
    p.add_argument("--strict", action="store_true", help="also report rows the truth does not know")
    p.add_argument("--limit", type=int, default=1000)
    a = p.parse_args(argv)
    diffs = compare(_params(a), GroundTruth.from_json(a.truth), username_suffix=a.username_suffix, strict=a.strict,
                    limit=a.limit)
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s)", file=sys.stderr)
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "metadata-sql":
        sys.stdout.write(metadata_sql())
        return 0
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    if argv and argv[0] == "generate":
        argv = argv[1:]
    return _generate(argv)


if __name__ == "__main__":
    sys.exit(main())
