"""Issue 26, items 1-5: the retry queue at scale, on the real central (binlog on, FULL row image). Entries that
share a cause are tried through one representative a pass; the others wait for it, counted, without a write."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from helpers import dbsync, sender_config
from test_apply import central, new_person, outcomes, site  # noqa: F401 - fixtures

from dbsync_cli import config
from dbsync_cli.receiver.retry import RetryLane, retry_pending
from dbsync_cli.receiver.run import Receiver

__all__ = ["central", "site"]

MARK = "BODYMARK-" + uuidlib.uuid4().hex  # a string only the parked bodies hold


@contextlib.contextmanager
def applier_of(central) -> Iterator:  # noqa: F811
    applier = Receiver(config.load(central.config, "receiver", env=central.env)).applier()
    try:
        applier.claim()
        yield applier
    finally:
        applier.close()


def binlog_bytes(central) -> int:  # noqa: F811
    """Central's binlog size in all (every file): what a pass wrote."""
    return sum(int(row[1]) for row in central.sql("SHOW BINARY LOGS"))


def binlog_tail(central, since: int) -> bytes:  # noqa: F811
    """The bytes central's binlog gained since it was `since` bytes long (its files read in order)."""
    ((basename,),) = central.sql("SELECT @@log_bin_basename")
    data = b""
    for name, _size, *_ in central.sql("SHOW BINARY LOGS"):
        with open(f"{basename.rsplit('/', 1)[0]}/{name}", "rb") as f:
            data += f.read()
    return data[since:]


def binlog_position(central) -> tuple[str, int]:  # noqa: F811
    ((file, pos, *_),) = central.sql("SHOW MASTER STATUS")
    return file, int(pos)


def tables_logged(central, since: tuple[str, int]) -> Counter:  # noqa: F811
    """Row events written to central's binlog since `since`, per table of this test's state schema (other tests
    may write to the same server at the same time: their tables are not counted)."""
    names = [row[0] for row in central.sql("SHOW BINARY LOGS") if row[0] >= since[0]]
    found: Counter = Counter()
    for name in names:
        start = since[1] if name == since[0] else 4
        for event in central.sql(f"SHOW BINLOG EVENTS IN '{name}' FROM {start}"):
            info = str(event[5]).replace("`", "")  # "table_id: 9 (schema.table)", quoted or not
            if event[2] == "Table_map" and f"({central.schema}." in info:
                found[info.split(f"({central.schema}.")[-1].rstrip(") ")] += 1
    return found


def entries(central) -> list[tuple]:  # noqa: F811
    return central.sql(f"SELECT id, kind, attempts, next_attempt, cause, reason FROM `{central.schema}`."
                       "receiver_retry_queue ORDER BY id")


def causes(central) -> list[tuple]:  # noqa: F811
    return central.sql(f"SELECT cause, kind, attempts, entry_id, next_attempt FROM `{central.schema}`."
                       "receiver_retry_cause ORDER BY cause")


def untried_unseen(central) -> int:  # noqa: F811
    """Entries never tried that neither wait behind their entity's head nor for a cause that backs off (item 5)."""
    s = f"`{central.schema}`"
    ((n,),) = central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue q LEFT JOIN {s}.receiver_retry_cause c ON "
                          "c.cause = q.cause WHERE q.attempts = 0 AND c.cause IS NULL")
    return int(n)


def park_copies(central, site, count: int) -> list[dict]:  # noqa: F811
    """`count` refused messages (site9, not registered), each its own row (own uuid, own id): one cause."""
    new_person(site, given=f"{MARK[:20]}copy")
    (template,) = [m for m in site.messages() if m["table"] == "person_name"]
    parked = []
    for copy in range(count):
        fresh = str(uuidlib.uuid4())
        parked.append(dict(template, site="site9", id=f"site9:{copy}:{template['id']}", uuid=fresh,
                           data=dict(template["data"], uuid=fresh)))
    assert outcomes(central.apply(parked))["retry"] == count
    return parked


def park_for_unregistered(central, site, count: int = 3) -> list[dict]:  # noqa: F811
    """Messages of site `site9` (not registered): refused, parked as permanent errors, each body with MARK."""
    for i in range(count):
        new_person(site, given=f"{MARK[:20]}{i}")
    messages = [dict(m, site="site9", id="site9:" + m["id"]) for m in site.messages()]
    assert outcomes(central.apply(messages))["retry"] == len(messages)
    return messages


def park_thousands(central, site, count: int = 5000) -> list[dict]:  # noqa: F811
    """About `count` refused messages of site9 (not registered), parked by `dbsync apply`: copies of a new person's
    messages, each its own row (own uuid, own id), so that every entry is the head of its entity."""
    new_person(site, given="Refused")
    template = site.messages()
    parked: list[dict] = []
    for copy in range(count // len(template) + 1):
        for m in template:
            fresh = str(uuidlib.uuid4())
            data = dict(m["data"], uuid=fresh) if "uuid" in (m.get("data") or {}) else m.get("data")
            parked.append(dict(m, site="site9", id=f"site9:{copy}:{m['id']}", uuid=fresh, data=data))
    assert outcomes(central.apply(parked))["retry"] == len(parked)
    return parked


def test_a_pass_never_logs_a_body_and_writes_nothing_for_entries_not_due(central, site) -> None:  # noqa: F811
    before_park = binlog_bytes(central)
    messages = park_for_unregistered(central, site)
    assert MARK.encode()[:20] in binlog_tail(central, before_park)  # the bodies are logged once, at insert
    assert {kind for _id, kind, *_ in entries(central)} == {"permanent"}
    with applier_of(central) as applier:
        before = binlog_bytes(central)
        tried = retry_pending(applier)  # due: parked entries are tried at the next pass
        # one representative of the cause is tried; the others wait for it (untried, unwritten, counted)
        assert len(tried) == 1 and all(o.outcome == "retry" for o in tried) and len(messages) > 1
        first = binlog_tail(central, before)
        assert first and MARK.encode()[:20] not in first  # attempts logged, never a body
        rows = entries(central)
        assert sum(1 for _id, kind, attempts, *_ in rows if attempts == 1 and kind != "waiting") == 1
        (cause,) = causes(central)
        assert cause[:3] == ("site:site9", "permanent", 1) and cause[4] is not None
        assert untried_unseen(central) == 0
        since = binlog_position(central)
        for _ in range(3):
            assert retry_pending(applier) == []  # backing off: not tried
        assert tables_logged(central, since) == Counter()  # and not a row written for them


def test_a_permanent_error_backs_off_and_is_tried_at_once_when_its_site_is_registered(central, site) -> None:  # noqa: F811
    park_for_unregistered(central, site, count=2)
    with applier_of(central) as applier:
        retry_pending(applier)
        (_id, kind, attempts, next_at, cause, reason), *_ = entries(central)
        ((now,),) = central.sql("SELECT UTC_TIMESTAMP(3)")
        assert kind == "permanent" and cause == "site:site9" and attempts == 1 and "not registered" in reason
        assert 4 * 60 < (next_at - now).total_seconds() <= 5 * 60 + 5  # its own backoff, not every pass
        assert retry_pending(applier) == []
    dbsync("sites", "add", "site9", "--config", str(central.config), env=central.env)
    assert {next_at for _i, _k, _a, next_at, *_ in entries(central)} == {None}  # due now
    with applier_of(central) as applier:
        lane = RetryLane(applier, interval=1.0)
        deadline = time.monotonic() + 1.0  # within one interval
        while entries(central) and time.monotonic() < deadline + 5:
            lane.round()
        assert entries(central) == []
    ((count,),) = central.sql("SELECT COUNT(*) FROM person_name WHERE given_name LIKE %s", (MARK[:20] + "%",))
    assert count == 2


def test_entries_behind_one_not_due_are_tried_within_one_interval(central, site) -> None:  # noqa: F811
    """Item 5: entries waiting behind their entity's head kept attempts 0: they now say what they wait for."""
    person, name = new_person(site, given="Head")
    first = [dict(m, site="site9", id="site9:" + m["id"]) for m in site.messages()]
    site.sql("UPDATE person_name SET family_name='Later' WHERE uuid=%s", (name,))
    later = [dict(m, site="site9", id="site9:" + m["id"]) for m in site.messages()]
    central.apply(first)
    assert outcomes(central.apply(later)) == Counter({"retry": len(later)})  # refused before it waits
    with applier_of(central) as applier:
        retry_pending(applier)
    rows = entries(central)
    assert rows and untried_unseen(central) == 0  # none left unseen: tried, or waiting for the cause that failed
    waiting = [r for r in rows if r[1] == "waiting"]
    assert waiting and all(r[5].startswith("waiting behind retry entry") for r in waiting)
    report = orjson.loads(dbsync("status", "--config", str(central.config), "--json", env=central.env,
                                 check=False).stdout)
    retry_queue = report["retry_queue"]
    assert retry_queue["waiting_for_cause"] == len(rows)  # all of site9's, its representative too
    assert retry_queue["causes_backed_off"] == 1 and retry_queue["due"] == 0


def test_a_superseded_entry_closes_itself_and_is_counted(central, site) -> None:  # noqa: F811
    """Item 4: a refused message whose row a newer change has since mended closes itself, counted, not silent."""
    _person, name = new_person(site, given="Old")
    old = site.messages()
    site.sql("UPDATE person_name SET given_name='New' WHERE uuid=%s", (name,))
    newer = site.messages()
    s = f"`{central.schema}`"
    (message,) = [m for m in old if m["table"] == "person_name"]
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, table_name, reason, date_created, kind, "
                "entity_uuid, next_attempt) VALUES (%s, 'site1', 'person_name', 'refused (test)', UTC_TIMESTAMP(3) - "
                "INTERVAL 1 MINUTE, 'permanent', %s, UTC_TIMESTAMP(3) + INTERVAL 6 HOUR)", (message["id"], name))
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT MAX(id), %s FROM {s}.receiver_retry_queue",
                (orjson.dumps(message),))
    with applier_of(central) as applier:
        assert retry_pending(applier) == []  # not due, and its row has not been applied since: it stays
    assert len(entries(central)) == 1  # the row has not been applied since: the entry stays
    assert set(outcomes(central.apply([m for m in old if m["table"] != "person_name"] + newer))) <= {"applied"}
    with applier_of(central) as applier:
        closed = [o for o in retry_pending(applier) if o.outcome == "superseded"]
    assert len(closed) == 1 and entries(central) == []
    assert central.sql(f"SELECT count FROM {s}.receiver_skipped WHERE reason='superseded'") == [(1,)]
    assert central.sql("SELECT given_name FROM person_name WHERE uuid=%s", (name,)) == [("New",)]


def test_a_referenced_row_arriving_makes_its_entries_due(central) -> None:  # noqa: F811
    """Item 3: an entry waiting for a row is due at once when that row is applied (not at the end of its backoff)."""
    s = f"`{central.schema}`"
    ref = str(uuidlib.uuid4())
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, reason, date_created, kind, cause, next_attempt) "
                "VALUES ('m-ref', 'concept x does not exist at central', UTC_TIMESTAMP(3), 'transient', %s, "
                "UTC_TIMESTAMP(3) + INTERVAL 1 HOUR)", (f"ref:{ref}",))
    central.sql(f"INSERT INTO {s}.receiver_retry_cause (cause, kind, attempts, ref_table, next_attempt) VALUES "
                "(%s, 'transient', 3, 'concept', UTC_TIMESTAMP(3) + INTERVAL 1 HOUR)", (f"ref:{ref}",))
    with applier_of(central) as applier:
        lane = RetryLane(applier, interval=3600)
        lane.round()  # the pass reads what entries wait for
        assert lane.note_applied([str(uuidlib.uuid4())]) == 0
        assert len(causes(central)) == 1
        assert lane.note_applied([ref.upper()]) == 1
    assert causes(central) == []  # the cause's schedule is gone: its entries are due


def test_entries_sharing_a_cause_are_tried_through_one_representative_and_written_once(central, site) -> None:  # noqa: F811
    """Item 1, the first hour: a queue filled at once with one cause writes one entry and the cause's one row a
    pass, not a row per entry; the cause's next attempt moves, its other entries wait for it."""
    park_copies(central, site, count=40)
    s = f"`{central.schema}`"
    with applier_of(central) as applier:
        since = binlog_position(central)
        tried = retry_pending(applier)
        assert [o.outcome for o in tried] == ["retry"]
        assert tables_logged(central, since) == Counter({"receiver_retry_queue": 1, "receiver_retry_cause": 1})
        central.sql(f"UPDATE {s}.receiver_retry_cause SET next_attempt = UTC_TIMESTAMP(3) - INTERVAL 1 SECOND")
        since = binlog_position(central)
        assert [o.outcome for o in retry_pending(applier)] == ["retry"]  # due again: one representative again
        assert tables_logged(central, since) == Counter({"receiver_retry_queue": 1, "receiver_retry_cause": 1})
        ((_cause, _kind, attempts, _entry, next_at),) = causes(central)
        ((now,),) = central.sql("SELECT UTC_TIMESTAMP(3)")
        assert attempts == 2 and (next_at - now).total_seconds() > 5 * 60  # the cause backs off, doubling
    assert central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts = 0") == [(39,)]
    assert untried_unseen(central) == 0
    listed = orjson.loads(dbsync("retry", "list", "--config", str(central.config), "--json",
                                 env=central.env).stdout)
    rows = listed["entries"] if isinstance(listed, dict) else listed
    assert sum(1 for e in rows if (e.get("waiting_for") or "") == "site:site9") == 39  # visibly waiting for it


def test_retry_again_without_a_number_tries_entries_not_due(central, site) -> None:  # noqa: F811
    """Review #2: `dbsync retry again` with no number retries every entry, not only the due ones."""
    from dbsync_cli.receiver import actions

    park_copies(central, site, count=3)
    with applier_of(central) as applier:
        retry_pending(applier)
        assert retry_pending(applier) == []  # backing off: nothing due
        done = actions.perform(applier, "retry_again", {})
    assert len(done["records"]) == 1, done  # the cause's representative, tried although not due


def test_a_conflict_made_between_two_rounds_holds_its_entity(central, site) -> None:  # noqa: F811
    """Review #3: a live batch between two rounds of one pass makes a conflict for entity E; an entry of E further
    on in the pass is not applied over it (the conflicts are read every round)."""
    _person, name = new_person(site, given="Held")
    messages = site.messages()
    (named,) = [m for m in messages if m["table"] == "person_name"]
    assert set(outcomes(central.apply([m for m in messages if m is not named]))) <= {"applied"}
    s = f"`{central.schema}`"
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, reason, date_created, kind) VALUES "
                "('first', 'no body', UTC_TIMESTAMP(3), 'transient')")
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, table_name, entity_key, reason, "
                "date_created, kind, entity_uuid) VALUES (%s, 'site1', 'person_name', %s, 'waiting (test)', "
                "UTC_TIMESTAMP(3), 'transient', %s)", (named["id"], f"person_name:{name}", name))
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT MAX(id), %s FROM {s}.receiver_retry_queue",
                (orjson.dumps(named),))
    with applier_of(central) as applier:
        lane = RetryLane(applier, interval=1.0, round_seconds=1e-6, page=1)
        lane.round()  # the pass starts: its first entry only
        assert lane.busy()
        central.sql(f"INSERT INTO {s}.receiver_conflict_queue (message_id, site, table_name, entity_uuid, entity_key, "
                    "body, reason, date_created) VALUES ('live-m1', 'site1', 'person_name', %s, %s, '{}', 'test', "
                    "UTC_TIMESTAMP(3))", (name, f"person_name:{name}"))
        while lane.busy():
            lane.round()
    assert central.sql("SELECT 1 FROM person_name WHERE uuid = %s", (name,)) == []  # held by the conflict
    assert len(entries(central)) == 2


def test_superseded_looks_past_cross_site_and_never_closes_broker_user_refusals(central, site) -> None:  # noqa: F811
    """Review #6: candidates whose row another site changed never hide the real ones; an entry refused for its
    broker user (evidence) never closes itself."""
    from dbsync_cli.receiver.superseded import superseded_entries

    _person, name = new_person(site, given="Old")
    old = site.messages()
    site.sql("UPDATE person_name SET given_name='New' WHERE uuid=%s", (name,))
    newer = site.messages()
    (message,) = [m for m in old if m["table"] == "person_name"]
    assert set(outcomes(central.apply([m for m in old if m["table"] != "person_name"] + newer))) <= {"applied"}
    s = f"`{central.schema}`"
    central.sql(f"UPDATE {s}.site_info SET broker_user = 'site1-user' WHERE identifier = 'site1'")
    for entry_site, broker_user in (("site2", None), ("site1", "mallory"), ("site1", None)):  # the real one last
        central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, broker_user, table_name, reason, "
                    "date_created, kind, entity_uuid) VALUES (%s, %s, %s, 'person_name', 'refused (test)', "
                    "UTC_TIMESTAMP(3) - INTERVAL 1 HOUR, 'permanent', %s)",
                    (f"{entry_site}-{broker_user}", entry_site, broker_user, name))
        central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT MAX(id), %s FROM "
                    f"{s}.receiver_retry_queue", (orjson.dumps(dict(message, site=entry_site)),))
    with applier_of(central) as applier:
        closed, _after = superseded_entries(applier, 0, limit=1)
    assert [o.message_id for o in closed] == ["site1-None"]
    assert sorted(r[0] for r in central.sql(f"SELECT message_id FROM {s}.receiver_retry_queue")) == [
        "site1-mallory", "site2-None"]


def test_a_row_created_at_central_makes_the_entries_waiting_for_it_due(central) -> None:  # noqa: F811
    """Review #7: a referenced row that arrives other than through a batch (created at central, by a resolution,
    by an operator) is found by the next round: its cause's entries are due."""
    s = f"`{central.schema}`"
    ((ref,),) = central.sql("SELECT uuid FROM concept ORDER BY concept_id LIMIT 1")  # a row at central
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, reason, date_created, kind, cause) VALUES "
                "('m-ref', 'concept x does not exist at central', UTC_TIMESTAMP(3), 'transient', %s)", (f"ref:{ref}",))
    central.sql(f"INSERT INTO {s}.receiver_retry_cause (cause, kind, attempts, ref_table, next_attempt) VALUES "
                "(%s, 'transient', 3, 'concept', UTC_TIMESTAMP(3) + INTERVAL 6 HOUR)", (f"ref:{ref}",))
    with applier_of(central) as applier:
        lane = RetryLane(applier, interval=3600)
        lane.round()
    assert causes(central) == []


def test_dropping_a_head_applies_what_waited_behind_it_even_in_its_own_backoff(central, site) -> None:  # noqa: F811
    """Review #11: entries behind a dropped head are tried at once, whether due or not."""
    from dbsync_cli.receiver.retry import drop_entry

    _person, name = new_person(site, given="Behind")
    messages = site.messages()
    (named,) = [m for m in messages if m["table"] == "person_name"]
    assert set(outcomes(central.apply([m for m in messages if m is not named]))) <= {"applied"}
    s = f"`{central.schema}`"
    ek = f"person_name:{name}"
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, table_name, entity_key, reason, "
                "date_created, kind, next_attempt) VALUES ('head', 'site1', 'person_name', %s, 'broken (test)', "
                "UTC_TIMESTAMP(3), 'permanent', UTC_TIMESTAMP(3) + INTERVAL 6 HOUR)", (ek,))
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT MAX(id), 'not json' FROM "
                f"{s}.receiver_retry_queue")
    central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, table_name, entity_key, reason, "
                "date_created, kind, next_attempt) VALUES (%s, 'site1', 'person_name', %s, 'waiting (test)', "
                "UTC_TIMESTAMP(3), 'transient', UTC_TIMESTAMP(3) + INTERVAL 1 HOUR)", (named["id"], ek))
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT MAX(id), %s FROM {s}.receiver_retry_queue",
                (orjson.dumps(named),))
    ((head,),) = central.sql(f"SELECT MIN(id) FROM {s}.receiver_retry_queue")
    with applier_of(central) as applier:
        said = drop_entry(applier, int(head))
    assert "1 waiting" in said, said
    assert central.sql("SELECT 1 FROM person_name WHERE uuid = %s", (name,)) == [(1,)]
    assert entries(central) == []


@pytest.mark.slow
def test_a_round_never_keeps_live_messages_waiting_behind_thousands_of_entries(central, site) -> None:  # noqa: F811
    """Item 2: a pass over 3,000 due entries runs in rounds of a quarter second; the loop applies live batches
    between them."""
    messages = park_for_unregistered(central, site, count=1)
    s = f"`{central.schema}`"
    for _ in range(12):  # 3 * 2**10 ≈ 3,000 entries, each a copy of a refused message
        # no cause: each entry on its own schedule, so that the pass has 3,000 attempts to make
        central.sql(f"INSERT INTO {s}.receiver_retry_queue (message_id, site, table_name, entity_key, reason, "
                    "date_created, kind, cause) SELECT CONCAT(message_id, 'x', id), site, table_name, NULL, reason, "
                    f"date_created, kind, NULL FROM {s}.receiver_retry_queue")
        if central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue")[0][0] >= 3000:
            break
    central.sql(f"INSERT INTO {s}.receiver_retry_body (id, body) SELECT q.id, (SELECT body FROM "
                f"{s}.receiver_retry_body LIMIT 1) FROM {s}.receiver_retry_queue q LEFT JOIN {s}.receiver_retry_body b "
                "ON b.id = q.id WHERE b.id IS NULL")
    central.sql(f"UPDATE {s}.receiver_retry_queue SET cause = NULL")  # the originals too: every entry tried
    assert len(messages) >= 1
    with applier_of(central) as applier:
        lane = RetryLane(applier, interval=1.0)
        rounds, longest = 0, 0.0
        while rounds == 0 or lane.busy():
            started = time.monotonic()
            lane.round()
            longest = max(longest, time.monotonic() - started)
            rounds += 1
    assert rounds > 3 and longest < 1.5, (rounds, longest)
    assert central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts = 0") == [(0,)]


def live_change_and_receiver(central, site, broker_settings, tmp_path):  # noqa: F811
    """A new person at site1 (its name's uuid, and a function that publishes its messages with `dbsync publish`
    and says how long they took to reach central), then a real `dbsync receiver` started (its log, its process)."""
    _person, live_name = new_person(site, given="Live")
    live = site.messages()
    destination = next(line.split('"')[1] for line in central.config.read_text().splitlines()
                       if line.startswith("destination"))
    sconf, senv = sender_config(tmp_path, site.admin, broker_settings, site="site1", destination=destination,
                                home=site.home)

    def publish_live() -> float:
        """Publish the new person's messages; seconds until its name is at central."""
        dbsync("publish", "--config", str(sconf), env=senv, stdin=b"".join(orjson.dumps(m) + b"\n" for m in live))
        published = time.monotonic()
        while not central.sql("SELECT 1 FROM person_name WHERE uuid = %s", (live_name,)):
            assert receiver.poll() is None and time.monotonic() - published < 30, log.read_text()[-3000:]
            time.sleep(0.05)
        return time.monotonic() - published

    log = tmp_path / "receiver.log"
    with log.open("wb") as out:
        receiver = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "receiver", "--config", str(central.config)],
                                    env=central.env, stdout=out, stderr=out)
    return live_name, publish_live, log, receiver


def test_the_real_receiver_applies_another_sites_live_message_while_its_pass_walks_thousands(
        central, site, broker_settings, tmp_path) -> None:  # noqa: F811
    """Item 2 through the real process: `dbsync receiver` walks 5,000 due entries (refused, parked by `dbsync
    apply`); a message of site1 published meanwhile is at central within a few seconds, while entries of that
    same pass are still untried. The verdict reads central only."""
    parked = park_thousands(central, site)
    s = f"`{central.schema}`"
    assert central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts = 0") == [(len(parked),)]
    central.sql(f"UPDATE {s}.receiver_retry_queue SET cause = NULL")  # each its own schedule: 5,000 attempts
    _name, publish_live, log, receiver = live_change_and_receiver(central, site, broker_settings, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts > 0")[0][0] < 200:
            assert receiver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        seconds = publish_live()
        ((untried,),) = central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts = 0")
        print(f"live message at central {seconds:.2f} s after its publish; {untried} entries not tried yet")
        assert seconds < 5, seconds  # a live change never waits behind the pass
        assert untried > 0, "the pass was over before the live message came: not shown while it runs"
        deadline = time.monotonic() + 300
        while central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE attempts = 0")[0][0]:
            assert receiver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)  # and the pass goes on to its end: every entry tried
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)


def test_the_real_receiver_serves_a_bulk_action_in_rounds_and_applies_a_live_message_meanwhile(
        central, site, broker_settings, tmp_path) -> None:  # noqa: F811
    """Items 2 and 4: `dbsync retry again --site site9 --yes` over 5,000 entries is handed to the running receiver,
    which carries it out in bounded rounds between live batches: a message of site1 published while the request is
    running is at central within 5 s, and the request then ends done with every selected entry tried again. The
    verdict reads central only."""
    park_thousands(central, site)
    s = f"`{central.schema}`"
    # each its own schedule, none due: only the operator's action tries them (not the receiver's own pass)
    central.sql(f"UPDATE {s}.receiver_retry_queue SET cause = NULL, attempts = 1, "
                "next_attempt = UTC_TIMESTAMP() + INTERVAL 1 DAY")
    central.sql(f"DELETE FROM {s}.receiver_retry_cause")
    _name, publish_live, log, receiver = live_change_and_receiver(central, site, broker_settings, tmp_path)
    action = None
    try:
        deadline = time.monotonic() + 60
        while not central.sql("SELECT IS_USED_LOCK(%s)", (f"dbsync:{central.schema}",))[0][0]:
            assert receiver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        action = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "retry", "again", "--site", "site9", "--yes",
                                   "--wait", "300", "--config", str(central.config)], env=central.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not central.sql(f"SELECT 1 FROM {s}.receiver_request WHERE state = 'running' AND result LIKE "
                              "'%%retrying%%'"):
            assert action.poll() is None and time.monotonic() < deadline, (action.poll(), log.read_text()[-3000:])
            time.sleep(0.05)
        seconds = publish_live()
        still = central.sql(f"SELECT state FROM {s}.receiver_request ORDER BY id DESC LIMIT 1")
        print(f"live message at central {seconds:.2f} s after its publish; the bulk request is {still[0][0]}")
        assert seconds < 5, seconds  # a live change never waits behind the operator's action
        assert still == [("running",)], "the action was over before the live message came: not shown while it runs"
        out, err = action.communicate(timeout=600)
        assert action.returncode == 0, err.decode()[-2000:]
        assert central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE site = 'site9' AND attempts < 2"
                           ) == [(0,)], "every selected entry was tried again"
        assert central.sql(f"SELECT state FROM {s}.receiver_request ORDER BY id DESC LIMIT 1") == [("done",)]
    finally:
        if action is not None and action.poll() is None:
            action.kill()
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(60)


def test_entries_central_can_fix_have_a_representative_per_reason(central, site) -> None:  # noqa: F811
    """Item 3: a malformed body and a message for a table central does not have are both fixed only by central's
    schema or settings, but for different reasons: each kind keeps a representative of its own (one failing never
    holds the other untried), and a change of central's schema makes both due."""
    from dbsync_cli.receiver.run import central_changed

    settings = config.load(central.config, "receiver", env=central.env)
    with applier_of(central) as applier:
        central_changed(applier, settings)  # central's schema and settings as they are now, recorded
    new_person(site, given="Shape")
    (good,) = [m for m in site.messages() if m["table"] == "person_name"]
    s = f"`{central.schema}`"
    bodies = [("bad-1", b"{not json"), ("bad-2", b"[1,"),
              ("table-1", orjson.dumps(dict(good, id="table-1", table="no_such_table"))),
              ("table-2", orjson.dumps(dict(good, id="table-2", table="no_such_table", uuid=str(uuidlib.uuid4()))))]
    central.sql(f"INSERT INTO {s}.inbox (message_id, body, date_received) VALUES " +
                ", ".join(["(%s, %s, NOW())"] * len(bodies)), tuple(x for pair in bodies for x in pair))
    central.apply(b"", "--from-inbox")
    kinds = dict(central.sql(f"SELECT message_id, cause FROM {s}.receiver_retry_queue"))
    assert len(kinds) == 4 and len(set(kinds.values())) == 2, kinds  # two reasons, two causes
    assert kinds["bad-1"] == kinds["bad-2"] != kinds["table-1"] == kinds["table-2"]
    central.sql(f"UPDATE {s}.receiver_retry_queue SET next_attempt = NULL")  # due now
    central.sql(f"DELETE FROM {s}.receiver_retry_cause")
    with applier_of(central) as applier:
        tried = retry_pending(applier)
    assert len(tried) == 2 and {o.message_id for o in tried} & {"bad-1", "bad-2"} and \
        {o.message_id for o in tried} & {"table-1", "table-2"}, [o.message_id for o in tried]
    assert sorted(c[0] for c in causes(central)) == sorted(set(kinds.values()))  # each backed off on its own
    with applier_of(central) as applier:
        assert retry_pending(applier) == []  # both backing off
        assert central_changed(applier, settings) == 0  # nothing changed: nothing due
        applier.model.tables.pop(next(iter(applier.model.tables)))  # central's schema "changed"
        assert central_changed(applier, settings) == 4
    assert causes(central) == [] and central.sql(f"SELECT COUNT(*) FROM {s}.receiver_retry_queue WHERE "
                                                 "next_attempt IS NOT NULL") == [(0,)]
