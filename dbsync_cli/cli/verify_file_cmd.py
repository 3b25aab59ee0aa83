"""`dbsync verify --to FILE` / `--from FILE [--repair --to FILE]` at a site and `dbsync import FILE --answer-to FILE`
at central: verify and repair by file (sender/verify_file.py, receiver/verify_answer.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from dbsync_cli import bundle, exitcodes
from dbsync_cli.cli import common
from dbsync_cli.i18n import _
from dbsync_cli.openmrs import SchemaError
from dbsync_cli.verify_report import VerifyReport


def by_file(config: Path | None, to: Path | None, from_: Path | None, *, repair: bool,
            json_out: bool) -> VerifyReport | None:
    """The site's side; returns the report read from an answer (printed already with `json_out`), None for a
    question written."""
    cfg = common.load_config(config, "sender")
    from dbsync_cli.sender import verify_file

    if repair and (from_ is None or to is None):
        common.fail(_("verify by file: --repair needs --from ANSWER and --to BUNDLE"), exitcodes.CONFIG)
    try:
        if from_ is None:
            assert to is not None
            asked = verify_file.request(cfg, to)
            _out(asked, json_out, _("question {run} ({rows:,} rows) written to {file}: at central, dbsync import "
                                    "{name} --answer-to ANSWER; then here, dbsync verify --from ANSWER").format(
                run=asked["run"], rows=sum(asked["tables"].values()), file=to, name=to.name))
            return None
        report = verify_file.answered(cfg, from_, repair_to=to if repair else None)
    except SchemaError as exc:
        common.fail(_("schema: {error}").format(error=exc), exitcodes.SCHEMA)
    except bundle.BundleError as exc:
        common.fail(str(exc), exitcodes.BUNDLE_REFUSED)
    if json_out:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return report


def summary(report: VerifyReport) -> None:
    line = (_("{count} row(s) differ").format(count=report.differences) if report.differences
            else _("no differences"))
    done = report.repaired
    if done:
        line += "; " + _("repair: {rows} row(s) and {deletes} delete(s) written to {file}: at central, dbsync import "
                         "it; then ask again").format(rows=done.get("rows_sent", 0), deletes=done.get("deletes_sent", 0),
                                                      file=done.get("file"))
    if done.get("added_kept"):
        line += "; " + _("{count} row(s) added at central kept (deleting them takes an online dbsync verify "
                         "--repair --delete-added)").format(count=done["added_kept"])
    Console().print(line)


def answer(config: Path | None, question: Path, answer_to: Path, json_out: bool) -> None:
    """Central's side: answer a site's question."""
    cfg = common.load_config(config, "receiver")
    from dbsync_cli.receiver.verify_answer import answer as answer_question

    try:
        result = answer_question(cfg, question, answer_to)
    except bundle.BundleError as exc:
        common.fail(str(exc), exitcodes.BUNDLE_REFUSED)
    differences = sum(t.get(k, 0) for t in result["tables"].values() for k in ("missing", "different", "extra",
                                                                                 "placeholders"))
    _out(result, json_out, _("{file}: answered site {site}'s question {run} ({count} row(s) differ): carry {answer} "
                             "to the site, dbsync verify --from {name}").format(
        file=question, site=result["site"], run=result["run"], count=differences, answer=answer_to,
        name=answer_to.name))


def _out(value: dict[str, Any], json_out: bool, line: str) -> None:
    if json_out:
        sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(line)
