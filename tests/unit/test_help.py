"""`dbsync <command> --help` works for every command and subcommand (the tree is walked, not listed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dbsync_cli.cli.app import app
from devtools.manpages import command_paths

PATHS = command_paths()


def test_the_tree_is_walked() -> None:
    flat = {" ".join(p) for p in PATHS}
    assert {"sender", "receiver", "status", "conflicts", "conflicts resolve", "sites add", "config check"} <= flat


@pytest.mark.parametrize("words", PATHS, ids=[" ".join(p) for p in PATHS])
def test_help_exits_0(words: list[str]) -> None:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and words[-1] in result.output


def test_root_help_and_version_in_a_real_process() -> None:
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "status" in run.stdout
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("dbsync ")
