"""GTID positions (sender/gtid.py): what a checkpoint covers, on MariaDB and MySQL."""

from __future__ import annotations

from dbsync_cli.sender import gtid

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
OTHER = "4c9e3dfc-9d25-11e9-8d2e-0242ac1cfd7e"


def test_mariadb_positions_cover_by_domain_and_sequence() -> None:
    pos = gtid.parse("mariadb", "0-11-40,1-12-7")
    assert pos.covers("0-11-40") and pos.covers("0-99-3") and not pos.covers("0-11-41")
    assert pos.knows("1-5-100") and not pos.knows("2-11-1") and not pos.covers("2-11-1")
    pos.add("0-13-41")
    assert str(pos) == "0-13-41,1-12-7"
    pos.add("0-11-12")  # an older sequence number of the domain does not move it back
    assert str(pos) == "0-13-41,1-12-7"
    assert pos.covers_all(gtid.parse("mariadb", "0-11-41,1-12-2")) and not pos.covers_all(gtid.parse("mariadb", "3-1-1"))
    assert str(gtid.parse("mariadb", "")) == "" and gtid.parse("mariadb", "0-1-5,0-2-9").covers("0-1-9")
    pos.restore("0-1-2")
    assert str(pos) == "0-1-2"


def test_mysql_sets_cover_by_server_uuid_and_interval() -> None:
    pos = gtid.parse("mysql", f"{UUID}:1-5:7")
    assert pos.covers(f"{UUID}:3") and not pos.covers(f"{UUID}:6") and not pos.covers(f"{OTHER}:1")
    assert pos.knows(f"{UUID}:99") and not pos.knows(f"{OTHER}:1")
    pos.add(f"{UUID}:6")
    assert str(pos) == f"{UUID}:1-7"
    copy = gtid.parse("mysql", str(pos))
    copy.add(f"{OTHER}:1")
    assert pos.covers_all(gtid.parse("mysql", f"{UUID}:2-4")) and not pos.covers_all(copy)
    assert copy.covers_all(pos)
    copy.restore(f"{UUID}:1-2")
    assert str(copy) == f"{UUID}:1-2"


def test_previous_gtids_event_text_has_exclusive_interval_ends() -> None:
    # as mysql-replication 1.0.17's PreviousGtidsEvent writes it: a dash after the uuid, exclusive interval ends
    text = f"{UUID}-:['1-101', '105-106'],{OTHER}-:['3-4']"
    assert gtid.previous_gtids(text) == f"{UUID}:1-100:105,{OTHER}:3"
    assert str(gtid.parse("mysql", gtid.previous_gtids(text))) == f"{UUID}:1-100:105,{OTHER}:3"
    assert gtid.previous_gtids(f"{UUID}:['1-2']") == f"{UUID}:1"  # and without the dash
    assert gtid.previous_gtids("") == ""


def test_covers_known_ignores_domains_and_servers_the_position_does_not_know() -> None:
    target = gtid.parse("mariadb", "0-11-40")
    assert target.covers_known(gtid.parse("mariadb", "0-11-30,1-12-900"))  # domain 1: the replica's own
    assert not target.covers_known(gtid.parse("mariadb", "0-11-41"))
    mysql = gtid.parse("mysql", f"{UUID}:1-10")
    assert mysql.covers_known(gtid.parse("mysql", f"{UUID}:1-5,{OTHER}:1-99"))
    assert not mysql.covers_known(gtid.parse("mysql", f"{UUID}:1-11"))


def test_adding_a_mysql_gtid_the_set_has_changes_nothing() -> None:
    pos = gtid.parse("mysql", f"{UUID}:1-5")
    pos.add(f"{UUID}:3")  # the library itself raises on an overlapping interval
    assert str(pos) == f"{UUID}:1-5"
