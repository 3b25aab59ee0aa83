"""The man pages in man/ are generated from the CLI (scripts/gen-man): fail when they drift from it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.manpages import command_paths, pages

MAN = Path(__file__).resolve().parents[2] / "man"


def test_man_pages_match_the_cli() -> None:
    wanted = pages()
    present = {p.name: p.read_text() for p in MAN.glob("*.1")}
    missing = sorted(set(wanted) - set(present))
    extra = sorted(set(present) - set(wanted))
    stale = sorted(name for name in set(wanted) & set(present) if wanted[name] != present[name])
    assert not (missing or extra or stale), (
        f"man/ is out of date, run scripts/gen-man (missing {missing}, extra {extra}, changed {stale})")


def test_one_page_per_command() -> None:
    names = set(pages())
    assert "dbsync.1" in names
    for words in command_paths():
        assert f"dbsync-{'-'.join(words)}.1" in names
    assert {"dbsync-status.1", "dbsync-conflicts.1", "dbsync-conflicts-resolve.1", "dbsync-sites-add.1"} <= names


def test_pages_have_the_sections() -> None:
    generated = pages()
    status = generated["dbsync-status.1"]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert f".SH {section}\n" in status
    assert "\\-\\-retry\\-critical" in status and "UNKNOWN" in status
    assert "\n10\n" in generated["dbsync-capture.1"]  # exit code of a purged checkpoint
    resolve = generated["dbsync-conflicts-resolve.1"]
    assert ".SH ARGUMENTS\n" in resolve and "\\-\\-keep\\-central" in resolve
    for name, text in generated.items():
        assert text.startswith(".TH "), name
        assert all(ord(ch) < 128 for ch in text), f"{name}: non-ASCII must be a roff escape"
        assert not any(line.startswith(("'", ".  ")) for line in text.splitlines()), name


def test_every_command_page_has_examples() -> None:
    """Each command (not a group) shows how it is used: the EXAMPLES section, with at least one `dbsync` line."""
    generated = pages()
    lacking = []
    for words in command_paths():
        text = generated[f"dbsync-{'-'.join(words)}.1"]
        if ".SH COMMANDS\n" in text:  # a group: its commands' pages have the examples
            continue
        examples = text.split(".SH EXAMPLES\n", 1)[1].split("\n.SH ", 1)[0] if ".SH EXAMPLES\n" in text else ""
        if "dbsync " not in examples:
            lacking.append(" ".join(words))
    assert not lacking, f"man pages without EXAMPLES: {lacking}"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_render_without_warnings() -> None:
    run = subprocess.run(["groff", "-ww", "-z", "-man", *sorted(str(p) for p in MAN.glob("*.1"))],
                         capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr, run.stderr
