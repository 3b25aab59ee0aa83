"""Issue 12 item 1: binlogs without column names (MySQL 5.7, binlog_row_metadata=MINIMAL) are decoded with the
columns each event was written with, from the sender's schema history, across ALTER TABLE and restarts."""

from __future__ import annotations

import pytest
from helpers import dbsync
from test_apply import new_person, site  # noqa: F401 - fixture

from dbsync_cli import exitcodes
from dbsync_cli.sender.checkpoint import CheckpointStore


@pytest.fixture
def minimal(site):  # noqa: F811
    """The site's server writes row events without column names for the test's duration."""
    site.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    yield site
    site.sql("SET GLOBAL binlog_row_metadata = 'FULL'")


@pytest.fixture(params=["FULL", "MINIMAL"])
def metadata(request, site):  # noqa: F811
    """The site's server writes row events with column names (FULL) and without them (MINIMAL)."""
    site.sql(f"SET GLOBAL binlog_row_metadata = '{request.param}'")
    yield site
    site.sql("SET GLOBAL binlog_row_metadata = 'FULL'")


def _names(messages: list[dict]) -> dict[str, tuple[str, str | None]]:
    """person_name messages: uuid → (op, given_name)."""
    return {m["uuid"]: (m["op"], (m.get("data") or {}).get("given_name")) for m in messages
            if m["table"] == "person_name"}


def test_add_and_drop_column_mid_stream_and_a_replay_from_before_them(metadata) -> None:
    s = metadata
    before_add = CheckpointStore(s.home).load()
    _, first = new_person(s, given="First")
    # a column before uuid: decoding with today's names would shift the uuid and given_name columns
    s.sql("ALTER TABLE person_name ADD COLUMN dbsync_extra INT NULL AFTER person_id")
    got = _names(s.messages())  # the sender reads the ALTER while it is current: the history records it
    assert got == {first: ("c", "First")}, got
    _, second = new_person(s, given="Second")
    s.sql("UPDATE person_name SET dbsync_extra = 7, given_name = 'Second-b', date_changed = NOW() "
             "WHERE uuid = %s", (second,))
    got = _names(s.messages())
    assert got == {second: ("u", "Second-b")}, got
    s.sql("ALTER TABLE person_name DROP COLUMN dbsync_extra")
    _, third = new_person(s, given="Third")
    s.sql("DELETE FROM person_name WHERE uuid = %s", (second,))
    got = _names(s.messages())
    assert got == {third: ("c", "Third"), second: ("d", None)}, got

    # killed and restarted from before both ALTERs: every event decodes with the columns it was written with
    store = CheckpointStore(s.home)
    store.save(before_add)
    store.close()
    replayed = s.messages()
    person_names = [(m["uuid"], m["op"]) for m in replayed if m["table"] == "person_name"]
    assert (first, "c") in person_names and (third, "c") in person_names and (second, "d") in person_names
    assert all(m["uuid"] in (first, second, third) for m in replayed if m["table"] == "person_name"), person_names


def test_two_alters_while_the_sender_is_behind_stop_it_instead_of_guessing(minimal) -> None:
    """The columns between two ALTERs of one table are gone from information_schema when the sender gets there:
    capture stops before the event (exit 11), it never decodes it with the wrong columns."""
    s = minimal
    new_person(s, given="Before")
    assert s.messages()
    s.sql("ALTER TABLE person_name ADD COLUMN dbsync_extra INT NULL AFTER person_id")
    new_person(s, given="Between")
    s.sql("ALTER TABLE person_name DROP COLUMN dbsync_extra")
    run = dbsync("capture", "--until-idle", "--config", str(s.config), env=s.env, check=False)
    err = run.stderr.decode()
    assert run.returncode == exitcodes.BINLOG_SETTINGS and "several DDL statements" in err, err[-2000:]
    assert b'"Between"' not in run.stdout
