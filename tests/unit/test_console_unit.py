"""The console's pure parts: the users file, the Portuguese catalogue, the OpenMRS Open Web App."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from dbsync_cli.console import i18n
from dbsync_cli.console.owa import OwaError, build
from dbsync_cli.console.users import UsersError, add_user, authenticate, list_users, remove_user
from devtools.catalogue import catalogue, messages, untranslated


def test_the_users_file_holds_argon2_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    add_user(path, "ana", "a long secret", "operator")
    add_user(path, "rui", "another secret", "readonly")
    text = path.read_text()
    assert "a long secret" not in text and "$argon2id$" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert authenticate(path, "ana", "a long secret").role == "operator"  # type: ignore[union-attr]
    assert authenticate(path, "ana", "wrong") is None and authenticate(path, "nobody", "a long secret") is None
    assert [u.name for u in list_users(path)] == ["ana", "rui"]
    assert remove_user(path, "rui") and [u.name for u in list_users(path)] == ["ana"]
    for name, password, role in (("bad name!", "long enough", "readonly"), ("ok", "short", "readonly"),
                                 ("ok", "long enough", "root")):
        with pytest.raises(UsersError):
            add_user(path, name, password, role)


def test_every_console_and_cli_message_has_a_portuguese_translation() -> None:
    """Every message the package marks (Babel's extractor, as a translator's tools see them) has a pt translation
    that keeps its placeholders: a lost `{site}` would hide a value, a new one would crash `.format`."""
    found = messages()
    assert len(found) > 250 and "schema: {error}" in found and "Retry queue" in found
    assert untranslated("pt") == {}
    placeholder = re.compile(r"{(\w*)[^}]*}")
    for message in catalogue("pt"):
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(placeholder.findall(ids[-1]))
        for text in strings:
            assert set(placeholder.findall(text)) == wanted, (message.id, text)
    assert i18n.gettext_for("pt").gettext("Retry queue") == "Fila de repetição"
    assert i18n.gettext_for("en").gettext("Retry queue") == "Retry queue"


def test_the_cli_s_errors_are_in_portuguese_when_asked(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "", "LANGUAGE": "", "DBSYNC_LANG": ""}
    for argv, lang_env, text in (
            (["--lang", "pt"], {}, f"ficheiro de configuração {missing}: não encontrado"),
            ([], {"LANG": "pt_PT.UTF-8"}, f"ficheiro de configuração {missing}: não encontrado"),
            ([], {}, f"config file {missing}: not found")):
        done = subprocess.run([sys.executable, "-m", "dbsync_cli", *argv, "config", "check", "--config", str(missing)],
                              capture_output=True, text=True, env={**env, **lang_env}, timeout=60)
        assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"dbsync: config: {text}"]
    done = subprocess.run([sys.executable, "-m", "dbsync_cli", "--lang", "pt", "console", "owa", "--url", "ftp://x",
                           "--out", str(tmp_path / "owa.zip")], capture_output=True, text=True, env=env, timeout=60)
    assert done.stderr.strip() == "dbsync: url da consola 'ftp://x': esperava-se http(s)://anfitrião[:porta]/"
    for extra, text in (([], "ficheiro de configuração"), (["--json"], "config file")):  # JSON is for programs
        done = subprocess.run([sys.executable, "-m", "dbsync_cli", "--lang", "pt", "status", "--config", str(missing),
                               *extra], capture_output=True, text=True, env={**env, "COLUMNS": "400"}, timeout=60)
        assert done.returncode == 3 and f"{text} {missing}" in done.stdout, done.stdout


def test_a_console_request_speaks_its_users_language_not_the_process_s() -> None:
    """The console's middleware sets the user's language for the request, and the worker threads its actions run in
    see it, so what the receiver answers (the flash after an action) is in the page's language."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    from dbsync_cli.console.app import UserLanguage
    from dbsync_cli.i18n import _

    heard: list[str] = []

    async def endpoint(scope: object, receive: object, send: object) -> None:
        heard.append(await run_in_threadpool(lambda: _("conflict {number} does not exist").format(number=3)))

    for cookie in (b"lang=pt", b"lang=en"):
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"cookie", cookie)], "query_string": b""}
        asyncio.run(UserLanguage(endpoint)(scope, None, None))  # type: ignore[arg-type]
    assert heard == ["o conflito 3 não existe", "conflict 3 does not exist"]

    token = i18n.use("pt")
    try:
        assert _("conflict {number} does not exist").format(number=3) == "o conflito 3 não existe"
    finally:
        i18n.reset(token)
    assert _("conflict {number} does not exist").format(number=3) == "conflict 3 does not exist"


def test_the_language_comes_from_the_choice_then_the_browser_then_lang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANG", "pt_PT.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    assert i18n.choose("en", "pt-BR,pt;q=0.9") == "en"
    assert i18n.choose(None, "pt-BR,pt;q=0.9") == "pt"
    assert i18n.choose(None, "fr-FR") == "pt"
    monkeypatch.setenv("LANG", "C.UTF-8")
    assert i18n.choose(None, None) == "en"


def test_the_open_web_app_zip_has_its_manifest_index_and_config(tmp_path: Path) -> None:
    out = build("https://central.example.org:8800/", tmp_path / "dbsync.zip")
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["index.html", "js/config.js", "manifest.webapp"]
        manifest = orjson.loads(zf.read("manifest.webapp"))
        config = zf.read("js/config.js").decode()
        index = zf.read("index.html").decode()
    assert manifest["name"] == "dbsync" and manifest["launch_path"] == "index.html" and manifest["version"]
    assert manifest["activities"] == {"openmrs": {"href": "*"}} and manifest["developer"]["name"]
    assert config == 'var dbSyncUrl = "https://central.example.org:8800/";\n'
    assert 'src="js/config.js"' in index and "dbSyncUrl" in index
    with pytest.raises(OwaError):
        build("javascript:alert(1)", tmp_path / "bad.zip")


def test_charts_turn_per_minute_samples_into_rates_and_backlog() -> None:
    import datetime as dt

    from dbsync_cli.console import charts

    start = dt.datetime(2026, 12, 1, 10, 0)
    samples = [(start + dt.timedelta(minutes=m), 100 * m, 50 - m, 1) for m in range(0, 15)]
    rows, backlog = charts.series(samples, dt.timedelta(minutes=5))
    assert [t.minute for t, _v in rows] == [0, 5, 10]
    assert [v for _t, v in rows] == [400, 500, 500]  # the first bucket's own span, then bucket to bucket
    assert [v for _t, v in backlog] == [47, 42, 37]
    picture = charts.svg(rows, start, start + dt.timedelta(minutes=15), "rows <applied>", "#000")
    assert picture.startswith("<svg") and 'data-points="3"' in picture and "&lt;applied&gt;" in picture


def test_the_cli_s_tables_are_in_portuguese_when_asked() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "sender.toml"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "DBSYNC_SITE_DB__PASSWORD": "x", "DBSYNC_BROKER__PASSWORD": "x"}
    runs = {lang: subprocess.run([sys.executable, "-m", "dbsync_cli", "--lang", lang, "config", "check", "--offline",
                                  "--config", str(example)], capture_output=True, text=True, env=env, timeout=60)
            for lang in ("pt", "en")}
    assert "verificações" in runs["pt"].stdout and "verificação" in runs["pt"].stdout, runs["pt"].stderr
    assert "checks" in runs["en"].stdout and "verificações" not in runs["en"].stdout
    pt_env = {**env, "LANG": "pt_PT.UTF-8"}
    by_env = subprocess.run([sys.executable, "-m", "dbsync_cli", "config", "check", "--offline", "--config",
                             str(example)], capture_output=True, text=True, env=pt_env, timeout=60)
    assert "verificações" in by_env.stdout
    bad = subprocess.run([sys.executable, "-m", "dbsync_cli", "--lang", "fr", "status"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--lang 'fr'" in bad.stderr


def test_every_marked_message_is_formatted_with_exactly_its_placeholders() -> None:
    """`_("… {site} …").format(...)` with a name missing is a KeyError on an error path, where no other test
    looks; a name too many is a value the sentence lost."""
    import ast
    import string

    package = Path(i18n.__file__).resolve().parents[1]
    checked = 0
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"):
                continue
            marked = node.func.value
            if not (isinstance(marked, ast.Call) and isinstance(marked.func, ast.Name)
                    and marked.func.id in ("_", "ngettext") and marked.args
                    and isinstance(marked.args[0], ast.Constant)):
                continue
            fields = {re.split(r"[.\[!:]", name)[0] for _t, name, _s, _c in string.Formatter().parse(marked.args[0].value)
                      if name}
            assert fields == {k.arg for k in node.keywords}, f"{source.name}:{node.lineno}"
            checked += 1
    assert checked > 100
