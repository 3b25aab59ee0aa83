"""Issue 25 (cases 7 and 8), the pure parts: drop records and their counting with the checkpoint; the order of
enrich's output; the sender's metric; an operator action through the applier lock or the running receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbsync_cli import wire
from dbsync_cli.broker import BrokerSettings
from dbsync_cli.cli.status_cmd import _dropped
from dbsync_cli.console.app import _sender_registry
from dbsync_cli.receiver import actions
from dbsync_cli.receiver.apply import AlreadyApplying
from dbsync_cli.sender import drops
from dbsync_cli.sender.checkpoint import CheckpointStore, record_dropped
from dbsync_cli.sender.enrich import _in_order
from dbsync_cli.sender.publish import Publisher, PublishSettings
from dbsync_cli.sql import quote


def _source(pos: int, row: int = 0) -> dict[str, Any]:
    return {"file": "mysql-bin.000001", "pos": pos, "row": row}


def test_a_drop_record_is_a_heartbeat_that_says_what_was_not_sent() -> None:
    event = {"op": "u", "table": "person", "after": {"person_id": 4, "uuid": "u-4"}, "source": _source(10)}
    record = drops.of_event(drops.ROW_DELETED, event, 4)
    assert wire.is_heartbeat(record) and drops.is_dropped(record)  # every consumer that skips heartbeats skips it
    assert record["source"] == _source(10)
    assert record["dropped"] == {"reason": "row_deleted", "table": "person", "op": "u", "key": 4, "uuid": "u-4"}
    assert not drops.is_dropped({"op": "h", "source": _source(11)})
    summary = drops.summary([record, drops.of_event(drops.ROW_DELETED, {**event, "source": _source(12)}, 5)],
                            now=100.0)
    count, last = summary["row_deleted"]
    assert count == 2 and last["key"] == 5 and last["source"]["pos"] == 12 and last["at"] == 100.0


def test_drops_are_counted_with_the_checkpoint_that_moves_past_them(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    big = drops.of_message(drops.TOO_LARGE, {"id": "s:1", "table": "obs", "uuid": "o-1", "source": _source(20)})
    store.count_dropped([big])
    store.close()  # killed before the checkpoint moved: nothing counted (the event is read again, counted then)
    store = CheckpointStore(tmp_path)
    assert store.dropped() == {}
    store.count_dropped([big, big])
    store.save(_source(20))
    store.save(_source(21))  # a later checkpoint does not count them again
    found = store.dropped()
    assert found["too_large"]["count"] == 2 and found["too_large"]["last"]["uuid"] == "o-1"
    store.close()
    record_dropped(tmp_path, [big])  # a re-sync's drop: no checkpoint moves, counted at once
    store = CheckpointStore(tmp_path)
    assert store.dropped()["too_large"]["count"] == 3 and store.load() == _source(21)
    store.close()


def test_enrich_output_keeps_the_events_order_with_drops_in_place() -> None:
    events = [{"op": "c", "table": "person", "after": {"person_id": i}, "source": _source(1, i)} for i in range(4)]
    table = object()
    checked: list[tuple[dict[str, Any], Any]] = [(events[0], table), (events[1], None), (events[2], table),
                                                 (events[3], None)]
    out = list(_in_order(checked, [{"id": "m0"}, {"id": "m2"}],
                         lambda e: drops.of_event(drops.NOT_SYNCED, e)))
    assert [o.get("id") or o["source"]["row"] for o in out] == ["m0", 1, "m2", 3]


def test_publish_keeps_a_message_over_the_limit_and_counts_it(tmp_path: Path) -> None:
    settings = PublishSettings(broker=BrokerSettings(host="127.0.0.1", port=1), max_message_bytes=12_000,
                               reject_dir=tmp_path / "rejected")
    publisher = Publisher(settings, lambda _source: None)
    message = {"id": "site1:e:f:1:0", "table": "obs", "uuid": "o-1", "op": "c", "source": _source(30),
               "data": {"value_text": "x" * 2_000}}
    assert publisher._json(message) is None
    assert [d["dropped"]["reason"] for d in publisher.dropped] == ["too_large"]
    assert (tmp_path / "rejected").is_dir()


def test_sender_metric_is_a_counter_per_reason_and_the_status_line() -> None:
    report = {"state": "WARNING", "dropped": {"too_large": 2, "parent_gone": 0},
              "dropped_last": {"too_large": {"table": "obs", "uuid": "o-1", "at": "2026-01-01 00:00:00Z"}}}
    families = {f.name: f for f in text_string_to_metric_families(_text(report))}
    family = families["dbsync_sender_dropped"]
    assert family.type == "counter"
    assert {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")} == {
        "too_large": 2.0, "parent_gone": 0.0}
    assert _dropped(report) == "2 too_large (last obs o-1 at 2026-01-01 00:00:00Z)"
    assert _dropped({"dropped": {"too_large": 0}}) == "0" and _dropped({}) == "?"


def _text(report: dict[str, Any]) -> str:
    from prometheus_client import generate_latest

    return generate_latest(_sender_registry(report)).decode()


class _Cursor:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.lastrowid = 7
        self.rowcount = 1

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: Any, args: Any = None) -> None:
        self.conn.executed.append(str(statement))


class _Conn:
    def __init__(self) -> None:
        self.executed: list[str] = []

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def commit(self) -> None:
        return None


class _Applier:
    """The parts of Applier an action uses; `free`: whether the applier lock can be had."""

    def __init__(self, free: bool) -> None:
        self.free = free
        self.conn = _Conn()
        self.s = quote("dbsync")
        self.claims: list[float] = []

    def claim(self, wait: float = 30) -> None:
        self.claims.append(wait)
        if not self.free:
            raise AlreadyApplying("another receiver")


def test_an_action_takes_the_lock_itself_when_no_receiver_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[str] = []
    monkeypatch.setattr(actions, "perform", lambda _a, action, _args: done.append(action) or {"text": "ok"})
    applier = _Applier(free=True)
    assert actions.run(applier, "retry_drop", {"number": 1}, who="ana") == {"text": "ok", "records": []}  # type: ignore[arg-type]
    assert done == ["retry_drop"] and applier.claims == [0]  # without waiting
    assert not any("receiver_request" in s for s in applier.conn.executed)


def test_an_action_the_running_receiver_does_not_take_in_time_is_withdrawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "perform", lambda *_a: pytest.fail("the requester must not act beside the lock"))
    monkeypatch.setattr(actions, "_state", lambda _a, _r: ("pending", {}))
    applier = _Applier(free=False)
    with pytest.raises(actions.ReceiverBusy, match="did not take this action within 0 s"):
        actions.run(applier, "retry_drop", {"number": 1}, who="ana", wait=0)  # type: ignore[arg-type]
    assert any("INSERT INTO" in s for s in applier.conn.executed)
    assert any("state = 'cancelled'" in s for s in applier.conn.executed)


def test_the_receivers_answer_comes_back_to_the_requester(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([("pending", {}), ("running", {}), ("done", {"text": "conflict 3 resolved", "records": []})])
    monkeypatch.setattr(actions, "_state", lambda _a, _r: next(answers))
    applier = _Applier(free=False)
    assert actions.run(applier, "resolve", {"number": 3}, who="ana")["text"] == "conflict 3 resolved"  # type: ignore[arg-type]
    failed = iter([("failed", {"text": "conflict 3 is already resolved"})])
    monkeypatch.setattr(actions, "_state", lambda _a, _r: next(failed))
    with pytest.raises(actions.ActionFailed, match="already resolved"):
        actions.run(_Applier(free=False), "resolve", {"number": 3}, who="ana")  # type: ignore[arg-type]


def test_a_receiver_that_stopped_before_taking_the_request_leaves_it_to_the_requester(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actions, "_state", lambda _a, _r: ("pending", {}))
    monkeypatch.setattr(actions, "perform", lambda _a, action, _args: {"text": f"{action} done here"})
    applier = _Applier(free=False)
    original = applier.claim

    def claim(wait: float = 30) -> None:
        if len(applier.claims) >= 2:
            applier.free = True  # the receiver stopped: its lock is released
        original(wait)

    applier.claim = claim  # type: ignore[method-assign]
    assert actions.run(applier, "retry_drop", {"number": 1}, who="ana")["text"] == "retry_drop done here"  # type: ignore[arg-type]
