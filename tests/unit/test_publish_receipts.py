"""The publisher's receipt wait ends on silence, not on a clock: a batch on a slow link may take minutes while the
broker keeps sending heart-beats, and sending it again then only makes the link slower (issue 25)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from dbsync_cli.broker import BrokerError
from dbsync_cli.sender.publish import _Receipts


def test_heart_beats_keep_the_wait_going_past_the_silence_limit() -> None:
    receipts = _Receipts("openmrs.sync")
    done = threading.Event()

    def broker() -> None:
        for _ in range(12):  # 1.2 s of heart-beats, then the receipt
            time.sleep(0.1)
            receipts.on_heartbeat()
        receipts.on_receipt(SimpleNamespace(headers={"receipt-id": "r1"}))
        done.set()

    threading.Thread(target=broker, daemon=True).start()
    receipts.wait("r1", silence=0.5)
    assert done.is_set()


def test_a_silent_broker_ends_the_wait_with_a_reason() -> None:
    receipts = _Receipts("openmrs.sync")
    started = time.monotonic()
    with pytest.raises(BrokerError, match="sent nothing"):
        receipts.wait("r1", silence=0.5)
    assert time.monotonic() - started < 2


def test_a_receipt_that_came_on_an_earlier_connection_still_confirms() -> None:
    shared: set[str] = set()
    first = _Receipts("openmrs.sync", received=shared)
    first.on_receipt(SimpleNamespace(headers={"receipt-id": "r1"}))
    first.on_disconnected()
    second = _Receipts("openmrs.sync", received=shared)
    second.wait("r1", silence=0.5)  # returns at once
