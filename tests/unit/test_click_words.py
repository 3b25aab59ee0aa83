"""typer's own words in Portuguese: the usage line and its usage errors (`No such option`, `Missing argument`, a
value of the wrong type, an unknown command) when the reader asks for Portuguese; English exactly as typer writes
it otherwise. Run as the operator runs it: the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "", "LANGUAGE": "", "LC_MESSAGES": "", "DBSYNC_LANG": "",
       "COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbsync_cli", *argv], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=60)


def test_help_says_usage_in_portuguese_when_asked_and_in_english_otherwise() -> None:
    portuguese = run("--lang", "pt", "sites", "--help")
    assert portuguese.returncode == 0 and "Utilização: dbsync sites" in portuguese.stdout
    assert "Usage:" not in portuguese.stdout
    english = run("sites", "--help")
    assert english.returncode == 0 and "Usage: dbsync sites" in english.stdout and "Utilização" not in english.stdout


def test_usage_errors_are_portuguese_when_asked_and_english_otherwise() -> None:
    cases = [  # argv, English, Portuguese
        (["sites", "--bogus"], "No such option: --bogus", "Não existe a opção: --bogus"),
        (["retry", "show"], "Missing argument 'number'.", "Falta o argumento 'number'."),
        (["retry", "show", "abc"], "Invalid value for 'number': Input should be a valid integer",
         "Valor inválido para 'number': deve ser um número inteiro válido"),
        (["sitez"], "No such command 'sitez'. Did you mean 'sites'?",
         "Não existe o comando 'sitez'. Queria dizer 'sites'?"),
        (["sites", "list", "extra"], "Got unexpected extra argument(s) (extra)",
         "Argumento(s) a mais inesperado(s) (extra)"),
    ]
    for argv, english, portuguese in cases:
        said = run(*argv)
        assert said.returncode == 2 and english in said.stderr and "Usage:" in said.stderr, (argv, said.stderr)
        assert "Error" in said.stderr and "for help." in said.stderr
        for env in ({}, {"LANG": "pt_PT.UTF-8"}):
            said = run(*(["--lang", "pt"] if not env else []), *argv, env=env)
            assert said.returncode == 2 and portuguese in said.stderr, (argv, said.stderr)
            for word in ("Usage:", "Error", "for help.", english.split(":")[0].split(" '")[0]):
                assert word not in said.stderr, (argv, word, said.stderr)
            assert "Utilização:" in said.stderr and "Erro" in said.stderr and "para obter ajuda" in said.stderr
