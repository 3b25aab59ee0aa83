"""Parked messages' reasons: stored as a code with its arguments beside the English text, said in the reader's
language when shown; a row without a code (parked before state migration 15) shows its stored text."""

from __future__ import annotations

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
