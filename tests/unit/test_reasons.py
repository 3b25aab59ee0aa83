"""Parked messages' reasons: stored as a code with its arguments beside the English text, said in the reader's
language when shown; a row without a code (parked before state migration 15) shows its stored text."""

from __future__ import annotations

import ast
from pathlib import Path

import orjson

from dbsync_cli import i18n
from dbsync_cli.receiver import reasons


def in_language(lang: str, code: str | None, args: str | None, text: str) -> str:
    token = i18n.use(lang)
    try:
        return reasons.shown(code, args, text)
    finally:
        i18n.reset(token)


def test_a_reason_is_its_english_text_and_carries_its_code_and_arguments() -> None:
    made = reasons.reason("edited_after", central="2030-01-01 00:00:00", incoming="2024-06-01 10:00:00")
    assert made == "row edited centrally at 2030-01-01 00:00:00, after the incoming change (2024-06-01 10:00:00)"
    assert isinstance(made, str) and orjson.dumps({"reason": made}) == orjson.dumps({"reason": str(made)})
    code, args = reasons.columns(made)
    assert code == "edited_after" and orjson.loads(args or "") == {"central": "2030-01-01 00:00:00",
                                                                 "incoming": "2024-06-01 10:00:00"}
    assert reasons.columns("a plain text") == (None, None)
    assert reasons.columns(made[:2000]) == (None, None)  # a slice is plain text: take the columns before cutting


def test_stored_codes_render_in_english_and_portuguese() -> None:
    cases = [
        (reasons.reason("edited_after", central="2030-01-01", incoming="2024-06-01"),
         "linha editada no central em 2030-01-01, depois da alteração recebida (2024-06-01)"),
        (reasons.reason("site_unknown", site="site2", why="is disabled"),
         "o sítio 'site2' está desativado (dbsync sites add)"),
        (reasons.reason("missing_row", table="concept", uuid="c0ffee00-0000-4000-8000-000000000001"),
         "concept c0ffee00-0000-4000-8000-000000000001 não existe no central"),
        (reasons.reason("edited_centrally"), "linha editada no central desde a última sincronização"),
    ]
    for made, portuguese in cases:
        code, args = reasons.columns(made)
        assert in_language("en", code, args, "stored text") == str(made)
        assert in_language("pt", code, args, "stored text") == portuguese


def test_rows_without_a_code_or_with_one_unknown_show_their_stored_text() -> None:
    for code, args in ((None, None), ("", None), ("renamed_since", "{}"), ("edited_after", "{}"),
                       ("edited_after", "not json")):
        assert in_language("pt", code, args, "row edited centrally at 2030") == "row edited centrally at 2030"


def test_every_code_has_a_portuguese_template_with_the_same_placeholders() -> None:
    pt = i18n.gettext_for("pt")
    for code, template in reasons.TEMPLATES.items():
        translated = pt.gettext(template)
        assert translated != template or code == "central", code
        names = sorted(part.split("}")[0].split("!")[0] for part in template.split("{")[1:])
        assert sorted(part.split("}")[0].split("!")[0] for part in translated.split("{")[1:]) == names, code


# ---- the places that park, refuse or skip use codes (read from the source: this checker imports none of it) ----
RECEIVER = Path(__file__).resolve().parents[2] / "dbsync_cli"
#: call name → where its reason is (a positional index, or a keyword)
REASON_AT = {"_park": 2, "park": 2, "park_broken": 5, "MessageError": 0, "MissingReference": 0, "Verdict": "reason",
             "Outcome": 4, "Parsed": "error"}
CHECKERS = ("check", "normalise_uuids", "_source_problem", "envelope_problem")


def _plain_text(node: ast.AST | None) -> bool:
    """A reason written as English text in place: a literal, an f-string, or texts joined."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and bool(node.value)
    if isinstance(node, ast.IfExp):
        return _plain_text(node.body) or _plain_text(node.orelse)
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp) and _plain_text(node.left))


def _plain_reasons(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            where = REASON_AT.get(str(name))
            value = (node.args[where] if isinstance(where, int) and len(node.args) > where else
                     next((k.value for k in node.keywords if k.arg in (where, "reason")), None))
            if where is not None and _plain_text(value):
                found.append(f"{path.name}:{node.lineno} {name}")
        elif isinstance(node, ast.Assign) and any(getattr(t, "attr", None) == "error" for t in node.targets):
            if _plain_text(node.value):
                found.append(f"{path.name}:{node.lineno} .error =")
        elif isinstance(node, ast.FunctionDef) and node.name in CHECKERS:
            found += [f"{path.name}:{ret.lineno} {node.name} returns" for ret in ast.walk(node)
                      if isinstance(ret, ast.Return) and _plain_text(ret.value)]
    return found


def test_every_place_that_parks_refuses_or_skips_a_message_gives_a_reason_code() -> None:
    paths = [*sorted((RECEIVER / "receiver").glob("*.py")), RECEIVER / "wire.py"]
    assert len(paths) > 20
    found = [hit for path in paths for hit in _plain_reasons(path)]
    assert not found, f"reasons stored or shown as plain English text (give them a code in reasons.py): {found}"


def test_the_source_check_finds_a_plain_reason(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('def f(self, cur, item, batch):\n    return self._park(cur, item, f"bad {item}", batch)\n'
                      'def check(message):\n    return "data must be an object"\n')
    assert sorted(_plain_reasons(sample)) == ["sample.py:2 _park", "sample.py:4 check returns"]


def test_a_malformed_body_names_orjsons_error_in_the_readers_language() -> None:
    from dbsync_cli.receiver.message import expand_raw

    for raw, english, portuguese in [
        (b'{"table": "obs",', "unexpected end of data", "fim inesperado dos dados"),
        (b'{"a":1,}', "trailing comma is not allowed", "uma vírgula no fim não é permitida"),
        (b'{"a" 1}', "unexpected character, expected ':' after key",
         "carácter inesperado, esperava-se ':' depois da chave"),
    ]:
        (item,) = expand_raw(raw, "site1:1:1", "site1", None, 4_000_000)  # type: ignore[arg-type]
        code, args = reasons.columns(item.error)
        assert in_language("en", code, args, "stored") == f"malformed JSON: {english}"
        assert in_language("pt", code, args, "stored") == f"JSON mal formado: {portuguese}"


def test_a_database_refusal_is_said_in_the_readers_language_with_the_identifiers_it_names() -> None:
    import pymysql

    from dbsync_cli.receiver.batch import failure_reason

    for error, portuguese in [
        (pymysql.err.DataError(1406, "Data too long for column 'value_text' at row 1"),
         "a aplicação falhou: dados demasiado longos para a coluna 'value_text' na linha 1"),
        (pymysql.err.IntegrityError(1062, "Duplicate entry 'Maria' for key 'name'"),
         "a aplicação falhou: entrada duplicada '…' para a chave 'name'"),
    ]:
        made = reasons.reason("apply_failed", error=failure_reason(error))
        code, args = reasons.columns(made)
        assert "Maria" not in made and in_language("en", code, args, "stored") == str(made)
        assert in_language("pt", code, args, "stored") == portuguese
    unknown = reasons.reason("apply_failed", error="Something new the server says")
    assert in_language("pt", *reasons.columns(unknown), "stored").endswith("Something new the server says")
