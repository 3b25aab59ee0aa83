"""Issue 11: trust between sites, on the real servers."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter

from helpers import drain
from receiver_helpers import drop_schema, make_central, make_site
from test_apply import new_person, outcomes, site  # noqa: F401 - fixture
from test_field_cases import publish_raw


def test_a_site_cannot_update_or_delete_another_sites_rows(openmrs_db, services, tmp_path, broker_settings) -> None:
    """Seen: site2 messages changed a site1 person's gender and deleted a site1 obs, applied without a conflict. A
    row belongs to the site whose message created it; another site's change or delete goes to the error queue
    naming both sites, and the rest applies."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    try:
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        person, name = new_person(site1)
        assert outcomes(central.apply(site1.messages()))["applied"] == 3
        site1.sql("UPDATE person SET gender='M', date_changed=NOW() WHERE uuid=%s", (person,))
        (update,) = [m for m in site1.messages() if m["table"] == "person"]
        site1.sql("DELETE FROM person_name WHERE uuid=%s", (name,))
        (delete,) = site1.messages()
        forged = [dict(update, site="site2", id="site2:" + update["id"]),
                  dict(delete, site="site2", id="site2:" + delete["id"])]
        results = central.apply(forged)
        assert outcomes(results) == Counter({"error": 2}), results
        reasons = {r["table"]: r["reason"] for r in results}
        assert reasons["person"] == (f"person {person} belongs to site site1: a change from site site2 is refused "
                                     "(a site changes only its own rows; receiver.cross_site_changes)")
        assert central.sql("SELECT gender FROM person WHERE uuid=%s", (person,)) == [("F",)]
        assert central.sql("SELECT COUNT(*) FROM person_name WHERE uuid=%s", (name,)) == [(1,)]
        errors = central.sql(f"SELECT site, table_name, reason FROM `{central.schema}`.receiver_retry_queue")
        assert sorted(e[1] for e in errors) == ["person", "person_name"] and {e[0] for e in errors} == {"site2"}
        # the owner's own changes still apply; the error entries hold nothing up
        assert outcomes(central.apply([update, delete])) == Counter({"applied": 2})
        assert central.sql("SELECT gender FROM person WHERE uuid=%s", (person,)) == [("M",)]
        # an explicit setting allows it where a programme needs it
        central.config.write_text(central.config.read_text().replace("[receiver]\n", '[receiver]\ncross_site_changes = "allow"\n'))
        site1.sql("UPDATE person SET gender='F', date_changed=NOW() WHERE uuid=%s", (person,))
        (again,) = [m for m in site1.messages() if m["table"] == "person"]
        assert outcomes(central.apply([dict(again, site="site2", id="site2:" + again["id"])])) == Counter(
            {"applied": 1})
    finally:
        drop_schema(central)


def _send_as(broker, destination: str, message: dict, **header_overrides: str) -> None:
    """One persistent SEND with a receipt, as a sender would (headers overridable: a forger's)."""
    publish_raw(broker, destination, [message], **header_overrides)


def test_a_forged_site_is_rejected_by_the_broker_user_artemis_stamps(openmrs_db, services, tmp_path,
                                                                    broker_settings) -> None:
    """Seen: a message with "site": "site2" updated an obs site1 owns; all senders shared one broker user. Each
    site now sends as its own broker user, Artemis stamps it on every message (populate-validated-user), and the
    receiver refuses a message whose body site, header site and broker user disagree."""
    from helpers import dbsync

    from dbsync_cli.receiver import state

    dest = f"test.trust.{uuid.uuid4().hex[:8]}"
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=(), destination=dest)
    try:
        with central.db.connect(autocommit=False) as conn:
            state.add_site(conn, central.schema, "site1", broker_user="site1")
            state.add_site(conn, central.schema, "site2", broker_user="site2")
        site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
        _person, name = new_person(site1)
        (created,) = [m for m in site1.messages() if m["table"] == "person_name"]
        as_site1 = services.artemis.site_settings("site1")
        _send_as(as_site1, dest, created)  # the real thing
        forged = dict(created, site="site2", id="site2:forged:1", uuid=str(uuid.uuid4()))
        _send_as(as_site1, dest, forged)  # site1's user speaking for site2
        mixed = dict(created, id="site1:mixed:1", uuid=str(uuid.uuid4()))
        _send_as(as_site1, dest, mixed, **{"dbsync-site": "site2"})  # header and body disagree
        spoofed = dict(created, site="site2", id="site2:spoofed:1", uuid=str(uuid.uuid4()))
        _send_as(as_site1, dest, spoofed, JMSXUserID="site2", _AMQ_VALIDATED_USER="site2")  # the broker overwrites
        records = dbsync("consume", "--config", str(central.config), "--idle-exit", "3", env=central.env).stdout
        assert records.count(b'"broker_user":"site1"') == 4
        results = {r["message_id"]: r for r in central.apply(records)}
        assert results[created["id"]]["outcome"] == "applied"
        assert results["site2:forged:1"]["outcome"] == "error"
        assert results["site2:forged:1"]["reason"] == ("message for site 'site2' was sent by broker user 'site1'; "
                                                       "the site sends as 'site2'")
        assert results["site1:mixed:1"]["outcome"] == "error"
        assert results["site1:mixed:1"]["reason"] == "message for site 'site1' was sent with dbsync-site 'site2'"
        assert results["site2:spoofed:1"]["outcome"] == "error"
        # the error entries keep the transport identity: a retry judges them the same way
        dbsync("retry", "again", "--config", str(central.config), env=central.env, check=False)
        assert central.sql("SELECT COUNT(*) FROM person_name WHERE uuid IN (%s, %s, %s, %s)",
                           (name, forged["uuid"], mixed["uuid"], spoofed["uuid"])) == [(1,)]
    finally:
        drop_schema(central)


def test_a_sites_broker_user_may_send_to_the_sync_address_and_nothing_else(services) -> None:
    """A site's broker user cannot read the sync queue (other sites' messages) nor send anywhere else."""
    import stomp

    from dbsync_cli.broker import open_connection

    dest = f"test.trust.{uuid.uuid4().hex[:8]}"
    as_site1 = services.artemis.site_settings("site1")
    _send_as(as_site1, dest, {"v": 1, "id": "site1:x:1", "site": "site1"})
    for action in ("consume", "send elsewhere"):
        errors: list[str] = []

        class Listener(stomp.ConnectionListener):
            def __init__(self, found: list[str]) -> None:
                self.found = found

            def on_error(self, frame) -> None:
                self.found.append(frame.headers.get("message", ""))

        conn = open_connection(as_site1, listener=Listener(errors))
        try:
            if action == "consume":
                conn.subscribe(dest, id="peek", ack="client-individual", headers={"subscription-type": "ANYCAST"})
            else:
                conn.send(f"test.other.{uuid.uuid4().hex[:6]}", b"{}", headers={"receipt": "r"})
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            with contextlib.suppress(Exception):
                conn.disconnect()
        # refused: AMQ229032 "does not have permission"; a refused SUBSCRIBE reads "Error creating subscription"
        assert errors and ("AMQ229032" in errors[0] or "AMQ339016" in errors[0]), (action, errors)
    assert len(drain(services.artemis.settings(), dest, idle=1)) == 1  # the site user read nothing


def test_the_documented_artemis_user_add_gives_a_new_site_a_user_that_may_only_send(services) -> None:
    """docs/installation.md's `artemis user add` step, run as written against the running broker: the new
    site's user logs in and sends to the sync address (in the dbsync-sender role), then is removed."""
    import dataclasses
    import subprocess

    art = services.artemis
    new_site, password = f"site{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    admin = ["--url", f"tcp://{art.host}:{art.core_port}", "--user", art.user, "--password", art.password]
    assert art.home is not None
    cli = str(art.home / "artemis" / "bin" / "artemis")  # the instance the services script created
    run = subprocess.run([cli, "user", "add", *admin, "--user-command-user", new_site, "--user-command-password",
                          password, "--role", "dbsync-sender", "--silent"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0 and f"{new_site} added successfully" in run.stdout, run.stdout + run.stderr
    try:
        dest = f"test.trust.{uuid.uuid4().hex[:8]}"
        as_new = dataclasses.replace(art.settings(), user=new_site, password=password)
        _send_as(as_new, dest, {"v": 1, "id": f"{new_site}:x:1", "site": new_site})
        (got,) = drain(art.settings(), dest, idle=1)
        assert got["site"] == new_site
    finally:
        subprocess.run([cli, "user", "rm", *admin, "--user-command-user", new_site, "--silent"], capture_output=True,
                       timeout=120, check=False)


def test_the_home_directory_logs_and_state_are_readable_by_their_owner_only(site) -> None:  # noqa: F811
    """Seen: state.sqlite, the logs and the home directory were created 0644/0755."""
    new_person(site)
    site.messages()
    paths = [site.home, *site.home.rglob("*")]
    assert any(p.name == "state.sqlite" for p in paths) and any(p.suffix == ".log" for p in paths), paths
    loose = [(str(p), oct(p.stat().st_mode & 0o777)) for p in paths if p.stat().st_mode & 0o077]
    assert loose == []


def test_a_capture_for_a_look_never_disconnects_the_running_sender(site, tmp_path) -> None:  # noqa: F811
    """Issue 11 item 7: `dbsync capture` beside a running sender used the same replication server id, and MariaDB
    disconnected the sender's binlog stream (error 4052). The second reader of a home picks an id of its own."""
    from helpers import dbsync
    from test_receiver_e2e import _start, _stop

    log = tmp_path / "sender.log"
    sender = _start(["sender", "--config", str(site.config)], site.env, log)
    try:
        time.sleep(6)  # streaming, caught up
        new_person(site)
        look = dbsync("capture", "--config", str(site.config), "--until-idle", env=site.env)
        assert b"reads the binlog as server id" in look.stderr and b"this one reads as" in look.stderr
        assert look.stdout.strip()  # it read the binlog (from the sender's checkpoint: what is left of the rows)
        time.sleep(3)
        text = log.read_text(errors="replace")
        assert "restarting in" not in text and "4052" not in text, text[-3000:]
        assert sender.poll() is None
    finally:
        _stop(sender, log)


def test_a_second_sender_of_one_home_refuses_to_start(site, tmp_path) -> None:  # noqa: F811
    """Two senders of one home would both publish and both move the checkpoint: the second one exits 16."""
    from helpers import dbsync
    from test_receiver_e2e import _start, _stop

    log = tmp_path / "sender.log"
    sender = _start(["sender", "--config", str(site.config)], site.env, log)
    try:
        time.sleep(6)
        second = dbsync("sender", "--config", str(site.config), "--until-idle", env=site.env, check=False)
        lines = [line for line in second.stderr.decode().splitlines() if line.startswith("dbsync:")]
        assert second.returncode == 16 and len(lines) == 1 and "another sender" in lines[0], second.stderr.decode()
        assert sender.poll() is None
    finally:
        _stop(sender, log)
