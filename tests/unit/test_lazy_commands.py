"""A command loads only its own modules: `dbsync capture` starts without the receiver, enrich, publish or stomp
(issue 29: a stage's start-up CPU), and every command is still there for --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dbsync_cli.cli.app import COMMANDS, command_named

_PROBE = """
import sys
sys.argv = ["dbsync", *sys.argv[1:]]
from dbsync_cli.cli.app import main
try:
    main()
except SystemExit:
    pass
print(" ".join(sorted(m for m in sys.modules if m.startswith(("dbsync_cli", "stomp", "rich.progress")))))
"""


def _loaded(*argv: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=60,
                         check=False)
    return set(run.stdout.split("\n")[-2].split())


@pytest.mark.parametrize(("argv", "named"), [
    (["capture", "--until-idle"], "capture"),
    (["-v", "--lang", "pt", "status", "--json"], "status"),
    (["--lang=pt", "-q", "apply"], "apply"),
    (["--lang", "capture"], None),  # `capture` is --lang's value here; no command is named
    (["--help"], None),
    (["no-such-command"], None),
    (["--", "capture"], None),
])
def test_the_command_is_the_first_word_after_the_main_options(argv: list[str], named: str | None) -> None:
    assert command_named(argv) == named


def test_capture_loads_neither_the_receiver_nor_enrich_nor_publish() -> None:
    loaded = _loaded("capture", "--config", "/nonexistent/dbsync.toml")  # the body runs, up to the config
    assert "dbsync_cli.sender.capture" in loaded
    heavy = {m for m in loaded if m.startswith(("dbsync_cli.receiver", "dbsync_cli.sender.enrich",
                                                 "dbsync_cli.sender.publish", "stomp", "rich.progress"))}
    assert heavy == set(), sorted(heavy)


def test_without_a_command_every_command_is_loaded() -> None:
    loaded = _loaded("--help")
    modules = {f"dbsync_cli.cli.{module}" for module, _attribute in COMMANDS.values()}
    assert modules <= loaded, sorted(modules - loaded)
