import io
import logging

from dbsync_cli import records


def test_bad_lines_are_reported_with_line_number_and_skipped(caplog) -> None:
    data = b'{"a":1}\nnot json\n[1,2]\n\n{"b":"\xff\xfe"}\n{"c":3}\n'
    with caplog.at_level(logging.ERROR):
        out = list(records.read(io.BytesIO(data), "stdin"))
    assert out == [{"a": 1}, {"c": 3}]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("stdin line 2: malformed JSON") for m in messages)
    assert any(m.startswith("stdin line 3: expected a JSON object") for m in messages)
    assert any(m.startswith("stdin line 5: malformed JSON") for m in messages)


def test_oversized_line_is_skipped(caplog) -> None:
    data = b'{"a":"' + b"x" * 100 + b'"}\n{"b":1}\n'
    with caplog.at_level(logging.ERROR):
        out = list(records.read(io.BytesIO(data), "in", max_bytes=50))
    assert out == [{"b": 1}]
    assert "in line 1: record of" in caplog.records[0].getMessage()


def test_write_round_trip() -> None:
    buf = io.BytesIO()
    assert records.write([{"op": "h"}, {"x": 1}], buf) == 2
    assert list(records.read(io.BytesIO(buf.getvalue()))) == [{"op": "h"}, {"x": 1}]
