"""Issue 10: the field cases where sync went silently wrong, each reproduced on the real servers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid as uuidlib
from collections import Counter

import orjson
import pytest
from helpers import dbsync, sender_config
from receiver_helpers import Site, drop_schema, make_central, make_site
from test_apply import central, new_person, outcomes, site  # noqa: F401 - fixtures
from test_receiver_e2e import _start, _stop

from dbsync_cli import exitcodes, wire
from dbsync_cli.broker import open_connection
from devtools.workload.generator import generate

__all__ = ["central", "site"]


def test_a_copy_of_a_delivery_still_in_the_inbox_is_counted_per_site_in_status(openmrs_db, services, tmp_path,
                                                                              broker_settings) -> None:
    """A sender killed after its SEND left the broker but before the receipt sends the message again, and nothing
    at the broker drops the copy (no duplicate detection: wire.py). The inbox keeps the first; the copy it drops
    is counted per site in `dbsync status`, in the same transaction as the store, never only in a log line."""
    destination = f"test.trust.copies{uuidlib.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    try:
        site_ = make_site(openmrs_db, services, tmp_path, broker_settings)
        new_person(site_)
        messages = site_.messages()[:3]
        publish_raw(services.artemis.site_settings("site1"), destination, messages + messages[:2])
        out = dbsync("consume", "--config", str(central.config), "--idle-exit", "3", env=central.env).stdout
        assert [orjson.loads(line)["message_id"] for line in out.splitlines()] == [m["id"] for m in messages]
        run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
        (row,) = [s for s in orjson.loads(run.stdout)["sites"] if s["identifier"] == "site1"]
        assert row["skipped"] == {"duplicate_delivery": 2}
        (last,) = central.sql(f"SELECT last_message_id FROM `{central.schema}`.receiver_skipped WHERE "
                              "reason = 'duplicate_delivery'")
        assert last == (messages[1]["id"],)
    finally:
        drop_schema(central)


def test_a_backdated_change_of_a_row_central_never_touched_is_applied(central, site) -> None:  # noqa: F811
    """Case 10: a clinic clock corrected backwards makes a change's date_changed older than the row's previous
    one. The site's binlog says it is newer; before, apply dropped it as `stale` (no conflict, no retry, status OK)."""
    _person, name = new_person(site, date_changed="2024-08-01 00:00:00")
    central.apply(site.messages())
    site.sql("UPDATE person_name SET family_name='Corrected', date_changed='2024-07-01 00:00:00' WHERE uuid=%s",
             (name,))
    assert outcomes(central.apply(site.messages())) == Counter({"applied": 1})
    assert central.sql("SELECT family_name, date_changed FROM person_name WHERE uuid=%s", (name,))[0][0] == "Corrected"
    # an un-void dated in the past is the same case
    site.sql("UPDATE person_name SET voided=1, void_reason='dup', date_voided='2024-09-01 00:00:00', "
             "voided_by=1 WHERE uuid=%s", (name,))
    central.apply(site.messages())
    site.sql("UPDATE person_name SET voided=0, void_reason=NULL, date_voided=NULL, voided_by=NULL, "
             "date_changed='2024-06-01 00:00:00' WHERE uuid=%s", (name,))
    assert outcomes(central.apply(site.messages())) == Counter({"applied": 1})
    assert central.sql("SELECT voided FROM person_name WHERE uuid=%s", (name,)) == [(0,)]


def test_what_apply_does_not_apply_is_counted_per_site_and_reason_in_status(central, site) -> None:  # noqa: F811
    """Case 10, second half: duplicates and stale changes are counted per site and reason and shown by status."""
    _person, name = new_person(site)
    first = site.messages()
    central.apply(first)
    site.sql("UPDATE person_name SET family_name='One' WHERE uuid=%s", (name,))
    older = site.messages()
    site.sql("UPDATE person_name SET family_name='Two' WHERE uuid=%s", (name,))
    newer = site.messages()
    central.apply(newer)
    assert outcomes(central.apply(older)) == Counter({"stale": 1})  # the binlog says it is older
    assert outcomes(central.apply(first)) == Counter({"duplicate": len(first)})
    run = dbsync("status", "--json", "--config", str(central.config), env=central.env, check=False)
    report = orjson.loads(run.stdout)
    (row,) = [s for s in report["sites"] if s["identifier"] == "site1"]
    assert row["skipped"] == {"duplicate": len(first), "stale": 1}
    table = dbsync("status", "--config", str(central.config), env={**central.env, "COLUMNS": "200"},
                   check=False).stdout.decode()
    assert f"{len(first)} duplicate, 1 stale" in table


class Gate:
    """A TCP port in front of a server: refused (nothing listens) until `open()`, then it forwards: an outage of
    central that ends while the receiver runs."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server: socket.socket | None = None

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def _accept(self) -> None:
        assert self.server is not None
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_a_receiver_started_while_central_is_down_waits_and_syncs_when_it_is_back(
        openmrs_db, services, tmp_path, broker_settings) -> None:
    """Case 7: the receiver started while central was unreachable exited 1 with a traceback (the state migration
    ran before supervision); now start-up is retried with backoff like any later outage."""
    destination = f"test.outage.{uuidlib.uuid4().hex[:10]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, destination=destination)
    site_ = make_site(openmrs_db, services, tmp_path, broker_settings)
    names = [new_person(site_, given=f"Outage{i}")[1] for i in range(3)]
    messages = site_.messages()
    gate = Gate(central.db.port)
    config = tmp_path / "receiver-gated.toml"
    config.write_text(central.config.read_text().replace(f"port = {central.db.port}\n", f"port = {gate.port}\n"))
    log = tmp_path / "receiver.log"
    proc = _start(["receiver", "--config", str(config)], central.env, log)
    try:
        time.sleep(5)
        assert proc.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        assert "start-up (central DB) failed" in text and "restarting in" in text and "Traceback" not in text, text
        gate.open()
        publish_raw(broker_settings, destination, messages)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = central.sql("SELECT COUNT(*) FROM person_name WHERE uuid IN (%s, %s, %s)", tuple(names))[0][0]
            if found == len(names):
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert found == len(names), log.read_text()[-3000:]
    finally:
        _stop(proc, log)
        gate.close()
    drop_schema(central)


def publish_raw(broker, destination: str, messages: list[dict], **header_overrides: str) -> None:
    """The messages as a sender would publish them (persistent, ANYCAST, a receipt on the last); headers
    overridable (a forger's)."""
    got = threading.Event()

    class Listener:
        def on_receipt(self, frame) -> None:
            got.set()

    conn = open_connection(broker, listener=Listener())
    try:
        for index, message in enumerate(messages):
            body, headers = wire.encode(message, anycast=True, compress_over=16_384)
            headers.update(header_overrides)
            if index == len(messages) - 1:
                headers["receipt"] = "last"
            conn.send(destination, body, headers=headers)
        assert got.wait(30), "no receipt from the broker"
    finally:
        conn.disconnect()


def test_equal_zones_convert_nothing_in_a_dst_gap(openmrs_db, services, tmp_path, broker_settings) -> None:
    """Case 9: site and central both in Europe/Berlin; 2024-03-31 02:30 (inside the spring-forward gap) reached
    central as 03:30. Equal zones convert nothing."""
    central = make_central(openmrs_db, tmp_path, broker_settings, timezone="Europe/Berlin")
    site_ = make_site(openmrs_db, services, tmp_path, broker_settings, timezone="Europe/Berlin")
    _person, gap = new_person(site_, date_changed="2024-03-31 02:30:00")
    _person, fold = new_person(site_, date_changed="2024-10-27 02:30:00")
    assert "applied" in outcomes(central.apply(site_.messages()))
    got = dict(central.sql("SELECT uuid, CAST(date_changed AS CHAR) FROM person_name WHERE uuid IN (%s, %s)",
                           (gap, fold)))
    assert got == {gap: "2024-03-31 02:30:00", fold: "2024-10-27 02:30:00"}
    drop_schema(central)


@pytest.mark.lane2
def test_patients_purged_in_one_transaction_are_deleted_at_central(openmrs_db, services, tmp_path,
                                                                    broker_settings) -> None:
    """Case 4: a patient delete gets its uuid from its person's delete, which comes later in the same transaction;
    when the transaction spanned enrich batches, every patient delete was skipped as "uuid unknown" and the person
    deletes stuck in the retry queue on the patient foreign key. Batches now end between transactions."""
    central = make_central(openmrs_db, tmp_path, broker_settings)
    admin = openmrs_db("site1")
    repl = services["site1"].repl.with_database(admin.database)
    work = tmp_path / "work"
    work.mkdir()
    conf, env = sender_config(work, repl, broker_settings, destination="test.unused", batch=50, home=tmp_path / "h")
    site_ = Site(admin, conf, env, tmp_path / "h")
    site_.messages()
    people = [new_person(site_, given=f"Purge{i}")[0] for i in range(120)]
    central.apply(site_.messages())
    assert central.sql("SELECT COUNT(*) FROM person WHERE uuid IN (" + ", ".join(["%s"] * len(people)) + ")",
                       tuple(people)) == [(120,)]
    with admin.connect(autocommit=False) as conn, conn.cursor() as cur:  # one purge transaction: 360 row events
        ids = "SELECT person_id FROM person WHERE uuid IN (" + ", ".join(["%s"] * len(people)) + ")"
        cur.execute(f"SELECT person_id FROM ({ids}) p", tuple(people))
        keys = [r[0] for r in cur.fetchall()]
        marks = ", ".join(["%s"] * len(keys))
        for table, column in (("person_name", "person_id"), ("patient", "patient_id"), ("person", "person_id")):
            cur.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", tuple(keys))
        conn.commit()
    messages = site_.messages()
    assert sum(1 for m in messages if m["table"] == "patient" and m["op"] == "d") == 120
    central.apply(messages)
    marks = ", ".join(["%s"] * len(people))
    assert central.sql(f"SELECT COUNT(*) FROM person WHERE uuid IN ({marks})", tuple(people)) == [(0,)]
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue") == [(0,)]
    drop_schema(central)


def test_permanent_errors_at_the_head_of_the_retry_queue_hold_nothing_up(central, site) -> None:  # noqa: F811
    """Case 6: the queue was read `ORDER BY id LIMIT 5000`; 5,000 permanent errors at its head kept every entry
    behind them from ever being retried. A pass now walks the whole queue; `dbsync retry` shows and mends it."""
    s = f"`{central.schema}`"
    errors = [(f"broken-{i}", b"{not json") for i in range(5_100)]
    for i in range(0, len(errors), 1000):
        part = errors[i:i + 1000]
        central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, reason, date_created, kind) VALUES "
                    + ", ".join(["(%s, 'malformed JSON', NOW(), 'permanent')"] * len(part)), tuple(e[0] for e in part))
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT id, '{{not json' FROM {s}.receiver_retry_queue")
    _person, name = new_person(site, given="Behind")
    messages = [dict(m, site="site9", id="site9:" + m["id"]) for m in site.messages()]
    assert "retry" in outcomes(central.apply(messages))  # site9 is not registered yet
    central.sql(f"INSERT INTO {s}.site_info (name, identifier, date_created) VALUES ('site9', 'site9', NOW())")
    central.apply(b"", "--retry")
    assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("Behind",)]
    # the operator's commands
    listed = orjson.loads(dbsync("retry", "list", "--json", "--limit", "3", "--config", str(central.config),
                                 env=central.env).stdout)
    assert all(e["reason"].startswith("malformed JSON") for e in listed) and len(listed) == 3, [e["reason"] for e in listed]
    assert listed[0]["kind"] == "permanent"
    shown = orjson.loads(dbsync("retry", "show", str(listed[0]["id"]), "--json", "--config", str(central.config),
                                env=central.env).stdout)
    assert shown["body"] == "{not json" and shown["message_id"] == "broken-0"
    dropped = dbsync("retry", "drop", str(listed[0]["id"]), "--config", str(central.config), env=central.env)
    assert b"dropped" in dropped.stdout
    again = dbsync("retry", "again", str(listed[1]["id"]), "--config", str(central.config), env=central.env)
    assert [orjson.loads(line)["outcome"] for line in again.stdout.splitlines()] == ["error"]
    missing = dbsync("retry", "show", str(listed[0]["id"]), "--config", str(central.config), env=central.env,
                     check=False)
    assert missing.returncode != 0 and b"does not exist" in missing.stderr and b"Traceback" not in missing.stderr
    assert central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue") == [(5_099,)]


def test_binlog_metadata_switched_at_runtime_is_decoded_from_the_schema_history(site) -> None:  # noqa: F811
    """Case 3: `SET GLOBAL binlog_row_metadata='MINIMAL'` while the sender ran made enrich skip every event as
    "malformed" while the checkpoint moved past them. Such events carry no column names; capture now names them
    from its schema history (issue 12) and the change arrives whole; nothing is skipped."""
    new_person(site, given="Before")
    assert site.messages()
    try:  # the event is written while the setting is MINIMAL; capture runs after it was set back
        site.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
        _person, name = new_person(site, given="During")
    finally:
        site.sql("SET GLOBAL binlog_row_metadata = 'FULL'")
    got = {m["uuid"]: m for m in site.messages()}
    assert got[name]["op"] == "c" and got[name]["data"]["given_name"] == "During", got.get(name)


def test_a_second_receiver_on_one_central_is_refused(central, site) -> None:  # noqa: F811
    """Case 8: nothing stopped a second receiver from applying the same inbox batch at the same time. The applier
    holds a server lock named after the state schema; a second one waits briefly, then exits 13 with one line."""
    log = central.config.parent / "first-receiver.log"
    first = _start(["receiver", "--config", str(central.config)], central.env, log)
    try:
        deadline = time.monotonic() + 30
        while "consuming" not in log.read_text() and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.3)
        second = dbsync("apply", "--from-inbox", "--config", str(central.config), env=central.env, check=False,
                        timeout=120)  # waits LOCK_WAIT_SECONDS (30) for the lock first
        assert second.returncode == exitcodes.ANOTHER_RECEIVER, second.stderr.decode()[-2000:]
        assert b"another receiver" in second.stderr and b"Traceback" not in second.stderr
        assert first.poll() is None
    finally:
        _stop(first, log)
    # once the first has stopped, apply may run
    assert dbsync("apply", "--from-inbox", "--config", str(central.config), env=central.env).returncode == 0


ADMIN = "5f5c8cb5-b095-11eb-9be5-0242c0a82002"  # the fixture's (and every OpenMRS's) admin and daemon users
DAEMON = "A4F30A1B-5EB9-11DF-A648-37A07F9C90FB"


def _central_rows(central, mode: str) -> None:
    lines = [line for line in central.config.read_text().splitlines() if not line.startswith("central_rows")]
    text = "\n".join(lines) + "\n"
    central.config.write_text(text.replace("[receiver]\n", f'[receiver]\ncentral_rows = "{mode}"\n'))


def test_no_site_changes_centrals_own_rows_whatever_was_resolved_before(openmrs_db, services, tmp_path,
                                                                        broker_settings) -> None:
    """Case 1: OpenMRS ships admin and daemon (and their person rows) with the same uuid in every database. After
    the old onboarding (the first site's "existed at central before any sync" conflicts resolved --keep-central), a
    second site's copies were applied without a conflict: central's admin became admin|site2."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
        users = "SELECT uuid, username, system_id, email FROM users WHERE uuid IN (%s, %s) ORDER BY uuid"
        before = central.sql(users, (ADMIN, DAEMON))
        shared = {m["uuid"] for m in site1.initial} & {u for (u,) in central.sql("SELECT uuid FROM users")}
        assert shared == {ADMIN, DAEMON}

        # the old onboarding: site1's copies parked, resolved --keep-central
        _central_rows(central, "park")
        parked = central.apply(site1.initial)
        listed = orjson.loads(dbsync("conflicts", "list", "--json", "--config", str(central.config),
                                     env=central.env).stdout)
        assert {c["uuid"] for c in listed} >= {u.lower() for u in shared} and all(
            c["reason"] == "central's own row: central had it before any site changed it" for c in listed)
        for conflict in listed:
            dbsync("conflicts", "resolve", str(conflict["id"]), "--keep-central", "--config", str(central.config),
                   env=central.env)
        assert not [o for o in parked if o["outcome"] == "central_owned"]

        # from now on the default: central's own rows are left unchanged, counted, never parked
        _central_rows(central, "skip")
        site1.sql("UPDATE users SET email='admin@site1.example', date_changed=NOW() WHERE uuid=%s", (ADMIN,))
        assert outcomes(central.apply(site1.messages())) == Counter({"central_owned": 1})
        results = central.apply(site2.initial)
        owned = [o for o in results if o["outcome"] == "central_owned"]
        assert {o["uuid"] for o in owned if o["table"] == "users"} == {u.lower() for u in shared}  # canonical
        assert not [o for o in results if o["outcome"] in ("applied", "conflict", "retry", "waiting", "error")
                    and o.get("uuid") in {m["uuid"].lower() for m in site1.initial}], results
        site2.sql("UPDATE users SET username='root', date_changed=NOW() WHERE uuid=%s", (DAEMON,))
        site2.sql("DELETE FROM user_property WHERE user_id = 1")
        person, name = new_person(site2, "Zoe")  # the site's own rows are not held up
        later = central.apply(site2.messages())
        assert Counter(o["outcome"] for o in later if o.get("uuid") == DAEMON.lower()) == Counter(
            {"central_owned": 1})
        assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("Zoe",)]
        assert central.sql(users, (ADMIN, DAEMON)) == before  # admin, daemon: untouched by either site
        assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_conflict_queue WHERE resolved = 0") \
            == [(0,)]

        # visible: status counts them per site, conflicts list per site and table
        report = orjson.loads(dbsync("status", "--json", "--config", str(central.config), env=central.env,
                                     check=False).stdout)
        skipped = {s["identifier"]: s["skipped"] for s in report["sites"]}
        assert skipped["site1"]["central_owned"] == 1
        assert skipped["site2"]["central_owned"] == len(owned) + 1
        by_table = orjson.loads(dbsync("conflicts", "list", "--central-owned", "--json", "--config",
                                       str(central.config), env=central.env).stdout)
        counts = {(e["site"], e["table"]): e["count"] for e in by_table}
        assert counts[("site1", "users")] == 1 and counts[("site2", "users")] == len(shared) + 1
        table = dbsync("conflicts", "list", "--config", str(central.config), env={**central.env, "COLUMNS": "200"})
        assert "central's own rows" in table.stdout.decode()
    finally:
        drop_schema(central)


def test_a_site_takes_over_a_central_row_only_by_an_operators_decision(central, site) -> None:  # noqa: F811
    """Case 1, the way out: with central_rows = "park", --take-incoming hands the row to the site, whose later
    changes then apply; --keep-central keeps it central's."""
    _central_rows(central, "park")
    central.apply(site.initial)
    listed = orjson.loads(dbsync("conflicts", "list", "--json", "--config", str(central.config),
                                 env=central.env).stdout)
    number = {c["uuid"]: c["id"] for c in listed if c["table"] == "users"}
    dbsync("conflicts", "resolve", str(number[DAEMON.lower()]), "--take-incoming", "--config", str(central.config),
           env=central.env)
    dbsync("conflicts", "resolve", str(number[ADMIN]), "--keep-central", "--config", str(central.config),
           env=central.env)
    site.sql("UPDATE users SET email=CONCAT(username, '@site1.example'), date_changed=NOW() WHERE uuid IN (%s, %s)",
             (ADMIN, DAEMON))
    results = {o["uuid"]: o["outcome"] for o in central.apply(site.messages())}
    assert results == {DAEMON.lower(): "applied", ADMIN: "conflict"}  # outcomes name canonical uuids
    assert central.sql("SELECT email FROM users WHERE uuid=%s", (DAEMON,)) == [("daemon@site1.example",)]


def test_a_message_id_seen_again_with_other_content_is_not_taken_as_a_duplicate(central, site) -> None:  # noqa: F811
    """Case 2, receiver side: a handled id is proof only of the change it carried. Before, any message whose id was
    in applied_message (kept 30 days) was dropped as a duplicate, whatever it said."""
    new_person(site)
    messages = site.messages()
    assert outcomes(central.apply(messages))["applied"] == len(messages)
    person, name = new_person(site, "Bob")
    later = {m["table"]: m for m in site.messages()}
    reused = [dict(later[m["table"]], id=m["id"]) for m in messages]  # new changes under the ids already applied
    results = central.apply(reused)
    assert outcomes(results) == Counter({"applied": len(reused)}), results
    assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("Bob",)]
    assert outcomes(central.apply(reused)) == Counter({"duplicate": len(reused)})  # the same content again
    assert central.sql("SELECT COUNT(*) FROM person WHERE uuid=%s", (person,)) == [(1,)]


def _refs(value):
    """Every {"$ref"} in a message's data."""
    if isinstance(value, dict):
        if "$ref" in value:
            yield value
        else:
            for inner in value.values():
                yield from _refs(inner)


def test_a_parent_deleted_while_enrich_reads_a_batch_never_leaves_a_reference_without_uuid(site) -> None:  # noqa: F811
    """Case 12: enrich loaded a batch's rows, then looked up the uuids they reference in separate reads; a parent
    deleted in between (an obs group purged while the site sent its snapshot) went out as
    `obs_group_id: {"$ref": "obs", "uuid": null}` and central parked it. One consistent read per batch now."""
    from dbsync_cli.config import load
    from dbsync_cli.sender import run as sender_run
    from dbsync_cli.sender.enrich import Enricher

    generate(site.admin, seed=12, patients=3, mutations=0.0)
    events = [orjson.loads(line) for line in dbsync("capture", "--config", str(site.config), "--until-idle",
                                                     env=site.env).stdout.splitlines() if line.strip()]
    grouped = [e for e in events if e.get("table") == "obs" and (e.get("after") or {}).get("obs_group_id")]
    assert grouped, "the workload made no obs groups"
    child = grouped[0]["after"]
    cfg = load(site.config, "sender", env=site.env)

    class PurgedMeanwhile(Enricher):
        """A clinic purges the obs group (children first) right after enrich has the batch's obs rows (from their
        after images, or read) and before it looks up the uuids they reference."""
        purged = False

        def _references(self, tables):
            tables = list(tables)
            if any(table.name == "obs" for table, _rows in tables) and not self.purged:
                PurgedMeanwhile.purged = True
                group = child["obs_group_id"]
                site.sql("DELETE FROM obs WHERE obs_group_id = %s", (group,))
                site.sql("DELETE FROM obs WHERE obs_id = %s", (group,))
            return super()._references(tables)

    enricher = PurgedMeanwhile(sender_run.enrich_settings(cfg), sender_run.load_model(cfg))
    try:
        messages = list(enricher.run(events))
    finally:
        enricher.close()
    assert PurgedMeanwhile.purged
    unresolved = [(m.get("table"), m.get("uuid"), r) for m in messages for r in _refs(m.get("data")) if not r.get("uuid")]
    assert unresolved == [], unresolved[:5]
    sent_child = [m for m in messages if m.get("table") == "obs" and m.get("uuid") == child["uuid"]]
    assert sent_child and sent_child[0]["data"]["obs_group_id"]["uuid"]  # the group as it was in the batch's read


def test_a_dangling_reference_at_the_site_stops_enrich_before_the_row(site) -> None:  # noqa: F811
    """Case 12, the rest: a reference no uuid exists for (a site row pointing at a row that is not there, written
    with foreign key checks off) is never sent as a null uuid nor skipped: enrich stops before it, exit 14."""
    generate(site.admin, seed=13, patients=1, mutations=0.0)
    site.messages()
    (obs_id,) = site.sql("SELECT obs_id FROM obs ORDER BY obs_id LIMIT 1")[0]
    with site.admin.connect() as conn, conn.cursor() as cur:
        cur.execute("SET foreign_key_checks = 0")
        cur.execute("UPDATE obs SET obs_group_id = 987654321 WHERE obs_id = %s", (obs_id,))
    events = dbsync("capture", "--config", str(site.config), "--until-idle", env=site.env).stdout
    run = dbsync("enrich", "--config", str(site.config), env=site.env, stdin=events, check=False)
    assert run.returncode == exitcodes.DANGLING_REFERENCE == 14, run.stderr.decode()[-2000:]
    line = run.stderr.decode().strip().splitlines()[-1]
    assert line.startswith(f"dbsync: site row obs {obs_id}: obs_group_id references obs 987654321, which does not "
                           "exist in the site database"), line
    assert b'"uuid":null' not in run.stdout


def test_conflicts_of_a_site_resolve_in_one_command_with_an_audit_line(central, site, tmp_path) -> None:  # noqa: F811
    """Issue 11 item 7: resolving took ~2 s per conflict with no bulk form and left no audit line."""
    _central_rows(central, "park")
    central.apply(site.initial)
    run = dbsync("conflicts", "list", "--json", "--config", str(central.config), env=central.env)
    parked = orjson.loads(run.stdout)
    assert len(parked) >= 2
    out = dbsync("conflicts", "resolve", "--site", "site1", "--keep-central", "--yes", "--config", str(central.config),
                 env=central.env).stdout.decode()
    assert out.startswith(f"{len(parked)} conflict(s) resolved (keep-central)"), out
    assert orjson.loads(dbsync("conflicts", "list", "--json", "--config", str(central.config),
                               env=central.env).stdout) == []
    log = (tmp_path / "receiver-home" / "logs" / "dbsync.log").read_text()
    assert log.count("resolved keep-central by ") == len(parked)
    bad = dbsync("conflicts", "resolve", "--keep-central", "--config", str(central.config), env=central.env,
                 check=False)
    assert bad.returncode == 2 and "give a conflict number" in bad.stderr.decode()
