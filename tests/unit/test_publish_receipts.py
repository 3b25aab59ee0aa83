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


def test_after_a_failure_sent_batches_go_again_a_message_at_a_time_and_the_checkpoint_stays_last() -> None:
    from collections import deque

    from dbsync_cli.broker import BrokerSettings
    from dbsync_cli.sender.publish import Publisher, PublishSettings, _Batch

    publisher = Publisher(PublishSettings(broker=BrokerSettings()), on_confirmed=lambda _s: None)
    frame = (b"{}", {})
    sent = _Batch([frame, frame, frame], [{"id": "a"}, {"id": "b"}], {"pos": 7}, receipt="r-sent")
    confirmed = _Batch([frame, frame], [{"id": "c"}], {"pos": 8}, receipt="r-done")
    unsent = _Batch([frame, frame], [{"id": "d"}], {"pos": 9})  # built while the link was down: never failed
    publisher.receipts_got.add("r-done")
    pending = deque([sent, confirmed, unsent])
    publisher._split(pending)
    assert [len(b.frames) for b in pending] == [1, 1, 1, 2, 2]
    assert [b.source for b in pending] == [None, None, {"pos": 7}, {"pos": 8}, {"pos": 9}]
    assert [len(b.records) for b in pending] == [0, 0, 2, 1, 1]  # rows go with the batch's last message
    assert pending[3] is confirmed and pending[4] is unsent


def test_a_heartbeat_keeps_the_window_full_and_its_checkpoint_moves_after_the_batches_before_it() -> None:
    """Issue 27 item 3: at 1 s round trip, a heartbeat that waited for every receipt left the link idle most of the
    time. Now a heartbeat waits for nothing while the window has room; its checkpoint still moves only after every
    batch before it is confirmed, and never before a later batch's rows are confirmed out of order."""
    from collections import deque
    from typing import Any

    from dbsync_cli.broker import BrokerSettings
    from dbsync_cli.sender.publish import Publisher, PublishSettings, _Batch

    waits: list[str] = []
    sent_after: list[int] = []  # receipts awaited before each batch went out
    checkpoints: list[Any] = []

    class Held(Publisher):
        """Receipts come only when publish waits for one (as if the broker answered exactly then)."""

        def _send(self, pending: deque[_Batch], batch: _Batch) -> None:
            if batch.frames:
                sent_after.append(len(waits))
            batch.receipt = f"r{len(sent_after)}" if batch.frames else None
            pending.append(batch)

        def _wait(self, receipt: str) -> None:
            waits.append(receipt)
            self.receipts_got.add(receipt)

    publisher = Held(PublishSettings(broker=BrokerSettings(), batch_messages=2, rows_per_message=2,
                                     max_unconfirmed_batches=2), on_confirmed=checkpoints.append)
    rows = [{"id": f"s1:{i}", "site": "s1", "table": "obs", "op": "u", "uuid": "u", "data": {},
             "source": {"pos": 10 * i}} for i in range(6)]
    beat = [{"op": "h", "source": {"pos": 15 + 20 * i}} for i in range(3)]  # after rows 1, 3 and 5
    records = [rows[0], rows[1], beat[0], rows[2], rows[3], beat[1], rows[4], rows[5], beat[2]]
    out = [message["id"] for message in publisher.run(records)]
    assert sent_after == [0, 0, 0], "a heartbeat waited for a receipt although the window had room"
    assert out == [f"s1:{i}" for i in range(6)]
    positions = [c["pos"] for c in checkpoints]
    assert positions == [10, 15, 30, 35, 50, 55]  # in the stream's order; the last heartbeat's at the end
    assert len(waits) == 3  # each batch's receipt awaited once: the third batch made the window overflow, the end


def test_while_the_broker_cannot_be_reached_the_sender_tries_again_every_few_seconds(monkeypatch) -> None:
    """A clinic link comes back without a word: after many refused connects the next try is still seconds away, not
    30 s (a backlog over a link down 10 s every 30 s used 71 % of its up time so; scripts/bench-link)."""
    from collections import deque

    import dbsync_cli.retrying as retrying_module
    from dbsync_cli.broker import BrokerSettings
    from dbsync_cli.sender.publish import Publisher, PublishSettings, _Batch

    waits: list[float] = []
    monkeypatch.setattr(retrying_module, "_sleeper", lambda _stop: waits.append)  # no real sleep: the waits asked
    sent: list[bytes] = []
    refusals = iter(range(10))

    class Conn:
        def send(self, destination: str, body: bytes, headers: dict[str, str], content_type: str) -> None:
            sent.append(body)

    def connect(_self: Publisher) -> Conn:
        if next(refusals, None) is not None:
            raise BrokerError("cannot connect to STOMP broker 127.0.0.1:61613: [Errno 111] Connection refused")
        return Conn()

    monkeypatch.setattr(Publisher, "_connect", connect)
    publisher = Publisher(PublishSettings(broker=BrokerSettings()), on_confirmed=lambda _s: None)
    publisher._resend(deque([_Batch([(b"{}", {})], [{"id": "a"}], {"pos": 1})]))
    assert sent == [b"{}"] and len(waits) == 10
    assert max(waits) <= 4.0, waits  # was up to 30 s
    assert min(waits[5:]) >= 2.0, waits  # backed off all the same (half of each wait fixed, half random)


def test_a_heartbeat_after_a_drop_sends_the_unconfirmed_batches_again_though_the_window_has_room(monkeypatch) -> None:
    """At the end of a backlog no batch follows the last ones: when the link drops under them, the next heart-beat
    (every second) must send them again. Found by scripts/bench-link: the last two batches stayed lost, and the
    checkpoint where it was, until the site's next change."""
    from collections import deque

    from dbsync_cli.broker import BrokerSettings
    from dbsync_cli.sender.publish import Publisher, PublishSettings, _Batch

    resent: list[list[str | None]] = []
    publisher = Publisher(PublishSettings(broker=BrokerSettings()), on_confirmed=lambda _s: None)

    def resend(_self: Publisher, pending: deque[_Batch], failures: int = 0) -> None:
        resent.append([batch.receipt for batch in pending])
        publisher.receipts_got.update(batch.receipt for batch in pending if batch.receipt)  # the broker has them now

    monkeypatch.setattr(Publisher, "_resend", resend)
    frame = (b"{}", {})
    pending = deque([_Batch([frame], [{"id": "a"}], {"pos": 1}, receipt="r1"),
                     _Batch([frame], [{"id": "b"}], {"pos": 2}, receipt="r2")])
    assert list(publisher._confirm(pending, keep=2)) == [] and not resent  # the window has room: nothing awaited
    publisher.receipts.on_disconnected()  # the link dropped under both
    assert [m["id"] for m in publisher._confirm(pending, keep=2)] == ["a", "b"]
    assert resent == [["r1", "r2"]]
