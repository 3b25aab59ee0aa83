"""`--help` in Portuguese: every help text of every command and option has a translation, and `dbsync … --help`
shows it when asked (`--lang pt`, `LANG=pt_PT…`, `DBSYNC_LANG=pt`), English otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import typer.main

from dbsync_cli.cli.app import app
from dbsync_cli.cli.help_text import lang_from_argv, texts
from devtools.catalogue import catalogue

ENV = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "", "LANGUAGE": "", "LC_MESSAGES": "", "DBSYNC_LANG": "",
       "COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def test_every_help_text_of_every_command_and_option_has_a_portuguese_translation() -> None:
    found = texts(typer.main.get_command(app))
    assert len(found) > 100 and "Show this message and exit." in found
    assert any(text.startswith("Health of this sender or receiver") for text in found)  # a docstring
    translated = {m.id: m.string for m in catalogue("pt") if m.id and m.string}
    missing = [text for text in found if text not in translated]
    assert not missing, f"{len(missing)} help texts without Portuguese (scripts/catalogue --add): {missing[:5]}"
    same = [text for text in found if translated[text] == text and len(text) > 12]
    assert not same, f"translations that are the English text: {same[:5]}"


def help_of(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "dbsync_cli", *argv], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_is_portuguese_when_asked_and_english_otherwise() -> None:
    english = help_of("retry", "list", "--help")
    assert "Only entries of this site." in english and "Show this message and exit." in english
    for argv, env in ((["--lang", "pt"], {}), (["--lang=pt"], {}), ([], {"LANG": "pt_PT.UTF-8"}),
                      ([], {"DBSYNC_LANG": "pt"})):
        text = help_of(*argv, "retry", "list", "--help", env=env)
        assert "Só as entradas deste sítio." in text and "Mostra esta mensagem e sai." in text, (argv, env)
        assert "Only entries of this site." not in text and "Opções" in text and "[por omissão: 1000]" in text
    top = help_of("--help", env={"LANG": "pt_PT.UTF-8"})
    assert "Mantém uma base de dados OpenMRS central" in top and "Comandos" in top
    group = help_of("--lang", "pt", "retry", "--help")
    assert "Utilização: dbsync retry [OPÇÕES] COMANDO [ARGUMENTOS]..." in group, group[:300]
    assert "[OPTIONS]" not in group and "COMMAND" not in group
    assert "dbsync retry [OPTIONS] COMMAND [ARGS]..." in help_of("retry", "--help")  # English as typer writes it
    status = help_of("--lang", "pt", "status", "--help")
    assert "Saúde deste emissor ou recetor" in status and "Emissor: AVISO" in status


def test_the_language_is_read_from_argv_before_parsing() -> None:
    assert lang_from_argv(["--lang", "pt", "status", "--help"]) == "pt"
    assert lang_from_argv(["-v", "--lang=pt", "retry"]) == "pt"
    assert lang_from_argv(["apply", "--", "--lang", "pt"]) is None
    assert lang_from_argv(["status", "--help"]) is None
