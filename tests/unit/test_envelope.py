"""Wire version 2: several messages of one site in one broker message (an envelope), and how publish groups them."""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

import orjson

from dbsync_cli import wire
from dbsync_cli.broker import BrokerSettings
from dbsync_cli.receiver.message import expand, expand_raw, parse_raw
from dbsync_cli.sender.publish import Publisher, PublishSettings, _Batch
from tests.unit.test_wire import MODEL, _msg


def _rows(n: int, *, snapshot: bool = False, site: str = "s1") -> list[dict[str, Any]]:
    return [_msg(id=f"{site}:e1:mysql-bin.000001:{120 + i}:0", site=site, snapshot=snapshot,
                 data={"gender": "F"}, source={"file": "mysql-bin.000001", "pos": 120 + i, "row": 0})
            for i in range(n)]


def _encoded(rows: list[dict[str, Any]], compress_over: int = 512) -> tuple[bytes, dict[str, str]]:
    return wire.encode_envelope(rows, [wire.dumps(r) for r in rows], anycast=True, compress_over=compress_over)


def test_an_envelope_round_trips_through_the_broker_encoding() -> None:
    rows = _rows(30)
    body, headers = _encoded(rows)
    assert headers[wire.ENCODING_HEADER] == wire.DEFLATE and headers[wire.ROWS_HEADER] == "30"
    assert headers[wire.SNAPSHOT_HEADER] == "0" and headers[wire.SITE_HEADER] == "s1"
    assert headers[wire.ID_HEADER] == wire.envelope(rows)["id"]
    assert "_AMQ_DUPL_ID" not in headers  # no broker duplicate detection (wire.py says why)
    decoded = orjson.loads(wire.decode_body(body, headers, 10_000_000))
    assert decoded == wire.envelope(rows) and decoded["messages"] == rows
    assert len(body) < len(wire.dumps(rows)) / 3  # compressed as a batch
    items = expand_raw(wire.decode_body(body, headers, 10**7), headers[wire.ID_HEADER], "s1", MODEL, 10**7,
                       inbox=7, broker_user="s1")
    assert [i.message_id for i in items] == [r["id"] for r in rows]
    assert all(i.error is None and i.inbox == 7 and i.broker_user == "s1" for i in items)
    assert [orjson.loads(i.raw) for i in items] == rows  # what the retry queue would keep: one v1 message each


def test_the_envelope_id_names_its_rows() -> None:
    rows = _rows(5)
    assert wire.envelope(rows)["id"] == wire.envelope([dict(r) for r in rows])["id"]  # a re-send: same id
    assert wire.envelope(rows)["id"].startswith(rows[0]["id"] + "+5.")
    assert wire.envelope(rows[:4])["id"] != wire.envelope(rows)["id"]  # other boundaries: another id
    other = [*rows[:2], {**rows[2], "id": "s1:e1:other"}, *rows[3:]]
    assert wire.envelope(other)["id"] != wire.envelope(rows)["id"]  # same first row and count, other rows
    assert len(wire.envelope([{**rows[0], "id": "x" * 400}])["id"]) <= wire.MAX_ID


def test_a_bad_envelope_is_one_error_and_a_bad_message_in_it_only_its_own() -> None:
    rows = _rows(3)
    for bad, why in [({"v": 2, "id": "e", "site": "s1", "messages": []}, "'messages' must be a non-empty list"),
                     ({"v": 2, "id": "e", "site": "s1", "messages": {"a": 1}}, "'messages' must be a non-empty"),
                     ({"v": 2, "site": "s1", "messages": rows}, "missing or invalid 'id'"),
                     ({"v": 2, "id": "e", "messages": rows}, "missing or invalid 'site'"),
                     ({"v": 2, "id": "e", "site": "s1", "messages": [rows[0]] * (wire.MAX_ENVELOPE_MESSAGES + 1)},
                      "over the limit")]:
        items = expand_raw(wire.dumps(bad), "env-1", "s1", MODEL, 10**8, inbox=1)
        assert len(items) == 1 and items[0].error is not None and why in items[0].error
        assert items[0].message_id == "env-1"
    mixed = {"v": 2, "id": "e", "site": "s1",
             "messages": [rows[0], "text", {**rows[1], "table": "nope"}, {**rows[2], "site": "s2"}]}
    items = expand_raw(wire.dumps(mixed), "env-2", "s1", MODEL, 10**6, inbox=1)
    assert items[0].error is None and items[0].message_id == rows[0]["id"]
    assert items[1].error == "expected a JSON object, got str" and items[1].message_id == "e#1"
    assert items[2].error == "unknown table 'nope'" and items[2].message_id == rows[1]["id"]
    assert items[3].error == "message for site 's2' in an envelope of site 's1'"
    spoofed = expand_raw(wire.dumps(wire.envelope(rows)), "env-3", "s9", MODEL, 10**6, inbox=2)
    assert all(i.error == "message for site 's1' was sent with dbsync-site 's9'" for i in spoofed)


def test_v1_and_v2_records_expand_alike() -> None:
    rows = _rows(2)
    v1 = expand({"inbox": 1, "message_id": rows[0]["id"], "site": "s1", "body": wire.b64(wire.dumps(rows[0]))},
                MODEL, 10**6)
    v2 = expand({"inbox": 2, "message_id": "e", "site": "s1", "body": wire.b64(wire.dumps(wire.envelope(rows)))},
                MODEL, 10**6)
    assert [i.message for i in v1] == rows[:1] and [i.message for i in v2] == rows
    assert expand(wire.envelope(rows), MODEL, 10**6)[1].message == rows[1]  # a bare envelope (a file) too
    stored = parse_raw(wire.dumps(wire.envelope(rows)), "e", "s1", MODEL, 10**6)
    assert stored.error == "an envelope of 2 messages where one was expected"


def test_delivery_rows_is_bounded() -> None:
    assert wire.delivery_rows({}) == 1 and wire.delivery_rows({wire.ROWS_HEADER: "x"}) == 1
    assert wire.delivery_rows({wire.ROWS_HEADER: "-5"}) == 1
    assert wire.delivery_rows({wire.ROWS_HEADER: "10000000"}) == wire.MAX_ENVELOPE_MESSAGES


class _Recorded(Publisher):
    """Publish's grouping without a broker: what would be sent, batch by batch (the broker path is tested against
    Artemis in tests/service)."""

    def __init__(self, settings: PublishSettings) -> None:
        self.batches: list[_Batch] = []
        self.confirmed: list[dict[str, Any]] = []
        super().__init__(settings, on_confirmed=self.confirmed.append)

    def _send(self, pending: deque[_Batch], batch: _Batch) -> None:
        self.batches.append(batch)
        batch.receipt = None
        pending.append(batch)


def _frames(publisher: _Recorded) -> list[list[dict[str, Any]]]:
    out = []
    for batch in publisher.batches:
        for body, headers in batch.frames:
            out.append(orjson.loads(wire.decode_body(body, headers, 10**8))["messages"])
    return out


def test_publish_groups_rows_into_envelopes_of_one_kind() -> None:
    settings = PublishSettings(broker=BrokerSettings(), rows_per_message=4, batch_messages=10)
    publisher = _Recorded(settings)
    records = [*_rows(6, snapshot=True), *_rows(5), {"op": "h", "source": {"file": "f", "pos": 9}}, *_rows(3)]
    for i, r in enumerate(records):
        r["id"] = r.get("id", "h") + f"/{i}"
    out = list(publisher.run(records))
    assert [m["id"] for m in out] == [r["id"] for r in records if r.get("op") != "h"]  # order kept, each once
    sizes = [len(f) for f in _frames(publisher)]
    kinds = [{m["snapshot"] for m in f} for f in _frames(publisher)]
    assert all(len(k) == 1 for k in kinds)  # never live and snapshot rows in one envelope
    assert sizes == [4, 2, 4, 1, 3]  # 4 per envelope; a new kind, a batch end and a heartbeat close one
    assert [len(b.records) for b in publisher.batches] == [10, 1, 3]
    assert publisher.confirmed[-2] == {"file": "f", "pos": 9}  # the heartbeat's position moves the checkpoint


def test_publish_keeps_an_envelope_under_its_byte_limit_and_v1_sends_one_row_each() -> None:
    rows = [_msg(id=f"s1:{i}", data={"gender": "x" * 300}) for i in range(6)]
    one = len(wire.dumps(rows[0]))
    publisher = _Recorded(PublishSettings(broker=BrokerSettings(), message_bytes=2 * one + 10))
    list(publisher.run(rows))
    assert [len(f) for f in _frames(publisher)] == [2, 2, 2]
    v1 = _Recorded(PublishSettings(broker=BrokerSettings(), wire_version=1))
    list(v1.run(rows))
    frames = v1.batches[0].frames
    assert len(frames) == 6 and all(wire.ROWS_HEADER not in h for _, h in frames)
    assert [orjson.loads(zlib.decompress(b) if h.get(wire.ENCODING_HEADER) else b)["id"] for b, h in frames] == [
        r["id"] for r in rows]
