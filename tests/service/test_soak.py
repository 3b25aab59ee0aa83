"""A 3-minute soak of the whole product (three sites, central, Artemis, kill -9 faults, a site onboarded mid-run,
the field tools) on services of its own, judged by the independent oracle: every verdict line says ok."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.lane2]

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261206


def test_a_three_minute_soak_keeps_every_invariant(tmp_path: Path) -> None:
    # its own home and ports (MariaDB 37206-37209, Artemis 65513-65516), beside the services of both test lanes and
    # a developer's soak on the default offset 3800
    offset = int(os.environ.get("DBSYNC_SOAK_TEST_PORT_OFFSET", "3900"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    home = tmp_path / "soak"
    try:
        run = subprocess.run([sys.executable, "-m", "devtools.soak", "--minutes", "3", "--seed", str(SEED),
                              "--home", str(home), "--port-offset", str(offset)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False)
    finally:
        from devtools.services import down

        down(home=home)  # the databases the soak keeps after a violation: their files stay in tmp_path
    out = run.stdout
    verdicts = [line for line in out.splitlines() if re.match(r"^invariant \d ", line)]
    assert out.splitlines()[0] == f"seed {SEED}", out[:500]
    assert len(verdicts) == 4, f"exit {run.returncode}\n{out[-4000:]}\n{run.stderr[-3000:]}"
    bad = [line for line in verdicts if ": ok" not in line]
    assert bad == [], "\n".join(bad) + f"\n{out[-3000:]}"
    assert run.returncode == 0, f"{out[-3000:]}\n{run.stderr[-3000:]}"
