"""The sync message on the wire (dbsync_cli.wire) and its validation at central (receiver.message)."""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
import zlib
from decimal import Decimal
from typing import Any

import orjson
import pytest

from dbsync_cli import wire
from dbsync_cli.openmrs import SchemaModel
from dbsync_cli.openmrs.introspect import Column, TableInfo
from dbsync_cli.receiver.message import parse, parse_raw

UUID = "3f9a1c2e-0000-4000-8000-00000000abcd"
TABLES = {"person", "obs"}


def _msg(**changes: Any) -> dict[str, Any]:
    message = {"v": 1, "id": "s1:mysql-bin.000001:120:0", "site": "s1", "table": "person", "op": "u",
               "uuid": UUID, "snapshot": False, "sent": "2024-01-01T00:00:00+00:00", "source": {}, "data": {}}
    message.update(changes)
    return message


def _model() -> SchemaModel:
    columns = [Column("person_id", "int", "int(11)", False, None, True), Column("uuid", "char", "char(38)", False,
               None, False), Column("gender", "varchar", "varchar(50)", True, None, False)]  # fmt: skip
    info = TableInfo("person", {c.name: c for c in columns}, ("person_id",), {}, {"uuid"})
    return SchemaModel("openmrs", {"person": info}, synced=["person"])


MODEL = _model()


def test_check_rejects_what_is_not_an_object_and_another_version() -> None:
    assert wire.check([1], TABLES) == "expected a JSON object, got list"
    assert wire.check(None, TABLES) == "expected a JSON object, got NoneType"
    assert wire.check(_msg(v=2), TABLES) == "unsupported message version '2'"
    assert wire.check(_msg(v=None), TABLES) == "unsupported message version 'None'"


@pytest.mark.parametrize("key", ["id", "site", "table", "op", "uuid"])
def test_check_names_each_missing_or_empty_key(key: str) -> None:
    message = _msg()
    del message[key]
    assert wire.check(message, TABLES) == f"missing or invalid {key!r}"
    assert wire.check(_msg(**{key: ""}), TABLES) == f"missing or invalid {key!r}"
    assert wire.check(_msg(**{key: 5}), TABLES) == f"missing or invalid {key!r}"


def test_check_rejects_unknown_table_op_and_uuid() -> None:
    assert wire.check(_msg(table="users"), TABLES) == "unknown table 'users'"
    assert wire.check(_msg(op="x"), TABLES) == "unknown op 'x'"
    assert wire.check(_msg(op="h"), TABLES) == "unknown op 'h'"  # a heartbeat is not a message
    assert wire.check(_msg(uuid="-abc"), TABLES) == "invalid uuid '-abc'"
    assert wire.check(_msg(uuid="a b"), TABLES) == "invalid uuid 'a b'"
    assert wire.check(_msg(uuid="a" * 39), TABLES) == f"invalid uuid {'a' * 39!r}"


def test_check_rejects_a_uuid_with_a_trailing_newline() -> None:
    assert wire.check(_msg(uuid=UUID[:30] + "\n"), TABLES) is not None


def test_check_data_of_deletes_and_other_ops() -> None:
    assert wire.check(_msg(op="d", data=None), TABLES) is None
    assert wire.check(_msg(op="d", data={"gender": "F"}), TABLES) is None
    assert wire.check(_msg(op="d", data=[]), TABLES) == "data of a delete must be null"
    assert wire.check(_msg(op="d", data="x"), TABLES) == "data of a delete must be null"
    for op in ("c", "u", "r"):
        assert wire.check(_msg(op=op, data=None), TABLES) == "data must be an object"
        assert wire.check(_msg(op=op, data=[1]), TABLES) == "data must be an object"
        assert wire.check(_msg(op=op), TABLES) is None


def test_message_ids_are_deterministic_per_source() -> None:
    snap = {"snapshot": True, "file": "mysql-bin.000003", "pos": 4, "row": 9}
    assert wire.message_id("s1", snap, "obs", 42) == "s1:snap:mysql-bin.000003:4:obs:42"
    binlog = {"file": "mysql-bin.000003", "pos": 120, "row": 2}
    assert wire.message_id("s1", binlog, "obs", 42) == "s1:mysql-bin.000003:120:2"
    assert wire.message_id("s1", {**binlog, "snapshot": False}, "obs", 42) == "s1:mysql-bin.000003:120:2"


def test_storable_id_keeps_short_ids_and_fits_long_ones_without_collisions() -> None:
    assert wire.storable_id("a" * 255) == "a" * 255
    one, two = wire.storable_id("p" * 300 + "1"), wire.storable_id("p" * 300 + "2")
    assert len(one) <= 255 and len(two) <= 255
    assert one != two
    assert one.startswith("p" * 100) and one == wire.storable_id("p" * 300 + "1")


def test_ref_and_ref_target() -> None:
    assert wire.ref("person", UUID) == {"$ref": "person", "uuid": UUID}
    assert wire.ref_target(wire.ref("person", UUID)) == ("person", UUID)
    assert wire.ref_target(wire.ref("person", None)) is None and wire.ref_target({"uuid": UUID}) is None
    assert wire.ref_target(UUID) is None and wire.ref_target({"$ref": 5, "uuid": UUID}) is None


def test_b64_round_trip_and_invalid_base64() -> None:
    assert wire.b64(b"\x00\xff") == {"$b64": "AP8="}
    assert wire.unb64(wire.b64(memoryview(b"bytes"))) == b"bytes"
    assert wire.is_b64({"$b64": ""}) and not wire.is_b64("AP8=")
    for bad in ("not base64!", "AP8", 5):
        with pytest.raises(ValueError, match="invalid base64"):
            wire.unb64({"$b64": bad})


def test_encode_sets_the_headers_of_a_persistent_send() -> None:
    body, headers = wire.encode(_msg(), anycast=True, compress_over=10_000)
    assert orjson.loads(body) == _msg()
    assert headers == {"persistent": "true", "destination-type": "ANYCAST",
                       "dbsync-id": _msg()["id"], "dbsync-site": "s1", "JMSXGroupID": "s1",
                       "dbsync-table": "person"}  # fmt: skip
    assert wire.encode(_msg(), anycast=False, compress_over=10_000)[1]["destination-type"] == "MULTICAST"
    assert wire.decode_body(body, headers, 10) == body  # not deflated: as it is, whatever the limit


def test_encode_deflates_over_the_threshold_and_decode_inflates_it() -> None:
    message = _msg(data={"gender": "F" * 5000})
    plain = wire.dumps(message)
    body, headers = wire.encode(message, anycast=True, compress_over=len(plain) - 1)
    assert headers["dbsync-encoding"] == "deflate" and len(body) < len(plain)
    assert wire.decode_body(body, headers, len(plain)) == plain
    assert "dbsync-encoding" not in wire.encode(message, anycast=True, compress_over=len(plain))[1]


def test_decode_body_rejects_a_truncated_or_oversized_deflated_body() -> None:
    plain = wire.dumps(_msg(data={"gender": "F" * 5000}))
    body, headers = wire.encode(orjson.loads(plain), anycast=True, compress_over=0)
    with pytest.raises(zlib.error):
        wire.decode_body(body[:-4], headers, 1_000_000)
    with pytest.raises(zlib.error):
        wire.decode_body(body, headers, len(plain) - 1)


def test_delivery_id_prefers_the_sender_id_then_the_broker_id() -> None:
    assert wire.delivery_id({"dbsync-id": "s1:f:1:0", "message-id": "ID:9"}) == "s1:f:1:0"
    assert wire.delivery_id({"message-id": "ID:9"}) == "broker:ID:9"
    assert wire.delivery_id({"dbsync-id": "", "message-id": "ID:9"}) == "broker:ID:9"
    assert len(wire.delivery_id({"dbsync-id": "x" * 400})) <= 255


def test_is_heartbeat() -> None:
    assert wire.is_heartbeat({"op": "h", "source": {}})
    assert not wire.is_heartbeat({"op": "h", "inbox": 1})
    assert not wire.is_heartbeat({"op": "h", "v": 1})
    assert not wire.is_heartbeat(_msg())


def test_dumps_of_database_types() -> None:
    assert wire.dumps({"d": Decimal("1.50"), "b": b"\x00\xff", "s": {"b", "a"}}) == (
        b'{"d":"1.50","b":{"$b64":"AP8="},"s":["a","b"]}')
    assert wire.dumps([dt.timedelta(hours=-1, seconds=-2), dt.timedelta(hours=25, minutes=1)]) == (
        b'["-01:00:02","25:01:00"]')
    assert wire.dumps([dt.datetime(2024, 1, 2, 3, 4, 5), dt.date(2024, 1, 2)]) == (
        b'["2024-01-02 03:04:05","2024-01-02"]')
    with pytest.raises(TypeError):
        wire.dumps({"x": object()})


def test_parse_rejects_oversized_and_malformed_bodies() -> None:
    item = parse_raw(b"{}" + b" " * 100, "m1", "s1", MODEL, max_bytes=50)
    assert item.error == "message of 102 bytes exceeds the 50-byte limit" and item.message_id == "m1"
    item = parse_raw(b"{bad", "m2", "s1", MODEL, max_bytes=1000)
    # behaviour, not the JSON library's wording: one line, the kind of fault first, no table
    assert item.error is not None and item.error.startswith("malformed JSON: ") and "\n" not in item.error
    assert item.table is None and item.message_id == "m2"
    bare = parse(_msg(data={"gender": "F" * 100}), MODEL, max_bytes=50)
    assert bare.error is not None and "exceeds the 50-byte limit" in bare.error


def test_parse_an_inbox_record_with_a_text_or_base64_body() -> None:
    raw = wire.dumps(_msg())
    for body in (raw.decode(), wire.b64(raw)):
        item = parse({"inbox": "12", "message_id": "broker:ID:1", "site": "s1", "body": body}, MODEL, 10_000)
        assert item.error is None and item.inbox == 12 and item.raw == raw
        assert item.message_id == _msg()["id"] and item.site == "s1" and item.table is MODEL.table("person")
        assert item.broker_user == ""  # from the broker, no user stamped


def test_an_inbox_record_whose_site_header_and_body_disagree_is_an_error() -> None:
    record = {"inbox": 3, "message_id": "broker:ID:2", "site": "s9", "broker_user": "s9", "body": wire.b64(
        wire.dumps(_msg()))}
    item = parse(record, MODEL, 10_000)
    assert item.error == "message for site 's1' was sent with dbsync-site 's9'" and item.broker_user == "s9"


def test_parse_keeps_the_transport_id_and_site_of_an_invalid_inbox_record() -> None:
    item = parse({"inbox": 3, "site": "s9", "body": wire.dumps(_msg(table="obs")).decode()}, MODEL, 10_000)
    assert item.error == "unknown table 'obs'"
    assert (item.message_id, item.site, item.table, item.message) == ("inbox:3", "s9", None, None)


def test_parse_a_bare_message() -> None:
    item = parse(_msg(op="d", data=None), MODEL, 10_000)
    assert (item.error, item.message_id, item.site, item.inbox) == (None, _msg()["id"], "s1", None)
    assert item.table is not None and item.table.name == "person"
    anonymous = parse({"v": 1}, MODEL, 10_000)
    assert anonymous.error == "missing or invalid 'id'" and anonymous.message_id.startswith("noid:")


def test_a_parsed_message_id_fits_the_receivers_columns() -> None:
    long_id = "s1:" + "f" * 300
    item = parse_raw(wire.dumps(_msg(id=long_id)), wire.storable_id(long_id), "s1", MODEL, 10_000)
    assert item.error is None and len(item.message_id) <= 255


def test_an_inbox_record_with_a_broken_base64_body_gets_an_error() -> None:
    item = parse({"inbox": 4, "message_id": "m4", "site": "s1", "body": {"$b64": "!!"}}, MODEL, 10_000)
    assert item.error is not None and item.message_id == "m4"


def test_an_inbox_record_with_a_non_integer_inbox_id_gets_an_error() -> None:
    item = parse({"inbox": "x1", "message_id": "m5", "site": "s1", "body": "{}"}, MODEL, 10_000)
    assert item.error == "invalid inbox id 'x1'" and item.message_id == "m5"


@pytest.mark.parametrize("source", [[], {"pos": 2**62 * 4}, {"row": 2**40}, {"row": -2}, {"pos": "4"},
                                    {"server_id": -1}, {"ts_ms": 10**17}, {"pos": True}, {"file": ["a"]}])
def test_check_refuses_a_source_the_receiver_cannot_store(source: object) -> None:
    assert (wire.check(_msg(source=source), {"person"}) or "").startswith("source")


def test_check_accepts_real_sources_and_none() -> None:
    for source in (None, {}, {"server_id": 11, "file": "mysql-bin.000002", "pos": 4, "row": -1, "snapshot": True,
                              "ts_ms": 1_733_000_000_000, "gtid": None}):
        assert wire.check(_msg(source=source), {"person"}) is None


def test_a_datetime_without_a_utc_equivalent_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        wire.local_datetime("0001-01-01T00:00:00+01:00", dt.UTC)


def test_apply_failure_reasons_do_not_quote_patient_values() -> None:
    import pymysql

    from dbsync_cli.receiver.batch import failure_reason

    duplicate = pymysql.err.IntegrityError(1062, "Duplicate entry 'Maria-Nhantumbo-1990' for key 'person_name_unique'")
    assert failure_reason(duplicate) == "Duplicate entry '…' for key 'person_name_unique'"
    bad = pymysql.err.DataError(1292, "Incorrect datetime value: '2024-13-01 00:00:00' for column 'birthdate' at row 1")
    assert failure_reason(bad) == "Incorrect datetime value: '…' for column 'birthdate' at row 1"
    text = pymysql.err.DataError(1366, "Incorrect string value: '\\xF0\\x9F' for column 'given_name' at row 1")
    assert failure_reason(text) == "Incorrect string value: '…' for column 'given_name' at row 1"


def test_a_batch_logs_one_line_per_kind_of_trouble(caplog) -> None:
    import logging

    from dbsync_cli.receiver.batch import Outcome, log_outcomes

    unregistered = [Outcome(f"site3:e:f:{i}:0", "retry", "person", None, "site 'site3' is not registered (dbsync "
                                                                           "sites add)") for i in range(5000)]
    waiting = [Outcome(f"site1:e:f:{i}:0", "waiting", "obs", None, f"waiting behind an earlier message for "
                       f"obs:{uuidlib.uuid4()}") for i in range(3)]
    with caplog.at_level(logging.INFO, logger="dbsync.apply"):
        log_outcomes([*unregistered, *waiting, Outcome("x", "applied")])
    assert [r.getMessage() for r in caplog.records] == [
        "5000 messages → retry: site 'site3' is not registered (dbsync sites add) (first site3:e:f:0:0)",
        "3 messages → waiting: waiting behind an earlier message for obs:<uuid> (first site1:e:f:0:0)"]


# ---- uuids in one letter case (issue 25, case 3) -------------------------------------------------------------
CIEL = "1065AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def test_canonical_uuid_is_lower_case_and_keeps_every_other_character() -> None:
    assert wire.canonical_uuid(UUID.upper()) == UUID
    assert wire.canonical_uuid(UUID) == UUID
    assert wire.canonical_uuid(CIEL) == CIEL.lower()
    assert wire.canonical_uuid("A4F30A1B-5EB9-11DF-A648-37A07F9C90FB") == "a4f30a1b-5eb9-11df-a648-37a07f9c90fb"


def test_normalise_uuids_lowers_the_message_uuid_and_every_reference() -> None:
    message = _msg(uuid=UUID.upper(), data={"gender": "F", "creator": wire.ref("users", CIEL),
                                            "changed_by": wire.ref("users", None), "voided_by": None,
                                            "photo": wire.b64(b"AB")})
    assert wire.normalise_uuids(message) is None
    assert message["uuid"] == UUID
    assert message["data"] == {"gender": "F", "creator": {"$ref": "users", "uuid": CIEL.lower()},
                               "changed_by": {"$ref": "users", "uuid": None}, "voided_by": None,
                               "photo": {"$b64": "QUI="}}
    again = orjson.loads(orjson.dumps(message))
    assert wire.normalise_uuids(again) is None and again == message  # idempotent


def test_normalise_uuids_names_the_column_of_an_invalid_reference() -> None:
    for bad in ("-x", "a b", "a" * 39, 12, ["x"], UUID[:30] + "\n"):
        message = _msg(data={"creator": {"$ref": "users", "uuid": bad}})
        assert wire.normalise_uuids(message) == f"person.creator: invalid uuid {str(bad)[:40]!r}"
    assert wire.normalise_uuids(_msg(op="d", data=None, uuid=UUID.upper())) is None


def test_parse_gives_every_message_canonical_uuids_and_keeps_how_the_site_spelled_it() -> None:
    body = _msg(uuid=UUID.upper(), data={"gender": {"$ref": "person", "uuid": CIEL}})
    item = parse(body, MODEL, 10_000)
    assert item.error is None and item.message is not None
    assert item.message["uuid"] == UUID and item.sent_uuid == UUID.upper()
    assert item.message["data"]["gender"]["uuid"] == CIEL.lower()
    assert orjson.loads(item.raw)["uuid"] == UUID.upper()  # the stored body (retry queue) stays as sent
    inner = [_msg(id=f"s1:mysql-bin.000001:120:{n}", uuid=u) for n, u in enumerate((UUID.upper(), UUID))]
    from dbsync_cli.receiver.message import expand_raw

    items = expand_raw(wire.dumps(wire.envelope(inner)), "env", None, MODEL, 100_000)
    assert [(i.error, i.message["uuid"] if i.message else None) for i in items] == [(None, UUID), (None, UUID)]
    bad = parse(_msg(data={"gender": {"$ref": "person", "uuid": "no good"}}), MODEL, 10_000)
    assert bad.error == "person.gender: invalid uuid 'no good'" and bad.message is None


# ---- issue 25 case 4: no control character ever reaches a STOMP header ------------------------------------------
def _sendable(**changes: Any) -> dict[str, Any]:
    return {"v": 1, "id": "site1:0:mysql-bin.000001:4:0", "site": "site1", "table": "person", "op": "c",
            "uuid": str(uuidlib.uuid4()), "snapshot": False, "sent": None, "source": {}, "data": {}, **changes}


@pytest.mark.parametrize("bad", ["\x00", "\n", "\r", "\x1f", "\x7f", "\t"])
@pytest.mark.parametrize(("field", "header"), [("site", wire.SITE_HEADER), ("table", wire.TABLE_HEADER),
                                               ("id", wire.ID_HEADER)])
def test_encode_refuses_a_control_character_in_a_header(field: str, header: str, bad: str) -> None:
    """A NUL in a header value truncates the frame at the receiver (Artemis delivers it, no ack header): the
    sender refuses it, naming the header and the value."""
    message = _sendable(**{field: f"x{bad}evil"})
    with pytest.raises(ValueError, match=f"broker header {header}: value 'x") as caught:
        wire.encode(message, anycast=True, compress_over=512)
    assert "\n" not in str(caught.value) and repr(f"x{bad}evil") in str(caught.value)


@pytest.mark.parametrize("field", ["site", "id"])
def test_encode_envelope_refuses_a_control_character_in_a_header(field: str) -> None:
    messages = [_sendable(**{field: "site1\x00evil" if field == "site" else "id\x00evil"})]
    bodies = [wire.dumps(m) for m in messages]
    with pytest.raises(ValueError, match="holds a control character"):
        wire.encode_envelope(messages, bodies, anycast=True, compress_over=512)


def test_a_long_bad_value_is_shown_truncated() -> None:
    with pytest.raises(ValueError) as caught:
        wire.header_value(wire.SITE_HEADER, "s" * 500 + "\x00")
    assert len(str(caught.value)) < 250


def test_plain_header_values_pass_unchanged() -> None:
    body, headers = wire.encode(_sendable(site="site-1 é"), anycast=True, compress_over=512)
    assert headers[wire.SITE_HEADER] == "site-1 é" and headers[wire.TABLE_HEADER] == "person"
    assert orjson.loads(body)["site"] == "site-1 é"
