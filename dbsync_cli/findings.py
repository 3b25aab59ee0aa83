"""One result of `dbsync config check`: what was checked, its state, and the exit code an error stands for.

Each finding names what was checked, its state (ok, warning, error, skipped) and, for an error, the exit code the
process itself would stop with, so that the check exits like the first run would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dbsync_cli import exitcodes

OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"


@dataclass(frozen=True)
class Finding:
    check: str
    state: str
    message: str
    exit_code: int = exitcodes.OK

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """`check: message`, unless the message names the check already."""
        return self.message if self.message.startswith(self.check) else f"{self.check}: {self.message}"


def exit_code(findings: list[Finding]) -> int:
    """The first error's code (the order of the checks is the order a process meets them), else 0."""
    return next((f.exit_code for f in findings if f.state == ERROR), exitcodes.OK)


