"""The pin set: every dependency pyproject.toml names is pinned exactly in requirements.lock, the one file
scripts/setup.sh (and so the demo, the tests and CI) installs with."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_declared_dependency_is_pinned_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_name(name)] = version
    missing = [d for d in declared if _name(d) not in pins]
    assert not missing, f"not pinned in requirements.lock: {missing}"


def test_setup_installs_with_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c \"$lock\"" in setup and "requirements.lock" in setup
