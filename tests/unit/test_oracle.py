"""The soak's oracle (devtools/oracle) must stay a stranger to the product: no import of dbsync_cli, directly or
through another devtools module that imports it. And its comparison rules, without a database."""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import json
from pathlib import Path

from devtools.oracle.checks import BENIGN_SKIPS, Verdict, journal_entries, receiver_counts, sender_counts
from devtools.oracle.rows import class_table, plain, zone

ROOT = Path(__file__).resolve().parents[2]
ORACLE = ROOT / "devtools" / "oracle"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.add(node.args[0].value)
    return names


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:n])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.exists():
                return candidate
    return None


def _reaches_dbsync_cli(start: Path) -> list[str]:
    """The import chains from `start` (through this repo's modules) that end in dbsync_cli."""
    found: list[str] = []
    seen: set[Path] = set()
    stack: list[tuple[Path, list[str]]] = [(start, [str(start.relative_to(ROOT))])]
    while stack:
        path, chain = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in sorted(_imports(path)):
            if name == "dbsync_cli" or name.startswith("dbsync_cli."):
                found.append(" → ".join([*chain, name]))
            elif name.split(".")[0] in ("devtools", "tests", "scripts"):
                target = _module_file(name)
                if target is not None:
                    stack.append((target, [*chain, name]))
    return found


def test_the_oracle_imports_nothing_of_dbsync_cli() -> None:
    files = sorted(ORACLE.glob("*.py"))
    assert files, "devtools/oracle has no modules"
    chains = [c for f in files for c in _reaches_dbsync_cli(f)]
    assert chains == [], "the oracle must not import dbsync_cli:\n" + "\n".join(chains)


def test_the_import_walk_sees_an_indirect_import(tmp_path: Path) -> None:
    """The walk itself works: devtools.services imports dbsync_cli, so a module importing it is caught."""
    assert _reaches_dbsync_cli(ROOT / "devtools" / "services" / "__init__.py")


def test_datetimes_move_between_zones_and_fixed_offsets() -> None:
    site = dt.datetime(2026, 3, 1, 10, 30).replace(tzinfo=zone("Africa/Kigali"))
    assert site.astimezone(zone("UTC")).replace(tzinfo=None) == dt.datetime(2026, 3, 1, 8, 30)
    west = dt.datetime(2026, 3, 1, 10, 30).replace(tzinfo=zone("-03:00"))
    assert west.astimezone(zone("+02:00")).replace(tzinfo=None) == dt.datetime(2026, 3, 1, 15, 30)


def test_plain_values_are_the_same_for_the_same_stored_value() -> None:
    assert plain(decimal.Decimal("1.50")) == "1.50"
    assert plain(1.25) == "1.25"
    assert plain(dt.date(2026, 1, 2)) == "2026-01-02"
    assert plain(dt.timedelta(hours=-1)) == "-3600s"
    assert plain(b"\x00\xff") == "0x00ff"
    assert plain(None) is None and plain(7) == 7 and plain("x") == "x"


def test_attribute_format_classes_name_their_tables() -> None:
    assert class_table("org.openmrs.ProgramWorkflow") == "program_workflow"
    assert class_table("org.openmrs.Location") == "location"
    assert class_table("org.openmrs.User") == "users"
    assert class_table("org.openmrs.Patient") == "person"
    assert class_table("java.lang.String") is None
    assert class_table("org.openmrs.module.x.Thing") is None


def test_verdict_lines() -> None:
    v = Verdict(1, "rows")
    assert v.line() == "invariant 1 (rows): ok"
    for n in range(7):
        v.add(f"obs u{n}: missing at central")
    line = v.line()
    assert line.startswith("invariant 1 (rows): VIOLATED: 7 — obs u0: missing at central; ")
    assert "u4" in line and "u5" not in line


def test_journal_edits_and_creates(tmp_path: Path) -> None:
    path = tmp_path / "journal.ndjson"
    path.write_text("\n".join(json.dumps(e) for e in [
        {"table": "person_name", "uuid": "ABC", "kind": "edit"},
        {"table": "obs", "uuid": "def", "kind": "void"},
        {"table": "visit", "uuid": "new", "kind": "create"},
    ]) + "\n\n")
    edited, created = journal_entries(path)
    assert edited == {("person_name", "abc"), ("obs", "def"), ("visit", "new")}
    assert created == {("visit", "new")}
    assert journal_entries(None) == (set(), set())


def test_status_counts_leave_out_benign_skips() -> None:
    receiver = {"sites": [{"identifier": "site1", "skipped": {"duplicate": 9, "stale": 4, "central_owned": 2, "gone": 2}},
                          {"identifier": "site2", "skipped": {}}],
                "retry_queue": {"size": 3, "by_site": {"site2": 3}}}
    assert receiver_counts(receiver) == {"site1": 2, "site2": 3}
    assert "duplicate" in BENIGN_SKIPS
    assert sender_counts({"resync_refused": {"count": 2, "last": "x"}, "failover": {"not_sent": 1}}) == 3
    assert sender_counts({"resync_refused": None, "failover": None}) == 0
    assert sender_counts({"dropped": {"row_deleted": 29, "too_large": 1, "parent_gone": 2}}) == 3
