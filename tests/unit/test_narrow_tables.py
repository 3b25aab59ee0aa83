"""`dbsync verify`'s table at 80 columns: every header and number whole (no cell wrapped in the middle of a
word), and no line wider than the terminal."""

from __future__ import annotations

import pytest

from dbsync_cli.cli.verify_cmd import _print_tables


def tables() -> dict[str, dict[str, int]]:
    counts = {"site_rows": 123456, "central_rows": 123450, "matched": 123400, "missing": 6, "different": 50,
              "extra": 0, "placeholders": 2, "not_owned": 1, "edited_at_central": 3, "changing": 1}
    return {"patient_program_attribute": counts, "obs": {**counts, "missing": 0}, "empty": {}}


@pytest.mark.parametrize("columns", [80, 200])
def test_the_verify_table_reads_whole_at_80_columns(columns: int, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    _print_tables("verify 20261206-1", tables())
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= columns for line in lines), max(len(line) for line in lines)
    text = " ".join(out.split())
    for word in ("patient_program_attribute", "obs", "123,456", "123,450", "placeholders", "central", "edited",
                 "changing"):
        assert word in text, (word, out)
    assert "empty" not in text  # a table with no rows on either side is not listed
    if columns == 200:
        assert "┃" in out or "│" in out  # the table itself when it fits
