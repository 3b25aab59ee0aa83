"""`dbsync <command> --help` works for every command and subcommand (the tree is walked, not listed)."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("words", [[], ["sender"], ["conflicts", "list"], ["status"]], ids=" ".join)
def test_flags_and_counters_show_no_value_placeholder(words: list[str]) -> None:
    """`--until-idle <bool>` and `-v <int>` read as if they took a value (`-v 2` is a usage error)."""
    run = subprocess.run([sys.executable, "-m", "dbsync_cli", *words, "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "120"})
    assert run.returncode == 0 and "--help" in run.stdout
    assert "<bool>" not in run.stdout, run.stdout
    if not words:
        (line,) = [line for line in run.stdout.splitlines() if "--verbose" in line]
        assert "<int>" not in line and "default: 0" not in run.stdout, run.stdout


def test_every_flag_of_the_tree_has_an_empty_placeholder() -> None:
    from dbsync_cli.cli.app import command

    stack = [command()]
    flags = 0
    while stack:
        cmd = stack.pop()
        for param in cmd.params:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                assert param.metavar == "", (cmd.name, param.name)
                flags += 1
        stack.extend(getattr(cmd, "commands", {}).values())
    assert flags > 20
