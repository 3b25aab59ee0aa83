"""Issue 26 item 12: systemd restarts only what a restart can fix. The units' RestartPreventExitStatus lists every
exit code of a fault only an operator can fix (exitcodes.OPERATOR_FAULTS) and none a restart may cure; every exit
code is classified one way or the other, so a new code cannot be forgotten."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from dbsync_cli import exitcodes

UNITS = sorted((Path(__file__).resolve().parents[2] / "examples").glob("dbsync-*.service"))


def _codes() -> dict[str, int]:
    return {name: value for name, value in vars(exitcodes).items() if name.isupper() and isinstance(value, int)}


def _service(unit: Path) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(unit.read_text())
    return parser["Service"]


def test_every_exit_code_is_either_an_operator_fault_or_transient() -> None:
    codes = set(_codes().values())
    assert not exitcodes.OPERATOR_FAULTS & exitcodes.TRANSIENT
    assert codes == exitcodes.OPERATOR_FAULTS | exitcodes.TRANSIENT, sorted(codes ^ (exitcodes.OPERATOR_FAULTS
                                                                                      | exitcodes.TRANSIENT))
    assert exitcodes.PRIVILEGES in exitcodes.OPERATOR_FAULTS and exitcodes.ANOTHER_SENDER in exitcodes.OPERATOR_FAULTS


def test_the_units_exist() -> None:
    assert {u.name for u in UNITS} >= {"dbsync-sender.service", "dbsync-receiver.service"}


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_a_unit_does_not_restart_on_an_operator_fault_and_restarts_on_the_rest(unit: Path) -> None:
    service = _service(unit)
    assert service["Restart"] == "on-failure"
    prevented = {int(word) for word in service["RestartPreventExitStatus"].split()}
    missing = exitcodes.OPERATOR_FAULTS - prevented
    assert not missing, f"{unit.name}: systemd would restart exit code(s) {sorted(missing)} forever"
    cured = prevented & exitcodes.TRANSIENT
    assert not cured, f"{unit.name}: exit code(s) {sorted(cured)} are never restarted, though a restart may cure them"
