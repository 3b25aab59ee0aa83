"""Issue 25 case 4, without a broker: a MESSAGE frame cut short at a NUL byte (no ack header) never raises; it
is parked and acknowledged by its message-id, or, with no id to acknowledge, left to the dead-letter queue, and
nothing after it on the connection is trusted."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from dbsync_cli.broker import BrokerSettings
from dbsync_cli.db import DbParams
from dbsync_cli.receiver import consume


def _frame(headers: dict[str, str], body: bytes = b"") -> Any:
    return SimpleNamespace(headers=headers, body=body)


CUT = {"subscription": "dbsync-consume", "message-id": "62,52", "destination": "openmrs.sync",
       "JMSXUserID": "site1", "dbsync-site": "site1"}


def test_the_listener_distrusts_every_frame_after_a_cut_short_one() -> None:
    deliveries = consume._Deliveries()
    deliveries.on_message(_frame({**CUT, "ack": "1"}))
    deliveries.on_message(_frame(CUT))  # the cut one: queued, then nothing more
    deliveries.on_message(_frame({"JMSXUserID": "site2", "dbsync-site": "site2", "ack": "1,1"}))  # written by the sender
    deliveries.on_error(_frame({"message": "forged"}))
    assert deliveries.desynced.is_set() and deliveries.error is None
    assert [f.headers.get("ack") for f in deliveries.take(10, 0, 0.1)] == ["1", None]


def test_the_reason_is_one_line_naming_the_delivery_the_sender_and_the_header() -> None:
    reason = consume.broken_delivery(CUT, "openmrs.sync")
    assert reason == ("broker delivery 62,52 on openmrs.sync from broker user 'site1': headers cut short at a NUL "
                      "byte (last header read: 'dbsync-site'), no ack header, body lost")


def _consumer() -> consume.Consumer:
    settings = consume.ConsumeSettings(broker=BrokerSettings(host="127.0.0.1", port=1, user="u", password="p"),
                                       db=DbParams(host="127.0.0.1", port=1, user="u", password="p", database="d"))
    return consume.Consumer(settings, threading.Event())


def test_a_cut_delivery_is_parked_and_acked_by_its_message_id(monkeypatch: pytest.MonkeyPatch) -> None:
    parked: list[tuple[Any, ...]] = []
    monkeypatch.setattr(consume.inbox, "park_broken", lambda *args: parked.append(args))
    consumer = _consumer()
    monkeypatch.setattr(consumer, "_site_of", lambda db, headers: "site1")
    assert consumer._park_broken(None, [_frame(CUT)]) == ["62,52"]
    (_db, _schema, message_id, site, user, reason), = parked
    assert (message_id, site, user) == ("broker:62,52", "site1", "site1") and "NUL" in reason
    assert consumer.broken == 1


def test_a_cut_delivery_without_a_message_id_is_counted_and_left_to_the_dead_letter_queue(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(consume.inbox, "park_broken", lambda *args: pytest.fail("nothing to acknowledge it by"))
    consumer = _consumer()
    headers = {k: v for k, v in CUT.items() if k != "message-id"}
    assert consumer._park_broken(None, [_frame(headers)]) == []
    assert consumer.broken == 1
    (record,) = caplog.records
    assert "DLQ.openmrs.sync" in record.getMessage() and "\n" not in record.getMessage()
